"""The built-in micro-suite: seven categories after BAR's evaluation categories.

Each category is registered once, in :data:`_REGISTRY` (its name, the module under
``barkit.suite`` that defines ``CATEGORY``, and whether the base learns it or an expert adds
it); ``GENERAL``, ``DOMAINS`` and ``CATEGORIES`` derive from that table.
"""

from __future__ import annotations

import importlib
from typing import Literal

from barkit.errors import BarkitError
from barkit.suite.base import ANSWER_MARKER, REFUSAL, Category, Item, Split

# Bumped whenever a generator's items change (templates, value ranges, word lists): it is part
# of every pipeline step's key, so a run folder built on older data rebuilds instead of
# silently mixing artifacts trained on two versions of the suite.
# 2: chat shares one word list between splits; math uses two-digit operands.
SUITE_VERSION = 2

# category name -> (module under barkit.suite that defines ``CATEGORY``, its role): "general"
# categories the base model learns, "domain" ones an expert adds (BAR's evaluation split).
_REGISTRY: dict[str, tuple[str, Literal["general", "domain"]]] = {
    "knowledge": ("knowledge", "general"),
    "reasoning": ("reasoning", "general"),
    "chat": ("chat", "general"),
    "math": ("math", "domain"),
    "code": ("code", "domain"),
    "tool_use": ("tools", "domain"),
    "safety": ("safety", "domain"),
}
GENERAL = tuple(name for name, (_, role) in _REGISTRY.items() if role == "general")
DOMAINS = tuple(name for name, (_, role) in _REGISTRY.items() if role == "domain")
CATEGORIES = GENERAL + DOMAINS


def get_category(name: str) -> Category:
    """The category object for ``name`` (BarkitError naming the known ones otherwise)."""
    if name not in _REGISTRY:
        raise BarkitError(f"unknown category {name!r}; known: {', '.join(CATEGORIES)}")
    module = importlib.import_module(f"barkit.suite.{_REGISTRY[name][0]}")
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
