"""The embedded default base: a tiny dense model trained on the micro-suite's general data.

BAR starts from an already post-trained dense model. No weights can be downloaded here, so
barkit makes its own: a tokenizer, a dense OLMo-2 or Llama model, and one ``pretrain`` stage
(everything trainable) on the GENERAL categories only: knowledge text plus knowledge, reasoning
and chat conversations. The base should therefore be good at those and poor at math, code,
tool use and safety, which is what the domain experts then add.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

from barkit.errors import BarkitError
from barkit.suite import GENERAL

# Items per general category and knowledge documents, per preset: micro keeps `barkit base`
# under 30 s for tests; tiny gives the demo's base a few epochs over distinct examples.
_DATA_SIZES: dict[str, tuple[int, int]] = {"micro": (120, 60), "tiny": (4000, 2000), "small": (20000, 8000)}
# Suite items per category the tokenizer learns from (1000 stays within every category's
# distinct-item limit; micro uses fewer so the test-sized base trains in seconds).
_TOKENIZER_SAMPLE = {"micro": 200, "tiny": 1000, "small": 1000}
# Knowledge questions are a closed set of facts that must be memorised, unlike reasoning and
# chat items, which are generated fresh; repeating them (5x at tiny) raised the tiny base's
# knowledge score from 4 to 18 at the same token budget (600 steps, lr 1e-2, 8 x 256).
_KNOWLEDGE_REPEATS = {"micro": 1, "tiny": 5, "small": 3}


def _items_up_to(name: str, want: int, seed: int) -> list[Any]:
    """Up to ``want`` train items of a category (fewer when its template space is smaller)."""
    from barkit.suite import get_category

    category = get_category(name)
    n = want
    while n >= 1:
        try:
            return category.items("train", n, seed)
        except BarkitError:
            n //= 2  # the category cannot produce this many distinct items
    raise BarkitError(f"category {name!r} produced no train items")


def general_data(preset: str, seed: int) -> tuple[list[str], list[list[dict[str, str]]]]:
    """(raw texts, conversations) of the general categories for the base model."""
    from barkit.suite import get_category

    n_items, n_texts = _DATA_SIZES[preset]
    texts: list[str] = []
    conversations: list[list[dict[str, str]]] = []
    for name in GENERAL:
        category = get_category(name)
        if category.has_text:
            texts.extend(category.text(n_texts, seed))
        # Whole-list repeats, so that copies of one question land in different packed rows.
        repeats = _KNOWLEDGE_REPEATS[preset] if name == "knowledge" else 1
        conversations.extend([item.messages() for item in _items_up_to(name, n_items, seed)] * repeats)
    return texts, conversations


def train_base(
    out_dir: str | os.PathLike[str],
    *,
    arch: str = "olmo2",
    preset: str = "tiny",
    steps: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Train the default base and write it to ``out_dir``; returns its manifest."""
    from barkit.modeling import ARCHES, build_dense, save_model
    from barkit.presets import get_preset
    from barkit.tokenizer import train_tokenizer
    from barkit.train.config import default_stage
    from barkit.train.loop import run_stage
    from barkit.train.objectives import PackedObjective, mixed_rows

    if arch not in ARCHES:
        raise BarkitError(f"unknown arch {arch!r}; known: {', '.join(ARCHES)}")
    shape = get_preset(preset)
    if preset not in _DATA_SIZES:
        raise BarkitError(f"no base data sizes for preset {preset!r}")
    cfg = default_stage("pretrain", preset, steps=steps, seed=seed)
    started = time.perf_counter()
    tokenizer = train_tokenizer(shape.vocab_size, seed, per_category=_TOKENIZER_SAMPLE[preset])
    model = build_dense(arch, shape, tokenizer, seed)  # type: ignore[arg-type]
    texts, conversations = general_data(preset, seed)
    rows = mixed_rows(tokenizer, texts, conversations, cfg.seq_len)
    objective = PackedObjective(rows, cfg.batch_size, cfg.seed, cfg.aux_loss_coef)
    out = Path(out_dir)
    work = out.parent / f".{out.name}.work"
    result = run_stage(model, tokenizer, cfg, objective, work, progress=progress)
    manifest = {
        "stage": "base",
        "arch": arch,
        "preset": shape.to_dict(),
        "config": cfg.model_dump(mode="json"),
        "data": {"categories": list(GENERAL), "texts": len(texts), "conversations": len(conversations)},
        "tokens": result.tokens,
        "seconds": round(time.perf_counter() - started, 2),
        "train_seconds": round(result.seconds, 2),
        "metrics": {**result.summary, "history": result.history},
        "seed": seed,
    }
    written = save_model(result.model, tokenizer, out, manifest)  # type: ignore[arg-type]
    shutil.rmtree(work, ignore_errors=True)
    return written
