"""``barkit base``: train the embedded default dense base model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def main(
    out: Annotated[Path, typer.Option("--out", help="Folder to write the base model to.")],
    arch: Annotated[str, typer.Option(help="Architecture family: olmo2 or llama.")] = "olmo2",
    preset: Annotated[str, typer.Option(help="Model and schedule size: micro, tiny or small.")] = "tiny",
    steps: Annotated[int | None, typer.Option(help="Override the preset's step count.")] = None,
    seed: Annotated[int, typer.Option(help="Seed for tokenizer sample, weights and data order.")] = 0,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    eval_limit: Annotated[
        int,
        typer.Option(
            "--eval-limit", help="Evaluate the result on this many test items per category (0 = skip)."
        ),
    ] = 0,
    work: Annotated[
        Path | None,
        typer.Option("--work", help="Checkpoint folder to resume from (default: hidden, beside --out)."),
    ] = None,
    tokenizer: Annotated[
        str | None,
        typer.Option(
            "--tokenizer",
            help="Pre-tokenisation scheme: metaspace (Llama-2) or glue (one spelling per word, "
            "wherever it stands). Default: the preset's recipe.",
        ),
    ] = None,
    everyday: Annotated[
        str | None,
        typer.Option(
            "--everyday",
            help="Shares of everyday English (the packaged corpus, barkit/corpora) in pre-training "
            "and post-training, e.g. 0.1,0.1 (one number: both). Default: the preset's recipe.",
        ),
    ] = None,
) -> None:
    """Pre- and post-train the default dense base on the micro-suite's general data and a copy
    curriculum. An interrupted build resumes from its checkpoints when started again."""
    from barkit.base import train_base

    manifest = train_base(
        out,
        arch=arch,
        preset=preset,
        steps=steps,
        seed=seed,
        progress=progress,
        eval_limit=eval_limit,
        work_dir=work,
        tokenizer_scheme=tokenizer,
        everyday=_shares(everyday) if everyday is not None else None,
    )
    typer.echo(
        f"base written to {out}: {manifest['tokens']:,} tokens in {manifest['seconds']:.1f} s, "
        f"final loss {manifest['metrics']['final_loss']:.3f}, fingerprint {manifest['fingerprint']}"
    )


def _shares(text: str) -> tuple[float, float]:
    from barkit.errors import BarkitError

    parts = [p.strip() for p in text.split(",")]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) not in (1, 2):
        raise BarkitError(f"--everyday {text!r}: expected one share or two, e.g. 0.1,0.1")
    return values[0], values[-1]
