"""Knowledge: questions about the facts of the synthetic world (:mod:`barkit.suite.world`).

Train and test ask about the same facts through disjoint question templates (nine train
phrasings per fact kind, so that a small model learns to key on the attribute word rather than
on one sentence shape: with five, the tiny base answered 100% of train questions and 28% of
test ones); ``text`` describes
the world in yet other sentence forms, so a model that learns the facts from any source can
answer a paraphrase it has never seen. The answer is the attribute value, checked exactly.
"""

from __future__ import annotations

import random

from barkit.suite._text import make_item, normalise, take_shuffled, template_id
from barkit.suite.base import Category, Item, Split, rng_for
from barkit.suite.world import ATTRIBUTES, WORLD_SEED, World, make_world

# {p} is a person, {t} a town. Keys are the fact asked for; "region" is a town's fact.
TEMPLATES: dict[str, dict[Split, tuple[str, ...]]] = {
    "town": {
        "train": (
            "Where does {p} live?",
            "What is the home town of {p}?",
            "In which town does {p} live?",
            "Which town is home to {p}?",
            "Where is the home of {p}?",
            "Tell me where {p} lives.",
            "{p} is from which town?",
            "Which town does {p} call home?",
            "Name the home town of {p}.",
        ),
        "test": ("Which town is {p} from?", "Name the town where {p} lives.", "{p} lives in which town?"),
    },
    "job": {
        "train": (
            "What is the job of {p}?",
            "What does {p} do for work?",
            "What work does {p} do?",
            "Which job does {p} have?",
            "What is {p}'s job?",
            "Name the job of {p}.",
            "{p} has which job?",
            "Tell me what {p} works as.",
            "What is the work of {p}?",
        ),
        "test": ("Tell me the job of {p}.", "{p} works as what?", "What job does {p} do?"),
    },
    "colour": {
        "train": (
            "What is the favourite colour of {p}?",
            "Which colour does {p} like best?",
            "What colour does {p} love?",
            "What is {p}'s favourite colour?",
            "Name the favourite colour of {p}.",
            "Tell me the favourite colour of {p}.",
            "{p} loves which colour?",
            "Which colour is the favourite of {p}?",
            "What colour does {p} like most?",
        ),
        "test": (
            "Which colour is {p}'s favourite?",
            "Tell me the colour {p} likes most.",
            "{p} likes which colour best?",
        ),
    },
    "pet": {
        "train": (
            "What pet does {p} have?",
            "What animal does {p} keep as a pet?",
            "Which pet does {p} own?",
            "What kind of pet does {p} have?",
            "Name the pet of {p}.",
            "Tell me the pet of {p}.",
            "{p} keeps which pet?",
            "Which animal does {p} have?",
            "What is the pet of {p}?",
        ),
        "test": ("What is {p}'s pet?", "Tell me which animal {p} keeps.", "{p} owns which pet?"),
    },
    "region": {
        "train": (
            "In which region is {t}?",
            "What region is {t} in?",
            "Which region contains {t}?",
            "Where is the town of {t}?",
            "Name the region of {t}.",
            "Tell me which region {t} is in.",
            "{t} is in which region?",
            "Which region is {t} part of?",
            "What is the region of {t}?",
        ),
        "test": (
            "{t} lies in which region?",
            "Tell me the region where {t} is.",
            "What is the region of the town {t}?",
        ),
    },
}

# Statement forms for ``text``: none of them is a question template of either split.
STATEMENTS: dict[str, tuple[str, ...]] = {
    "town": ("{p} lives in {v}.", "{p} is from the town of {v}.", "The home of {p} is {v}."),
    "job": ("{p} works as a {v}.", "By trade, {p} is a {v}.", "{p} has a job as a {v}."),
    "colour": ("{p}'s favourite colour is {v}.", "{p} likes the colour {v} most.", "{p} loves {v}."),
    "pet": ("{p} has a pet {v}.", "{p} keeps a {v} as a pet.", "The pet of {p} is a {v}."),
    "region": ("{t} is a town in {v}.", "The town of {t} lies in {v}.", "{t} is in the region {v}."),
}


def world_facts(world: World) -> list[tuple[str, str, str]]:
    """Every fact as (subject, fact kind, value): people's attributes, then towns' regions."""
    facts: list[tuple[str, str, str]] = [
        (p.name, attr, p.fact(attr)) for p in world.people for attr in ATTRIBUTES
    ]
    facts += [(t.name, "region", t.region) for t in world.towns]
    return facts


def _question(template: str, subject: str) -> str:
    return template.format(p=subject, t=subject)


class Knowledge(Category):
    name = "knowledge"
    has_text = True

    def __init__(self, world_seed: int = WORLD_SEED) -> None:
        self.world = make_world(world_seed)

    def pool(self, split: Split) -> list[Item]:
        """Every item of ``split``: each fact asked with each of the split's templates."""
        items = []
        for subject, kind, value in world_facts(self.world):
            for template in TEMPLATES[kind][split]:
                meta = {
                    "template": template_id(f"knowledge/{kind}", template),
                    "fact": kind,
                    "subject": subject,
                }
                items.append(make_item(self.name, split, _question(template, subject), value, meta))
        return items

    def capacity(self, split: Split) -> int | None:
        return len(self.pool(split))

    def items(self, split: Split, n: int, seed: int = 0) -> list[Item]:
        return take_shuffled(self.name, split, n, rng_for(self.name, split, seed), self.pool(split))

    def score(self, item: Item, completion: str) -> float:
        return float(normalise(completion) == normalise(item.answer))

    def text(self, n: int, seed: int = 0) -> list[str]:
        """``n`` short descriptions, each of one to three people or a town, in varied sentence forms."""
        rng = rng_for(self.name, "text", seed)
        return [self._document(rng) for _ in range(n)]

    def _document(self, rng: random.Random) -> str:
        if rng.random() < 0.15:
            town = rng.choice(self.world.towns)
            return rng.choice(STATEMENTS["region"]).format(t=town.name, v=town.region)
        sentences = []
        for person in rng.sample(self.world.people, rng.randint(1, 3)):
            kinds = list(ATTRIBUTES)
            rng.shuffle(kinds)
            for kind in kinds:
                sentences.append(rng.choice(STATEMENTS[kind]).format(p=person.name, v=person.fact(kind)))
        return " ".join(sentences)


CATEGORY = Knowledge()
