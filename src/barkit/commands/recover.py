"""barkit recover MERGED: a short low-rate training of a merged model's shared tensors and router."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def main(
    merged: Annotated[Path, typer.Argument(help="merged model folder (barkit merge)")],
    out: Annotated[Path, typer.Option("--out", help="output folder")],
    sample: Annotated[float, typer.Option("--sample", help="share of each category's SFT pool")] = 0.05,
    lr: Annotated[
        float | None, typer.Option("--lr", help="peak learning rate; default: the preset's")
    ] = None,
    trainable: Annotated[
        str | None,
        typer.Option(
            "--trainable",
            help="comma-separated groups or globs; default: router, embeddings, lm_head, norms",
        ),
    ] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    preset: Annotated[str, typer.Option("--preset", help="micro|tiny|small: step counts")] = "tiny",
    steps: Annotated[int | None, typer.Option("--steps", help="override the preset's step count")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="continue an interrupted run")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Recover shared tensors and router after a merge; experts and anchor stay bit-identical."""
    from barkit.artifacts import read_manifest
    from barkit.errors import ConfigError
    from barkit.recover import recover, recover_plan
    from barkit.route import expert_domains

    if not 0.0 < sample <= 1.0:
        raise ConfigError(f"--sample {sample}: must be in (0, 1]")
    overrides: dict[str, object] = {}
    if lr is not None:
        overrides["optim"] = {"lr": lr}
    if trainable is not None:
        overrides["trainable"] = [p.strip() for p in trainable.split(",") if p.strip()]
    domains = expert_domains(read_manifest(merged))
    plan = recover_plan(domains, preset=preset, steps=steps, seed=seed, overrides=overrides)
    manifest = recover(merged, out, sample=sample, plan=plan, resume=resume, progress=progress)
    print(f"recovered model: {out} (fingerprint {manifest['fingerprint']})")
