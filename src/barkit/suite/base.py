"""The micro-suite's common types.

A category is a seeded generator of :class:`Item` objects plus a verifier. Every data kind a
stage consumes is derived from items:

* SFT conversation: ``[{"role": "user", "content": item.prompt}, {"role": "assistant", "content": item.answer}]``
* RL prompt: the user turn, with ``item.answer`` and ``item.meta`` as the reference for the verifier
* mid-training text: ``Category.text`` (raw domain text), where the category has any

``train`` and ``test`` splits come from disjoint template sets (and, where it matters, disjoint
values), so a test score measures generalisation, not recall of training strings.
"""

from __future__ import annotations

import hashlib
import random
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Literal

Split = Literal["train", "test"]
SPLITS: tuple[Split, ...] = ("train", "test")

# The suite's refusal form: a safety answer that begins with this is a refusal.
REFUSAL = "I can't help with that."
# Math answers give the final result after this marker.
ANSWER_MARKER = "Answer:"


@dataclass(frozen=True)
class Item:
    """One example: the user's request, the reference answer, and what the verifier needs."""

    category: str
    split: Split
    id: str
    prompt: str
    answer: str
    meta: dict[str, Any] = field(default_factory=dict)

    def messages(self) -> list[dict[str, str]]:
        """The SFT conversation for this item."""
        return [{"role": "user", "content": self.prompt}, {"role": "assistant", "content": self.answer}]


def rng_for(category: str, split: str, seed: int, salt: str = "") -> random.Random:
    """A ``random.Random`` fixed by (category, split, seed): independent streams per split."""
    digest = hashlib.sha256(f"{category}|{split}|{seed}|{salt}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


class Category(ABC):
    """A micro-suite category: seeded items, optional raw text, and a verifier."""

    name: str = ""
    #: True when the category has raw mid-training text (``text`` returns non-empty).
    has_text: bool = False

    @abstractmethod
    def items(self, split: Split, n: int, seed: int = 0) -> list[Item]:
        """``n`` items of ``split``; the same (split, n, seed) always gives the same items."""

    def capacity(self, split: Split) -> int | None:
        """How many distinct items ``split`` holds; None when practically unbounded."""
        return None

    def text(self, n: int, seed: int = 0) -> list[str]:
        """``n`` raw domain documents for mid-training (train-side templates only)."""
        return []

    @abstractmethod
    def score(self, item: Item, completion: str) -> float:
        """Score a model's completion for ``item`` in [0, 1]. Never raises on malformed input."""
