"""Helpers shared by the micro-suite's general categories: normalisation, splits, item sampling.

Everything here is deterministic across processes: hashing goes through SHA-256 (never Python's
salted ``hash``) and sampling only iterates over lists, never over sets.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Callable, Sequence
from typing import Any

from barkit.errors import BarkitError
from barkit.suite.base import Item, Split

# Share of a hash-split value space that belongs to the test split.
TEST_FRACTION = 0.2
# Rejection sampling gives up after this many consecutive draws that add nothing new.
MAX_MISSES = 2000

_SPACES = re.compile(r"\s+")
_INT = re.compile(r"-?\d+")
_SEPARATORS = re.compile(r"[\s,]+")


def squash(text: str) -> str:
    """Strip, collapse inner whitespace and drop trailing periods; case is kept."""
    text = _SPACES.sub(" ", text.strip())
    return text.rstrip(".").rstrip()


def normalise(text: str) -> str:
    """The case-insensitive comparison form: :func:`squash` then case-fold; curly quotes made straight."""
    return squash(text.replace("\u2019", "'")).casefold()


def parse_int(text: str) -> int | None:
    """The integer that ``text`` is (after normalisation), or None when it is anything else."""
    text = normalise(text)
    # Bound the length so that a pathological completion cannot make int() slow.
    if len(text) > 30 or not _INT.fullmatch(text):
        return None
    return int(text)


def words(text: str) -> list[str]:
    """Case-folded words of ``text``, separated by whitespace or commas, trailing period dropped."""
    return [w for w in _SEPARATORS.split(normalise(text)) if w]


def fraction(key: str) -> float:
    """A stable pseudo-random number in [0, 1) for ``key``."""
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_of(key: str) -> Split:
    """The split a value combination belongs to (hash split: about 20% test)."""
    return "test" if fraction(key) < TEST_FRACTION else "train"


def template_id(kind: str, template: str) -> str:
    """An id derived from the template's text, so equal texts in two splits give equal ids."""
    return f"{kind}:{hashlib.sha256(template.encode()).hexdigest()[:10]}"


def item_id(category: str, split: Split, prompt: str) -> str:
    """A stable item id: the category, the split and a digest of the prompt."""
    return f"{category}-{split}-{hashlib.sha256(prompt.encode()).hexdigest()[:12]}"


def check_n(category: str, n: int) -> None:
    if n < 0:
        raise BarkitError(f"{category}: asked for {n} items; n must be >= 0")


def make_item(category: str, split: Split, prompt: str, answer: str, meta: dict[str, Any]) -> Item:
    return Item(category, split, item_id(category, split, prompt), prompt, answer, meta)


def draw_distinct(
    category: str, split: Split, n: int, rng: random.Random, draw: Callable[[random.Random], Item]
) -> list[Item]:
    """``n`` items with distinct prompts from repeated calls of ``draw`` (for large value spaces).

    Raises BarkitError when ``MAX_MISSES`` draws in a row produce only prompts already taken,
    which means the space is (nearly) exhausted.
    """
    check_n(category, n)
    seen: dict[str, Item] = {}
    misses = 0
    while len(seen) < n:
        item = draw(rng)
        if item.prompt in seen:
            misses += 1
            if misses > MAX_MISSES:
                raise BarkitError(
                    f"{category}: only about {len(seen)} distinct {split} items exist; asked for {n}"
                )
            continue
        misses = 0
        seen[item.prompt] = item
    return list(seen.values())


def take_shuffled(
    category: str, split: Split, n: int, rng: random.Random, pool: Sequence[Item]
) -> list[Item]:
    """``n`` items of a finite, enumerated ``pool`` in a seeded random order."""
    check_n(category, n)
    if n > len(pool):
        raise BarkitError(f"{category}: only {len(pool)} distinct {split} items exist; asked for {n}")
    order = list(pool)
    rng.shuffle(order)
    return order[:n]
