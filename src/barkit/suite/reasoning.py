"""Reasoning: short multi-step questions over small structures.

Four kinds: compare ages given in the prompt, sort a few numbers, count items with a property,
and two-hop look-ups that chain facts of the synthetic world (or one fact given in the prompt
and one from the world). Train and test use disjoint templates; the values of the kinds that do
not need the world are hash-split, so no exact value combination appears in both splits.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from barkit.suite._text import draw_distinct, make_item, normalise, split_of, template_id, words
from barkit.suite.base import Category, Item, Split, rng_for
from barkit.suite.world import ATTRIBUTES, WORLD_SEED, Attribute, World, make_world, syllable_name

# (template, "max" or "min", number of people). Placeholders: {a} {b} {c} names, {x} {y} {z} ages.
COMPARE: dict[Split, tuple[tuple[str, str, int], ...]] = {
    "train": (
        ("{a} is {x} years old and {b} is {y} years old. Who is older?", "max", 2),
        ("{a} is {x} and {b} is {y} years old. Who is younger?", "min", 2),
        ("Ages: {a} {x}, {b} {y}, {c} {z}. Who is the oldest?", "max", 3),
        ("Ages: {a} {x}, {b} {y}, {c} {z}. Who is the youngest?", "min", 3),
    ),
    "test": (
        ("{a} is {x} years old. {b} is {y} years old. Which of them is older?", "max", 2),
        ("{a} has lived {x} years and {b} has lived {y} years. Who is the younger one?", "min", 2),
        ("{a} is {x}, {b} is {y} and {c} is {z} years old. Which person is oldest?", "max", 3),
        ("{a} is {x}, {b} is {y} and {c} is {z} years old. Which person is youngest?", "min", 3),
    ),
}
# (template, ascending?). {nums} is a comma-separated list.
SORT: dict[Split, tuple[tuple[str, bool], ...]] = {
    "train": (
        ("Sort from smallest to largest: {nums}", True),
        ("Put these numbers in increasing order: {nums}", True),
        ("Sort from largest to smallest: {nums}", False),
        ("Put these numbers in decreasing order: {nums}", False),
    ),
    "test": (
        ("List these numbers from low to high: {nums}", True),
        ("List these numbers from high to low: {nums}", False),
        ("Order these from the least to the most: {nums}", True),
    ),
}
# (template, what is counted). {items} a comma-separated list, {w} the word counted.
COUNT: dict[Split, tuple[tuple[str, str], ...]] = {
    "train": (
        ("In the list {items}, how many times does {w} appear?", "word"),
        ("Count how many times {w} appears: {items}", "word"),
        ("How many even numbers are in this list: {items}?", "even"),
        ("How many numbers in {items} are even?", "even"),
    ),
    "test": (
        ("{items}. How often is {w} in this list?", "word"),
        ("Here is a list: {items}. How many times is {w} in it?", "word"),
        ("Count the even numbers: {items}", "even"),
    ),
}
# (template, attribute of the friend {q} of {p}); "region" means the region of {p}'s home town.
HOPS: dict[Split, tuple[tuple[str, str], ...]] = {
    "train": (
        ("In which region is the home town of {p}?", "region"),
        ("What region does {p} live in?", "region"),
        ("{p}'s friend is {q}. What job does {p}'s friend have?", "job"),
        ("{p} is friends with {q}. What is the favourite colour of {p}'s friend?", "colour"),
        ("The best friend of {p} is {q}. Which pet does that friend own?", "pet"),
        ("{p}'s friend is {q}. Where does the friend of {p} live?", "town"),
    ),
    "test": (
        ("{p}'s home town lies in which region?", "region"),
        ("{q} is a friend of {p}. What does {p}'s friend do for work?", "job"),
        ("{p} and {q} are friends. Which colour does the friend of {p} like best?", "colour"),
        ("{q} is {p}'s friend. What animal does {p}'s friend keep?", "pet"),
        ("{p} has a friend called {q}. In which town does that friend live?", "town"),
    ),
}
COUNT_WORDS = ("cat", "dog", "fox", "owl", "bee", "cow")


def _names(rng: random.Random, k: int) -> list[str]:
    names: list[str] = []
    while len(names) < k:
        name = syllable_name(rng, rng.choice((1, 2)) + 1)
        if name not in names:
            names.append(name)
    return names


class Reasoning(Category):
    name = "reasoning"

    def __init__(self, world_seed: int = WORLD_SEED) -> None:
        self.world: World = make_world(world_seed)

    def items(self, split: Split, n: int, seed: int = 0) -> list[Item]:
        kinds: list[Callable[[random.Random, Split], Item]] = [
            self._compare,
            self._sort,
            self._count,
            self._hop,
        ]
        return draw_distinct(
            self.name, split, n, rng_for(self.name, split, seed), lambda rng: rng.choice(kinds)(rng, split)
        )

    def score(self, item: Item, completion: str) -> float:
        if item.meta.get("check") == "sequence":
            return float(words(completion) == words(item.answer))
        return float(normalise(completion) == normalise(item.answer))

    def _item(
        self, split: Split, kind: str, template: str, prompt: str, answer: str, check: str = "exact"
    ) -> Item:
        meta = {"template": template_id(f"reasoning/{kind}", template), "kind": kind, "check": check}
        return make_item(self.name, split, prompt, answer, meta)

    def _compare(self, rng: random.Random, split: Split) -> Item:
        template, want, k = rng.choice(COMPARE[split])
        while True:
            names, ages = _names(rng, k), rng.sample(range(8, 90), k)
            if split_of(f"compare|{names}|{ages}") == split:
                break
        best = max(ages) if want == "max" else min(ages)
        fields = dict(zip("abc", names, strict=False)) | dict(zip("xyz", map(str, ages), strict=False))
        return self._item(split, "compare", template, template.format(**fields), names[ages.index(best)])

    def _sort(self, rng: random.Random, split: Split) -> Item:
        template, ascending = rng.choice(SORT[split])
        while True:
            nums = rng.sample(range(1, 100), rng.randint(3, 4))
            if split_of(f"sort|{nums}") == split:
                break
        answer = ", ".join(map(str, sorted(nums, reverse=not ascending)))
        prompt = template.format(nums=", ".join(map(str, nums)))
        return self._item(split, "sort", template, prompt, answer, check="sequence")

    def _count(self, rng: random.Random, split: Split) -> Item:
        template, what = rng.choice(COUNT[split])
        while True:
            if what == "even":
                values = [str(rng.randint(1, 99)) for _ in range(rng.randint(3, 6))]
                target, answer = "", sum(int(v) % 2 == 0 for v in values)
            else:
                values = [rng.choice(COUNT_WORDS) for _ in range(rng.randint(3, 6))]
                target = rng.choice(COUNT_WORDS)
                answer = values.count(target)
            if split_of(f"count|{values}|{target}") == split:
                break
        prompt = template.format(items=", ".join(values), w=target)
        return self._item(split, "count", template, prompt, str(answer))

    def _hop(self, rng: random.Random, split: Split) -> Item:
        template, attribute = rng.choice(HOPS[split])
        p, q = rng.sample(self.world.people, 2)
        # "region" chains two world facts about p; the others chain the prompt's friendship to q's fact.
        answer = self.world.region_of(p.name) if attribute == "region" else q.fact(_as_attribute(attribute))
        return self._item(split, "hop", template, template.format(p=p.name, q=q.name), answer)


def _as_attribute(name: str) -> Attribute:
    for attribute in ATTRIBUTES:
        if attribute == name:
            return attribute
    raise ValueError(f"not a person attribute: {name!r}")


CATEGORY = Reasoning()
