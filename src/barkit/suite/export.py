"""Export micro-suite data as chat-format JSONL that ``datasets.load_dataset("json", ...)`` reads.

Three kinds, one JSON object per line:

* ``sft``: ``{"messages": [user, assistant], "id", "category"}``
* ``rl``: ``{"prompt": [user], "answer", "meta", "id", "category"}``. ``meta`` is stored as a
  JSON-encoded string: its shape differs from item to item (a code test's arguments may be an
  int, a string or a list), which Arrow's one-type-per-column schema cannot hold. Decode it with
  ``json.loads`` before handing it back to a verifier.
* ``text``: ``{"text"}``, raw mid-training documents (train side only; categories without raw
  text are refused with an error naming them).
"""

from __future__ import annotations

import json
import os
from typing import Any, Literal, cast

from barkit.artifacts import atomic_write_text
from barkit.errors import BarkitError
from barkit.suite import get_category
from barkit.suite.base import SPLITS, Item, Split

Kind = Literal["sft", "rl", "text"]
KINDS: tuple[Kind, ...] = ("sft", "rl", "text")


def _sft(item: Item) -> dict[str, Any]:
    return {"messages": item.messages(), "id": item.id, "category": item.category}


def _rl(item: Item) -> dict[str, Any]:
    return {
        "prompt": [{"role": "user", "content": item.prompt}],
        "answer": item.answer,
        "meta": json.dumps(item.meta, sort_keys=True),
        "id": item.id,
        "category": item.category,
    }


def check_choice(value: str, allowed: tuple[str, ...], what: str) -> str:
    """``value`` if it is one of ``allowed``; a BarkitError naming the choices otherwise."""
    if value not in allowed:
        raise BarkitError(f"unknown {what} {value!r}; known: {', '.join(allowed)}")
    return value


def records(category: str, split: str, kind: str, n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` export records of ``kind`` for ``category``/``split``, deterministic in ``seed``."""
    cat = get_category(category)
    split_ = cast(Split, check_choice(split, SPLITS, "split"))
    kind = check_choice(kind, KINDS, "kind")
    if n < 1:
        raise BarkitError(f"--n must be at least 1, got {n}")
    if kind == "text":
        if not cat.has_text:
            raise BarkitError(f"category {category!r} has no raw text for mid-training")
        if split_ != "train":
            raise BarkitError(f"raw text of {category!r} exists for the train split only")
        return [{"text": doc} for doc in cat.text(n, seed)]
    make = _sft if kind == "sft" else _rl
    return [make(item) for item in cat.items(split_, n, seed)]


def export_jsonl(
    category: str, split: str, kind: str, out: str | os.PathLike[str], n: int = 1000, seed: int = 0
) -> int:
    """Write the records as JSONL to ``out`` atomically; returns how many were written."""
    rows = records(category, split, kind, n, seed)
    atomic_write_text(out, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    return len(rows)
