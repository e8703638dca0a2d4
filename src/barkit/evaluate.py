"""Micro-suite evaluation: greedy completions of test items, scored by each category's verifier.

Per item the verifier's score is in [0, 1]; per category and overall the scores are reported on
a 0-100 scale. ``overall`` is the unweighted mean of the category scores (BAR's macro average),
so a category with more items does not count more.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from barkit.errors import BarkitError
from barkit.suite import CATEGORIES, Item, get_category
from barkit.suite.base import SPLITS, Split

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

DEFAULT_LIMIT = 100
DEFAULT_BATCH_SIZE = 16
# The longest reference answer of the suite's test split is 31 tokens with the tiny tokenizer;
# 64 leaves room for a model that rambles a little before stopping.
DEFAULT_MAX_NEW_TOKENS = 64


@dataclass(frozen=True)
class ItemResult:
    """One scored test item (``score`` in [0, 1])."""

    category: str
    id: str
    prompt: str
    completion: str
    reference: str
    score: float


@dataclass
class EvalResult:
    """Scores per category and overall (0-100) and every item's result."""

    scores: dict[str, float]
    overall: float
    items: list[ItemResult] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "scores": dict(self.scores),
            "overall": self.overall,
            "settings": dict(self.settings),
            "items": [asdict(r) for r in self.items],
        }


def resolve_categories(categories: Sequence[str] | str | None) -> list[str]:
    """Category names from a list or a comma-separated string; all seven when empty."""
    if categories is None:
        return list(CATEGORIES)
    names = [c.strip() for c in categories.split(",")] if isinstance(categories, str) else list(categories)
    names = [c for c in names if c]
    if not names:
        return list(CATEGORIES)
    for name in names:
        get_category(name)  # raises a BarkitError naming the known categories
    if len(set(names)) != len(names):
        raise BarkitError(f"category listed twice in {','.join(names)}")
    return names


def _split_items(name: str, split: Split, limit: int, seed: int) -> list[Item]:
    """``limit`` items of ``split``, or all of them when the category's split is smaller."""
    category = get_category(name)
    capacity = category.capacity(split)
    return category.items(split, limit if capacity is None else min(limit, capacity), seed)


def _score_items(items: Sequence[Item], completions: Sequence[str], progress: bool) -> list[ItemResult]:
    from tqdm.auto import tqdm

    results = []
    for item, completion in tqdm(
        list(zip(items, completions, strict=True)), desc="score", unit="item", disable=not progress
    ):
        score = float(get_category(item.category).score(item, completion))
        results.append(
            ItemResult(
                item.category, item.id, item.prompt, completion, item.answer, min(max(score, 0.0), 1.0)
            )
        )
    return results


def _aggregate(names: Sequence[str], results: Sequence[ItemResult]) -> dict[str, float]:
    scores = {}
    for name in names:
        mine = [r.score for r in results if r.category == name]
        scores[name] = round(100.0 * sum(mine) / len(mine), 2) if mine else 0.0
    return scores


def evaluate(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    categories: Sequence[str] | str | None = None,
    limit: int = DEFAULT_LIMIT,
    *,
    seed: int = 0,
    split: Split = "test",
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    progress: bool = False,
) -> EvalResult:
    """Evaluate ``model`` on ``limit`` test items of each category.

    ``split="train"`` scores training items instead: a fit check, not a result. A model that
    scores well on train items and not on test items memorised; one that fails both underfits.

    All categories' prompts go through one generation pass, so batches are filled across
    categories (prompts are grouped by length inside :func:`barkit.generate.generate`).
    """
    from barkit.generate import generate

    if limit < 1:
        raise BarkitError(f"--limit must be at least 1 (got {limit})")
    names = resolve_categories(categories)
    if split not in SPLITS:
        raise BarkitError(f"split {split!r}: choose train or test")
    items = [item for name in names for item in _split_items(name, split, limit, seed)]
    start = time.perf_counter()
    completions = generate(
        model,
        tokenizer,
        [item.messages()[:1] for item in items],
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        progress=progress,
    )
    results = _score_items(items, completions, progress)
    scores = _aggregate(names, results)
    overall = round(sum(scores.values()) / len(scores), 2)
    settings = {
        "categories": names,
        "limit": limit,
        "items_per_category": {name: sum(r.category == name for r in results) for name in names},
        "seed": seed,
        "split": split,
        "max_new_tokens": max_new_tokens,
        "seconds": round(time.perf_counter() - start, 2),
    }
    return EvalResult(scores, overall, results, settings)


