"""The embedded default base: a micro model that barkit's own recipe pre- and post-trains.

BAR starts from an already post-trained dense model whose attention copies from the prompt.
No weights can be downloaded here, so barkit builds one in two phases:

1. **pre-training** (everything trainable) on the GENERAL categories' raw text and
   conversations, mixed with freshly generated copy documents (:mod:`barkit.copying`) whose
   share is annealed down over the phase, so that attention learns to copy early and the
   model ends as a model of its general data; a recipe may add a fixed share of worked
   arithmetic (train-split operand triples only), as an instruct model's pre-training has;
2. **post-training**: SFT (loss on assistant tokens) on knowledge, reasoning and chat
   conversations plus a small share of "repeat exactly" requests (and of worked arithmetic,
   loss on every token, when the recipe asks for it).

The copy probe (and, when the recipe mixes in worked arithmetic, the arithmetic probe on
held-out operand triples) runs every ``probe_every`` steps of both phases; its curve lands in
the manifest. The base is good at the general categories and poor at the expert domains' formats
(math word problems, code, tool use, safety), which the domain experts then add. The tiny base is built once and shipped inside the
package (:mod:`barkit.shipped`); ``barkit base`` rebuilds it.

Both phases checkpoint into a work folder beside the output and resume from it when the same
recipe is started again, so an interrupted build loses at most ``checkpoint_every`` steps.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from barkit.base_recipe import BaseRecipe, Phase, general_data, get_recipe
from barkit.errors import BarkitError
from barkit.suite import GENERAL, SUITE_VERSION

#: the copy-probe curve, written into the base's folder
PLOT = "copy_probe.png"


def _stage_config(phase: Phase, seed: int, checkpoint_every: int) -> Any:
    from barkit.train.config import OptimConfig, StageConfig

    optim = OptimConfig(
        lr=phase.lr,
        warmup_steps=phase.warmup_steps,
        min_lr_ratio=phase.min_lr_ratio,
        weight_decay=phase.weight_decay,
    )
    return StageConfig(
        kind="pretrain",
        steps=phase.steps,
        batch_size=phase.batch_size,
        seq_len=phase.seq_len,
        optim=optim,
        seed=seed,
        checkpoint_every=checkpoint_every,
        log_every=max(1, min(10, phase.steps // 10)),
    )


class _ProbeLog:
    """Runs the copy probe (and the arithmetic probe, when asked) every ``every`` steps and
    appends one line to ``probe.jsonl``."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        folder: Path,
        phase: str,
        every: int,
        offset: int,
        arithmetic: bool,
        calls: bool = False,
    ) -> None:
        self.model, self.tokenizer, self.every = model, tokenizer, every
        self.path, self.phase, self.offset = folder / "probe.jsonl", phase, offset
        self.arithmetic, self.calls = arithmetic, calls

    def __call__(self, step: int, metrics: dict[str, float]) -> None:
        if self.every and step % self.every == 0:
            self.record(step, metrics.get("loss"))

    def record(self, step: int, loss: float | None) -> None:
        from barkit.copying import call_probe, copy_probe

        probe = copy_probe(self.model, self.tokenizer, n=64, seed=1)
        line = {"phase": self.phase, "step": step, "total_step": self.offset + step, "copy": probe["copy"]}
        if self.calls:
            line["call"] = call_probe(self.model, self.tokenizer, n=64, seed=1)["call"]
        if self.arithmetic:
            line["arithmetic"] = arithmetic_probe(self.model, self.tokenizer)
        line["loss"] = loss
        with open(self.path, "a") as f:
            f.write(json.dumps(line) + "\n")


def read_probe_curve(folder: Path) -> list[dict[str, Any]]:
    """The probe lines of a work folder, one per (phase, step), the last written winning."""
    path = folder / "probe.jsonl"
    if not path.is_file():
        return []
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    latest = {(line["phase"], line["step"]): line for line in lines}
    return sorted(latest.values(), key=lambda line: line["total_step"])


def _work_folder(out: Path, fingerprint: str, work: Path | None) -> Path:
    """The resumable work folder; one left by another recipe is discarded."""
    work = work if work is not None else out.parent / f".{out.name}.work"
    stamp = work / "recipe.txt"
    if work.exists() and (not stamp.is_file() or stamp.read_text() != fingerprint):
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    stamp.write_text(fingerprint)
    return work


