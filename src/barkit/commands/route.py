"""barkit route MERGED: router-only training on a stratified sample of the experts' SFT data
(the micro-suite's, or the experts' own files with ``--data a.jsonl,b.jsonl``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def main(
    merged: Annotated[Path, typer.Argument(help="merged model folder (barkit merge)")],
    out: Annotated[Path, typer.Option("--out", help="output folder")],
    sample: Annotated[float, typer.Option("--sample", help="share of each category's SFT pool")] = 0.05,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    preset: Annotated[str, typer.Option("--preset", help="micro|tiny|small: step counts")] = "tiny",
    steps: Annotated[int | None, typer.Option("--steps", help="override the preset's step count")] = None,
    lr: Annotated[float | None, typer.Option("--lr", help="override the preset's peak learning rate")] = None,
    domain_loss: Annotated[
        float,
        typer.Option(
            "--domain-loss",
            help="coefficient of a cross-entropy between each token's router logits and the expert "
            "of its sample's domain (general samples: the anchor); 0 = off, BAR's LM loss alone",
        ),
    ] = 0.0,
    resume: Annotated[bool, typer.Option("--resume", help="continue an interrupted run")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    data: Annotated[
        str | None,
        typer.Option(
            "--data",
            help="comma-separated SFT files of the experts (JSONL, Parquet or saved datasets): the "
            "sample is drawn from these, tokenized with the merged model's chat template, instead of "
            "the micro-suite",
        ),
    ] = None,
) -> None:
    """Train only the router; every other tensor stays bit-identical. Writes routing.png."""
    from barkit.errors import ConfigError
    from barkit.route import route

    if not 0.0 < sample <= 1.0:
        raise ConfigError(f"--sample {sample}: must be in (0, 1]")
    if domain_loss < 0:
        raise ConfigError(f"--domain-loss {domain_loss}: must be >= 0")
    files = None
    if data is not None:
        from barkit.train.file_data import user_data

        paths = [p.strip() for p in data.split(",") if p.strip()]
        if not paths:
            raise ConfigError("--data names no file")
        files = user_data(paths)
    manifest = route(
        merged,
        out,
        sample=sample,
        seed=seed,
        preset=preset,
        steps=steps,
        domain_loss=domain_loss,
        data=files,
        resume=resume,
        lr=lr,
        progress=progress,
    )
    print(f"routed model: {out} (fingerprint {manifest['fingerprint']}); heatmap: {out}/routing.png")
