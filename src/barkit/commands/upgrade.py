"""barkit upgrade MODEL --replace NAME=EXPERT_DIR: swap experts, re-merge, retrain only the router."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def main(
    model: Annotated[Path, typer.Argument(help="merged or routed model folder")],
    replace: Annotated[list[str], typer.Option("--replace", help="NAME=EXPERT_DIR (repeatable)")],
    out: Annotated[Path, typer.Option("--out", help="output folder")],
    sample: Annotated[
        float | None, typer.Option("--sample", help="router sample share; default: as recorded (else 0.05)")
    ] = None,
    seed: Annotated[
        int | None, typer.Option("--seed", help="router seed; default: as recorded (else 0)")
    ] = None,
    preset: Annotated[
        str | None, typer.Option("--preset", help="micro|tiny|small; default: as recorded (else tiny)")
    ] = None,
    steps: Annotated[int | None, typer.Option("--steps", help="router steps; default: as recorded")] = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Replace experts of a merged model; only the merge, its recorded recovery and the router run again."""
    from barkit.errors import ConfigError
    from barkit.upgrade import parse_replacements, upgrade

    if sample is not None and not 0.0 < sample <= 1.0:
        raise ConfigError(f"--sample {sample}: must be in (0, 1]")
    manifest = upgrade(
        model,
        parse_replacements(replace),
        out,
        sample=sample,
        seed=seed,
        preset=preset,
        steps=steps,
        progress=progress,
    )
    print(f"upgraded model: {out} (fingerprint {manifest['fingerprint']})")