def _tokenizer(work: Path, recipe: BaseRecipe, vocab_size: int, seed: int) -> Any:
    from transformers import AutoTokenizer

    from barkit.modeling import save_tokenizer
    from barkit.tokenizer import train_tokenizer

    folder = work / "tokenizer"
    if (folder / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(folder)
    texts = None
    if recipe.uses_everyday:
        from barkit.base_recipe import everyday_lines
        from barkit.tokenizer import suite_corpus

        texts = suite_corpus(seed, recipe.tokenizer_sample) + everyday_lines()
    tokenizer = train_tokenizer(
        vocab_size, seed, texts=texts, per_category=recipe.tokenizer_sample, scheme=recipe.tokenizer_scheme
    )
    save_tokenizer(tokenizer, folder)
    return tokenizer


def share_rows(
    tokenizer: Any, documents: Callable[[int], list[str]], share: float, other_rows: int, seq_len: int
) -> Any:
    """Packed rows of ``documents(n)`` (raw text, the loss on every token), ``share`` of the
    pool once added to ``other_rows``."""
    from barkit.train.data import PackedData
    from barkit.train.objectives import text_rows

    if not 0.0 < share < 1.0:
        raise BarkitError(f"a row share must lie strictly between 0 and 1, got {share}")
    want = max(1, round(other_rows * share / (1.0 - share)))
    docs = want * 6  # a first guess (a row of 256 tokens holds about four arithmetic documents)
    rows = text_rows(tokenizer, documents(docs), seq_len)
    while len(rows) < want:
        docs *= 2
        rows = text_rows(tokenizer, documents(docs), seq_len)
    return PackedData(rows.input_ids[:want], rows.loss_mask[:want], rows.attention_mask[:want])


def arithmetic_rows(tokenizer: Any, share: float, other_rows: int, seq_len: int, seed: int) -> Any:
    """Packed rows of worked arithmetic, ``share`` of the pool once added to ``other_rows``.

    The documents are the math category's raw text (sums, differences, times tables), which
    holds only train-split operand triples: no test item's result is ever trained on.
    """
    from barkit.suite import get_category

    math = get_category("math")
    return share_rows(tokenizer, lambda n: math.text(n, seed), share, other_rows, seq_len)


def everyday_rows(tokenizer: Any, share: float, other_rows: int, seq_len: int, seed: int) -> Any:
    """Packed rows of everyday English (:func:`barkit.base_recipe.everyday_lines`), ``share``
    of the pool once added to ``other_rows``."""
    from barkit.base_recipe import everyday_documents

    return share_rows(tokenizer, lambda n: everyday_documents(n, seed), share, other_rows, seq_len)


def arithmetic_probe(model: Any, tokenizer: Any, n: int = 120, seed: int = 0) -> float:
    """Share (in %) of held-out operand triples whose result the model completes exactly.

    ``a op b =`` is given and the result and its full stop are read off the greedy next-token
    choices (teacher-forced, which equals greedy decoding when every choice is right). The
    triples are the math category's *test* split, so this measures the algorithm, not recall.
    """
    import random

    import torch

    from barkit.suite.math import OPS, apply, operands, triple_split

    rng = random.Random(f"arithmetic-probe|{seed}")
    triples: list[tuple[int, str, int]] = []
    while len(triples) < n:
        op = OPS[len(triples) % len(OPS)]
        a, b = operands(rng, op)
        if triple_split(a, op, b) == "test":
            triples.append((a, op, b))
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    was_training = model.training
    model.eval()
    hits = 0
    with torch.no_grad():
        for a, op, b in triples:
            prefix = bos + tokenizer(f"{a} {op} {b} =", add_special_tokens=False)["input_ids"]
            full = (
                bos + tokenizer(f"{a} {op} {b} = {apply(a, op, b)}.", add_special_tokens=False)["input_ids"]
            )
            ids = torch.tensor([full])
            guess = model(input_ids=ids).logits[0, len(prefix) - 1 : len(full) - 1].argmax(-1)
            hits += bool(torch.equal(guess, ids[0, len(prefix) :]))
    model.train(was_training)
    return round(100.0 * hits / n, 2)


def _phase_objectives(
    tokenizer: Any, recipe: BaseRecipe, seed: int, cfgs: tuple[Any, Any]
) -> tuple[Callable[[], Any], Callable[[], Any]]:
    import random

    from barkit.copying import call_conversation, copy_conversation
    from barkit.train.curriculum import CopyCurriculumObjective
    from barkit.train.data import concat_packed
    from barkit.train.objectives import SFTObjective, conversation_rows, mixed_rows

    texts, conversations = general_data(recipe, seed)
    pre, post = cfgs

    def pretrain() -> Any:
        rows = mixed_rows(tokenizer, texts, conversations, pre.seq_len)
        if recipe.arithmetic:
            rows = concat_packed(
                [rows, arithmetic_rows(tokenizer, recipe.arithmetic, len(rows), pre.seq_len, seed)]
            )
        if recipe.everyday:
            rows = concat_packed(
                [rows, everyday_rows(tokenizer, recipe.everyday, len(rows), pre.seq_len, seed)]
            )
        return CopyCurriculumObjective(
            tokenizer,
            rows,
            batch_size=pre.batch_size,
            seed=seed,
            total_batches=pre.steps * pre.grad_accum,
            start_share=recipe.copy_start,
            end_share=recipe.copy_end,
            kinds=recipe.copy_kinds,
        )

    def posttrain() -> Any:
        rng = random.Random(f"base-posttrain|{seed}")
        copies = [copy_conversation(rng) for _ in range(round(len(conversations) * recipe.copy_chat))]
        copies += [call_conversation(rng) for _ in range(round(len(conversations) * recipe.call_chat))]
        if not (recipe.arithmetic_post or recipe.everyday_post):
            return SFTObjective.from_conversations(tokenizer, post, conversations + copies)
        rows = conversation_rows(tokenizer, conversations + copies, post.seq_len)
        parts = [rows]
        if recipe.arithmetic_post:
            parts.append(
                arithmetic_rows(tokenizer, recipe.arithmetic_post, len(rows), post.seq_len, seed + 1)
            )
        if recipe.everyday_post:
            others = sum(len(part) for part in parts)
            parts.append(everyday_rows(tokenizer, recipe.everyday_post, others, post.seq_len, seed + 1))
        return SFTObjective(concat_packed(parts), post.batch_size, post.seed)

    return pretrain, posttrain


def train_base(
    out_dir: str | os.PathLike[str],
    *,
    arch: str = "olmo2",
    preset: str = "tiny",
    steps: int | None = None,
    seed: int = 0,
    progress: bool = True,
    eval_limit: int | None = None,
    work_dir: str | os.PathLike[str] | None = None,
    tokenizer_scheme: str | None = None,
    everyday: tuple[float, float] | None = None,
) -> dict[str, Any]:
    """Build the default base into ``out_dir`` (resuming an interrupted build); returns its manifest.

    ``steps`` overrides the pre-training phase's step count; ``eval_limit`` adds a micro-suite
    evaluation (that many test items per category) and the final copy probe to the manifest.
    ``work_dir`` holds the checkpoints (default: a hidden folder beside ``out_dir``); it is
    removed once the base is written. ``tokenizer_scheme`` overrides the recipe's, and so does
    ``everyday`` (its shares of everyday English in pre- and post-training).
    """
    from dataclasses import replace

    import torch

    from barkit.base_recipe import everyday_lines
    from barkit.modeling import ARCHES, build_dense, save_model
    from barkit.presets import get_preset
    from barkit.train.loop import run_stage

    if arch not in ARCHES:
        raise BarkitError(f"unknown arch {arch!r}; known: {', '.join(ARCHES)}")
    recipe = get_recipe(preset)
    if steps is not None:
        recipe = replace(recipe, pretrain=replace(recipe.pretrain, steps=steps))
    if tokenizer_scheme is not None:
        from barkit.tokenizer import check_scheme

        check_scheme(tokenizer_scheme)
        recipe = replace(recipe, tokenizer_scheme=tokenizer_scheme)
    if everyday is not None:
        recipe = replace(recipe, everyday=everyday[0], everyday_post=everyday[1])
    shape = get_preset(preset)
    fingerprint = recipe.fingerprint(arch, preset, seed)
    out = Path(out_dir)
    started = time.perf_counter()
    work = _work_folder(out, fingerprint, Path(work_dir) if work_dir is not None else None)
    tokenizer = _tokenizer(work, recipe, shape.vocab_size, seed)
    model = build_dense(arch, shape, tokenizer, seed)  # type: ignore[arg-type]
    cfgs = (
        _stage_config(recipe.pretrain, seed, recipe.checkpoint_every),
        _stage_config(recipe.posttrain, seed + 1, recipe.checkpoint_every),
    )
    objectives = _phase_objectives(tokenizer, recipe, seed, cfgs)
    results = []
    offset = 0
    arithmetic = recipe.arithmetic > 0 or recipe.arithmetic_post > 0
    calls = "call" in recipe.copy_kinds or recipe.call_chat > 0
    for name, cfg, objective in zip(("pretrain", "posttrain"), cfgs, objectives, strict=True):
        probe = _ProbeLog(model, tokenizer, work, name, recipe.probe_every, offset, arithmetic, calls)
        if name == "pretrain" and not (work / name).exists():
            probe.record(0, None)  # the curve starts at the untrained model
        result = run_stage(
            model, tokenizer, cfg, objective(), work / name, resume=True, progress=progress, on_step=probe
        )
        results.append(result)
        offset += cfg.steps
    data: dict[str, Any] = {
        "categories": list(GENERAL),
        "copy_curriculum": [recipe.copy_start, recipe.copy_end],
        "arithmetic": [recipe.arithmetic, recipe.arithmetic_post],
    }
    if recipe.uses_everyday:
        data["everyday"] = {"shares": [recipe.everyday, recipe.everyday_post], "lines": len(everyday_lines())}
    manifest = {
        "stage": "base",
        "arch": arch,
        "preset": shape.to_dict(),
        "config": cfgs[0].model_dump(mode="json"),
        "posttrain_config": cfgs[1].model_dump(mode="json"),
        "recipe": recipe.to_dict(),
        "recipe_fingerprint": fingerprint,
        "suite_version": SUITE_VERSION,
        "data": data,
        "tokens": sum(r.tokens for r in results),
        "seconds": round(time.perf_counter() - started, 2),
        "train_seconds": round(sum(r.seconds for r in results), 2),
        "metrics": {
            **results[-1].summary,
            "history": [
                h | {"phase": n}
                for n, r in zip(("pretrain", "posttrain"), results, strict=True)
                for h in r.history
            ],
            "copy_probe": read_probe_curve(work),
        },
        "seed": seed,
        # A base is bit-reproducible only at the same torch thread count.
        "torch_threads": torch.get_num_threads(),
    }
    if eval_limit:
        manifest["eval"] = _evaluate(model, tokenizer, eval_limit)
        if calls:
            from barkit.copying import call_probe

            manifest["eval"]["call_probe"] = call_probe(model, tokenizer, n=200, seed=0)["call"]
        if arithmetic:
            manifest["eval"]["arithmetic_probe"] = arithmetic_probe(model, tokenizer, n=300)
    curve = manifest["metrics"]["copy_probe"]
    written = save_model(model, tokenizer, out, manifest, extra=lambda d: plot_copy_curve(curve, d / PLOT))
    shutil.rmtree(work, ignore_errors=True)
    return written


def plot_copy_curve(curve: list[dict[str, Any]], path: Path) -> None:
    """Copy-probe score against training step, the phase boundary marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    probes = [("copy", "copy", "C0")]
    if any("arithmetic" in p for p in curve):
        probes.append(("arithmetic", "arithmetic", "C1"))
    if any("call" in p for p in curve):
        probes.append(("call", "tool call", "C2"))
    for key, label, colour in probes:
        for phase, style in (("pretrain", "-"), ("posttrain", "--")):
            points = [p for p in curve if p["phase"] == phase and key in p]
            xs, ys = [p["total_step"] for p in points], [p[key] for p in points]
            ax.plot(xs, ys, style, color=colour, marker=".", label=f"{label}, {phase}")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("held-out items exactly right (%)")
    ax.set_ylim(-2, 102)
    ax.legend(fontsize=8)
    ax.set_title("Probes during the base's training")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _evaluate(model: Any, tokenizer: Any, limit: int) -> dict[str, Any]:
    from barkit.copying import copy_probe
    from barkit.evaluate import evaluate

    result = evaluate(model, tokenizer, limit=limit)
    probe = copy_probe(model, tokenizer, n=200, seed=0)
    return {"limit": limit, "scores": result.scores, "overall": result.overall, "copy_probe": probe["copy"]}
