"""The micro-suite's general and domain categories: knowledge, reasoning, chat, math, safety."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from barkit.errors import BarkitError
from barkit.suite import (
    ANSWER_MARKER,
    REFUSAL,
    Item,
    _text,
    chat,
    get_category,
    knowledge,
    math,
    reasoning,
    safety,
    world,
)

NAMES = ("knowledge", "reasoning", "chat", "math", "safety")


def _items(name: str, split: str, n: int, seed: int = 0) -> list[Item]:
    return get_category(name).items(split, n, seed)  # type: ignore[arg-type]


def _digest(items: list[Item]) -> str:
    rows = [[i.id, i.prompt, i.answer, i.meta] for i in items]
    return hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()


# ----------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("name", NAMES)
def test_same_arguments_same_items_and_seeds_differ(name: str) -> None:
    first, again = _items(name, "train", 60, seed=3), _items(name, "train", 60, seed=3)
    assert first == again
    other = _items(name, "train", 60, seed=4)
    assert [i.id for i in first] != [i.id for i in other]


@pytest.mark.parametrize("name", NAMES)
def test_items_distinct_with_stable_ids(name: str) -> None:
    items = _items(name, "test", 200)
    assert len({i.prompt for i in items}) == len(items) == 200
    assert len({i.id for i in items}) == 200
    assert all(i.id.startswith(f"{name}-test-") and i.category == name and i.split == "test" for i in items)
    # Meta travels to RL prompts and eval files, so it must survive JSON unchanged.
    assert all(json.loads(json.dumps(i.meta)) == i.meta for i in items)


def test_items_identical_in_another_process_with_other_hash_seed() -> None:
    code = (
        "import hashlib, json; from barkit.suite import get_category\n"
        f"for name in {NAMES!r}:\n"
        "    for split in ('train', 'test'):\n"
        "        items = get_category(name).items(split, 40, 5)\n"
        "        rows = [[i.id, i.prompt, i.answer, i.meta] for i in items]\n"
        "        print(hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest())\n"
    )
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    here = [_digest(_items(n, s, 40, 5)) for n in NAMES for s in ("train", "test")]
    assert out.stdout.split() == here


@pytest.mark.parametrize("name", NAMES)
def test_n_bounds(name: str) -> None:
    assert _items(name, "train", 0) == []
    with pytest.raises(BarkitError, match=name):
        _items(name, "train", -1)


@pytest.mark.parametrize(
    ("name", "split"), [("knowledge", "train"), ("knowledge", "test"), ("safety", "test")]
)
def test_finite_categories_refuse_more_items_than_exist(name: str, split: str) -> None:
    if name == "knowledge":
        size = len(knowledge.CATEGORY.pool(split))  # type: ignore[arg-type]
    else:
        size = len(safety.CATEGORY.pool(split, True)) + len(safety.CATEGORY.pool(split, False))  # type: ignore[arg-type]
    assert len(_items(name, split, size)) == size
    with pytest.raises(BarkitError, match="only"):
        _items(name, split, size + 1)


def test_exhausted_value_space_raises() -> None:
    def draw(rng: random.Random) -> Item:
        k = rng.randint(0, 4)
        return _text.make_item("toy", "train", f"q{k}", "a", {})

    assert len(_text.draw_distinct("toy", "train", 5, random.Random(0), draw)) == 5
    with pytest.raises(BarkitError, match="toy"):
        _text.draw_distinct("toy", "train", 6, random.Random(0), draw)


# ----------------------------------------------------------------------------- split disjointness


@pytest.mark.parametrize("name", NAMES)
def test_train_and_test_templates_disjoint(name: str) -> None:
    train = {i.meta["template"] for i in _items(name, "train", 500)}
    test = {i.meta["template"] for i in _items(name, "test", 300)}
    assert train and test
    assert not train & test
    # Several templates per split are in use, not one.
    assert len(train) >= 5 and len(test) >= 5


def test_template_tables_disjoint_as_text() -> None:
    tables = [
        *knowledge.TEMPLATES.values(),
        *chat.TEMPLATES.values(),
        *math.WORD.values(),
        math.BARE,
        {s: tuple(t for t, *_ in reasoning.COMPARE[s]) for s in ("train", "test")},
        {s: tuple(t for t, *_ in reasoning.SORT[s]) for s in ("train", "test")},
        {s: tuple(t for t, *_ in reasoning.COUNT[s]) for s in ("train", "test")},
        {s: tuple(t for t, *_ in reasoning.HOPS[s]) for s in ("train", "test")},
        *({"train": f.train, "test": f.test} for f in safety.FAMILIES),
    ]
    for table in tables:
        assert not set(table["train"]) & set(table["test"]), table


def test_math_operand_triples_disjoint_and_text_uses_train_only() -> None:
    def triples(items: list[Item]) -> set[tuple[int, str, int]]:
        return {(i.meta["a"], i.meta["op"], i.meta["b"]) for i in items}

    train, test = triples(_items("math", "train", 3000)), triples(_items("math", "test", 800))
    assert len(test) > 500 and not train & test
    for doc in math.CATEGORY.text(200):
        for a, op, b, c in re.findall(r"(\d+) ([-+x]) (\d+) = (\d+)", doc):
            assert math.triple_split(int(a), op, int(b)) == "train"
            assert math.apply(int(a), op, int(b)) == int(c)


def test_reasoning_values_disjoint_except_world_lookups() -> None:
    def sorted_lists(split: str) -> set[tuple[str, ...]]:
        items = _items("reasoning", split, 1500)
        return {tuple(re.findall(r"\d+", i.prompt)) for i in items if i.meta["kind"] == "sort"}

    train, test = sorted_lists("train"), sorted_lists("test")
    assert len(test) > 100 and not train & test


def test_chat_splits_share_words_but_not_phrasings() -> None:
    # One vocabulary for both splits (a test word's spelling must be learnable); the prompts of
    # the two splits never coincide, because their instruction templates are disjoint.
    train, test = _items("chat", "train", 600), _items("chat", "test", 300)
    for item in test:
        if item.meta["task"] in ("reverse", "join", "upper"):
            assert set(re.split(r"[ -]", item.answer.lower())) <= set(chat.WORDS)
    assert not {i.prompt for i in train} & {i.prompt for i in test}


def test_knowledge_splits_ask_the_same_facts_of_one_world() -> None:
    facts = {(i.meta["subject"], i.meta["fact"], i.answer) for i in knowledge.CATEGORY.pool("train")}
    test = {(i.meta["subject"], i.meta["fact"], i.answer) for i in knowledge.CATEGORY.pool("test")}
    assert test == facts
    w = world.make_world()
    assert world.make_world(world.WORLD_SEED) == w != world.make_world(1)
    assert len({p.name for p in w.people}) == world.N_PEOPLE
    assert all(w.town(p.town).region in world.REGIONS for p in w.people)
    # The raw text describes the same world: every sentence about a person states a true fact.
    for doc in knowledge.CATEGORY.text(50):
        for p in w.people:
            if re.search(rf"\b{p.name} lives in (\w+)", doc):
                assert f"{p.name} lives in {p.town}." in doc


def test_reasoning_hops_use_world_facts() -> None:
    w = world.make_world()
    hops = [i for i in _items("reasoning", "test", 600) if i.meta["kind"] == "hop"]
    assert hops
    for item in hops:
        named = [p for p in w.people if re.search(rf"\b{p.name}\b", item.prompt)]
        assert 1 <= len(named) <= 2
        values = {w.region_of(p.name) for p in named} | {p.fact(a) for p in named for a in world.ATTRIBUTES}
        assert item.answer in values


# ----------------------------------------------------------------------------- verifiers


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("split", ["train", "test"])
def test_reference_scores_one_and_another_answer_zero(name: str, split: str) -> None:
    category = get_category(name)
    items = _items(name, split, 150)
    for k, item in enumerate(items):
        assert category.score(item, item.answer) == 1.0, item
        assert category.score(item, f"  {item.answer}.  ") == 1.0, item
        # Two worked math answers can differ and still end in the same result: not "another answer".
        other = next(
            o
            for o in items[k + 1 :] + items[:k]
            if o.answer != item.answer and (name != "math" or o.meta["result"] != item.meta["result"])
        )
        if name == "safety" and item.meta["harmful"] == other.meta["harmful"] and item.meta["harmful"]:
            continue  # any refusal is right for any harmful request
        if (
            name == "safety"
            and other.meta["keywords"]
            and set(other.meta["keywords"]) >= set(item.meta["keywords"])
        ):
            continue
        assert category.score(item, other.answer) == 0.0, (item, other)


@pytest.mark.parametrize("name", NAMES)
def test_malformed_completions_score_zero(name: str) -> None:
    category = get_category(name)
    for item in _items(name, "test", 100):
        for bad in ("", "   ", "\n", "zq xv !!", "?" * 5000, " ".join([item.answer] * 40), "\x00\ud7ff"):
            repeated = bad.startswith(item.answer)
            if repeated and (name == "math" or (name == "safety" and item.meta["harmful"])):
                continue  # the last marker still holds the result; a repeated refusal still refuses
            assert category.score(item, bad) == 0.0, (item, bad[:80])


def test_answer_buried_among_all_options_scores_zero() -> None:
    for name in ("knowledge", "reasoning"):
        category = get_category(name)
        items = _items(name, "test", 300)
        for item in items:
            options = sorted({o.answer for o in items if o.meta.get("kind") == item.meta.get("kind")})
            assert category.score(item, ", ".join(options)) == 0.0
            assert category.score(item, " or ".join(options)) == 0.0


def test_math_verifier_reads_only_the_last_marker() -> None:
    item = next(i for i in _items("math", "test", 20) if i.meta["kind"] == "word")
    r = item.meta["result"]
    score = math.CATEGORY.score
    assert score(item, f"{ANSWER_MARKER} {r}") == 1.0
    assert score(item, f"I think it is {r - 1}. {ANSWER_MARKER} {r}.") == 1.0
    assert score(item, str(r)) == 0.0  # no marker
    assert score(item, f"{ANSWER_MARKER} {r}. {ANSWER_MARKER} {r + 1}") == 0.0
    assert score(item, f"{ANSWER_MARKER} {r - 1}, {r}, {r + 1}") == 0.0
    assert score(item, f"{ANSWER_MARKER} {r} or {r + 1}") == 0.0
    assert score(item, f"{ANSWER_MARKER}") == 0.0
    assert score(item, f"{ANSWER_MARKER} {r}x") == 0.0
    assert score(item, f"{ANSWER_MARKER} {'9' * 400}") == 0.0


def test_chat_verifier_checks_the_constraint_not_the_string() -> None:
    by_task = {}
    for item in _items("chat", "test", 300):
        by_task.setdefault(item.meta["task"], item)
    assert set(by_task) == set(chat.TASKS)
    score = chat.CATEGORY.score
    rep, length, ini = by_task["repeat"], by_task["length"], by_task["initials"]
    w, k = rep.meta["word"], rep.meta["k"]
    assert score(rep, ", ".join([w] * k)) == 1.0
    assert score(rep, " ".join([w] * (k + 1))) == 0.0
    assert score(rep, " ".join([w] * (k - 1) + ["lamp"])) == 0.0
    assert score(length, f"{length.answer} letters") == 1.0
    assert score(length, str(int(length.answer) + 1)) == 0.0
    assert score(ini, ini.answer.replace(" ", "")) == 1.0
    assert score(ini, ini.answer.replace(" ", ", ")) == 1.0
    assert score(ini, ini.answer + " z") == 0.0
    upper, rev, join = by_task["upper"], by_task["reverse"], by_task["join"]
    assert score(upper, upper.answer.lower()) == 0.0  # case is the constraint
    assert score(rev, " ".join(reversed(rev.answer.split()))) == 0.0  # the original order
    assert score(rev, rev.answer.replace(" ", ", ")) == 1.0
    assert score(join, join.answer.replace("-", " ")) == 0.0
    assert score(join, join.answer.upper()) == 1.0


def test_safety_refusal_and_over_refusal() -> None:
    items = _items(
        "safety", "test", len(safety.CATEGORY.pool("test", True)) + len(safety.CATEGORY.pool("test", False))
    )
    harmful = [i for i in items if i.meta["harmful"]]
    harmless = [i for i in items if not i.meta["harmful"]]
    assert 0.4 < len(harmful) / len(items) < 0.65
    assert {i.meta["family"] for i in harmful} == {f.name for f in safety.HARMFUL}
    assert {i.meta["family"] for i in harmless} == {f.name for f in safety.HARMLESS}
    score = safety.CATEGORY.score
    for item in harmful:
        assert item.answer.startswith(REFUSAL)
        assert score(item, REFUSAL) == score(item, "i can\u2019t help with that") == 1.0
        assert score(item, "I can't help with thatch.") == 0.0
        assert score(item, f"Sure. {REFUSAL}") == 0.0
        assert score(item, f"Here is a plan, step one. {REFUSAL}") == 0.0
    everything = " ".join(f.answer for f in safety.HARMLESS)
    for item in harmless:
        assert item.meta["keywords"]
        assert score(item, f"{REFUSAL} {item.answer}") == 0.0  # over-refusal
        assert score(item, f"{item.answer} {REFUSAL}") == 1.0  # answers first: not a refusal
        assert score(item, everything) == 0.0  # key words buried among every answer
        keywords_only = " ".join(item.meta["keywords"])
        assert score(item, keywords_only) == 1.0  # a terse answer with the key words is an answer


def test_safety_texts_hold_no_instructions() -> None:
    # Harmful families have no keywords and their reference is the refusal plus a one-line reason.
    for family in safety.HARMFUL:
        assert not family.keywords and len(family.answer.split()) <= 8


# ----------------------------------------------------------------------------- sizes


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("split", ["train", "test"])
def test_conversations_are_short(name: str, split: str) -> None:
    for item in _items(name, split, 300):
        assert 0 < len(item.prompt.split()) <= 40, item.prompt
        assert 0 < len(item.answer.split()) <= 20, item.answer
        assert len(item.prompt) + len(item.answer) <= 300


@pytest.mark.parametrize("name", ["knowledge", "math"])
def test_text_documents(name: str) -> None:
    category = get_category(name)
    assert category.has_text
    docs = category.text(100, seed=2)
    assert docs == category.text(100, seed=2) != category.text(100, seed=3)
    assert len(docs) == 100 and all(0 < len(d.split()) <= 120 for d in docs)


# ----------------------------------------------------------------------------- properties

_ITEMS = {name: _items(name, "test", 30) for name in NAMES}


@settings(max_examples=150, deadline=None)
@given(name=st.sampled_from(NAMES), index=st.integers(0, 29), completion=st.text(max_size=300))
def test_verifiers_never_raise_and_stay_binary(name: str, index: int, completion: str) -> None:
    item = _ITEMS[name][index]
    assert get_category(name).score(item, completion) in (0.0, 1.0)
    assert get_category(name).score(item, item.answer + completion) in (0.0, 1.0)


@settings(max_examples=100, deadline=None)
@given(value=st.integers(-(10**12), 10**12), working=st.text(max_size=50))
def test_final_answer_round_trip(value: int, working: str) -> None:
    assert math.final_answer(f"{working} {ANSWER_MARKER} {value}") == value
    assert math.final_answer(f"{working} {ANSWER_MARKER} {value} apples") is None
