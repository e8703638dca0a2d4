"""barkit upgrade MODEL --replace NAME=EXPERT_DIR: swap experts, re-merge, retrain only the router."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def main(
    model: Annotated[Path, typer.Argument(help="merged or routed model folder")],
    replace: Annotated[list[str], typer.Option("--replace", help="NAME=EXPERT_DIR (repeatable)")],
    out: Annotated[Path, typer.Option("--out", help="output folder")],
    sample: Annotated[float, typer.Option("--sample")] = 0.05,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    preset: Annotated[str, typer.Option("--preset")] = "tiny",
    steps: Annotated[int | None, typer.Option("--steps")] = None,
) -> None:
    """Replace experts of a merged model; nothing but the router trains again."""
    from barkit.upgrade import parse_replacements, upgrade

    manifest = upgrade(
        model, parse_replacements(replace), out, sample=sample, seed=seed, preset=preset, steps=steps
    )
    print(f"upgraded model: {out} (fingerprint {manifest['fingerprint']})")
