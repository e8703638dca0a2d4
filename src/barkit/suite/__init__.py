"""The built-in micro-suite: seven categories after BAR's evaluation categories."""

from __future__ import annotations

import importlib

from barkit.errors import BarkitError
from barkit.suite.base import (
    ANSWER_MARKER,
    CATEGORIES,
    DOMAINS,
    GENERAL,
    REFUSAL,
    Category,
    Item,
    Split,
)

# Bumped whenever a generator's items change (templates, value ranges, word lists): it is part
# of every pipeline step's key, so a run folder built on older data rebuilds instead of
# silently mixing artifacts trained on two versions of the suite.
# 2: chat shares one word list between splits; math uses two-digit operands.
SUITE_VERSION = 2

# category name -> module under barkit.suite that defines ``CATEGORY``
_MODULES = {
    "knowledge": "knowledge",
    "reasoning": "reasoning",
    "chat": "chat",
    "math": "math",
    "code": "code",
    "tool_use": "tools",
    "safety": "safety",
}


def get_category(name: str) -> Category:
    """The category object for ``name`` (BarkitError naming the known ones otherwise)."""
    if name not in _MODULES:
        raise BarkitError(f"unknown category {name!r}; known: {', '.join(CATEGORIES)}")
    module = importlib.import_module(f"barkit.suite.{_MODULES[name]}")
    category: Category = module.CATEGORY
    return category


def draw_items(name: str, split: Split, n: int, seed: int = 0) -> list[Item]:
    """Up to ``n`` items of a category: all of them when it holds fewer (knowledge, safety)."""
    category = get_category(name)
    cap = category.capacity(split)
    return category.items(split, n if cap is None else min(n, cap), seed)


__all__ = [
    "SUITE_VERSION",
    "draw_items",
    "ANSWER_MARKER",
    "CATEGORIES",
    "DOMAINS",
    "GENERAL",
    "REFUSAL",
    "Category",
    "Item",
    "Split",
    "get_category",
]