def evaluate_data(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    data: str | os.PathLike[str],
    verifier: str,
    limit: int | None = None,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    progress: bool = False,
) -> EvalResult:
    """Evaluate ``model`` on a user's file of ``prompt`` + ``answer`` rows (JSONL, Parquet or a
    saved dataset), scored by the named verifier; ``limit`` caps the rows read (None = all).

    The score is reported under the file's stem, and as ``overall``.
    """
    from itertools import islice

    from barkit.generate import generate
    from barkit.userdata import iter_rl
    from barkit.verifiers import get_verifier

    scorer = get_verifier(verifier)  # an unknown name fails before anything is generated
    if limit is not None and limit < 1:
        raise BarkitError(f"--limit must be at least 1 (got {limit})")
    rows = list(islice(iter_rl(data), limit))
    if not rows:
        raise BarkitError(f"{data}: no rows to evaluate")
    start = time.perf_counter()
    completions = generate(
        model,
        tokenizer,
        [row.prompt for row in rows],
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        progress=progress,
    )
    name = Path(data).stem
    results = [
        ItemResult(
            name, row.where, row.prompt[-1]["content"], completion, row.answer, scorer.score(completion, row)
        )
        for row, completion in zip(rows, completions, strict=True)
    ]
    score = round(100.0 * sum(r.score for r in results) / len(results), 2)
    settings = {
        "data": str(data),
        "verifier": verifier,
        "items": len(results),
        "max_new_tokens": max_new_tokens,
        "seconds": round(time.perf_counter() - start, 2),
    }
    return EvalResult({name: score}, score, results, settings)


def evaluate_folder(
    model_dir: str | os.PathLike[str],
    out_file: str | os.PathLike[str] | None = None,
    *,
    keep_experts: Sequence[int] | None = None,
    copy_items: int = 0,
    data: str | os.PathLike[str] | None = None,
    verifier: str | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Load a checkpoint folder, evaluate it and (if ``out_file``) write the JSON atomically.

    ``keep_experts`` (MoE only): indices of the experts left switched on, as ``barkit generate
    --experts`` does; the others get no routing weight. ``copy_items`` > 0 adds the copy probe
    (:func:`barkit.copying.copy_probe`, that many held-out spans) as ``copy_probe``. With
    ``data`` and ``verifier`` the user's file is evaluated instead of the micro-suite
    (:func:`evaluate_data`; ``limit`` caps its rows).
    """
    import contextlib

    from barkit.artifacts import atomic_write_text, read_manifest
    from barkit.copying import copy_probe
    from barkit.errors import ArtifactError
    from barkit.experts import restrict_experts
    from barkit.loader import load_model

    model, tokenizer = load_model(model_dir)
    switch = (
        restrict_experts(model, keep_experts) if keep_experts is not None else contextlib.nullcontext(model)
    )
    with switch:
        if data is not None:
            if verifier is None:
                raise BarkitError("evaluating a data file needs a verifier")
            result = evaluate_data(model, tokenizer, data, verifier, **kwargs).to_dict()
        else:
            result = evaluate(model, tokenizer, **kwargs).to_dict()
        if copy_items > 0:
            result["copy_probe"] = copy_probe(model, tokenizer, n=copy_items)
    if keep_experts is not None:
        result["settings"]["experts"] = list(keep_experts)
    try:
        fingerprint = read_manifest(model_dir).get("fingerprint")
    except ArtifactError:  # a plain HF folder without barkit.json is fine to evaluate
        fingerprint = None
    result = {"model": str(model_dir), "model_fingerprint": fingerprint, **result}
    if out_file is not None:
        atomic_write_text(Path(out_file), json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    return result


def _columns(rows: Mapping[str, Mapping[str, float]]) -> list[str]:
    seen = {key for scores in rows.values() for key in scores}
    ordered = [c for c in CATEGORIES if c in seen]
    ordered += sorted(seen - set(ordered) - {"overall"})
    return ordered + (["overall"] if "overall" in seen else [])


def format_table(rows: Mapping[str, Mapping[str, float]]) -> str:
    """Several models' scores side by side, one row per model (``-`` where a score is missing)."""
    if not rows:
        return "(no results)"
    columns = _columns(rows)
    header = ["model", *columns]
    body = [
        [label, *(f"{scores[c]:.1f}" if c in scores else "-" for c in columns)]
        for label, scores in rows.items()
    ]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        return "  ".join([first, *(cell.rjust(w) for cell, w in zip(cells[1:], widths[1:], strict=True))])

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(row) for row in body)])
