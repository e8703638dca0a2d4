"""``barkit stitch``: Branch-Train-Stitch; create a stitched model, or add or remove one expert.

Three forms, told apart by ``--add`` / ``--remove``::

    barkit stitch SEED EXPERT_DIR... --out DIR      create: stitch experts to the seed, train the stitches
    barkit stitch --add EXPERT_DIR MODEL --out DIR  add an expert; only its new stitches train
    barkit stitch --remove NAME MODEL --out DIR     remove an expert and its stitches (no training)
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def main(
    inputs: Annotated[
        list[Path],
        typer.Argument(help="create: SEED then EXPERT_DIR...; with --add or --remove: the stitched MODEL."),
    ],
    out: Annotated[Path, typer.Option("--out", help="Output folder of the stitched model.")],
    add: Annotated[Path | None, typer.Option("--add", help="Expert folder to add to MODEL.")] = None,
    remove: Annotated[
        str | None, typer.Option("--remove", help="Name (domain) of the expert to remove from MODEL.")
    ] = None,
    every: Annotated[int, typer.Option("--every", help="A stitch after every K layers (create only).")] = 2,
    domains: Annotated[
        str | None,
        typer.Option(
            "--domains", help="Comma-separated domain per expert (default: each expert's barkit.json)."
        ),
    ] = None,
    sample: Annotated[
        float, typer.Option("--sample", help="Share of each category's SFT pool to train on.")
    ] = 0.05,
    steps: Annotated[int | None, typer.Option("--steps", help="Override the preset's step count.")] = None,
    preset: Annotated[
        str, typer.Option("--preset", help="micro|tiny|small: step counts and batch shape.")
    ] = "tiny",
    seed: Annotated[int, typer.Option("--seed", help="Seeds the data sample and order.")] = 0,
) -> None:
    """Join frozen dense experts to a frozen seed with trained stitch layers (BTS); add or remove experts.

    Create: barkit stitch SEED EXPERT_DIR... --out DIR (every stitch trains).

    Add: barkit stitch --add EXPERT_DIR MODEL --out DIR (only the new expert's stitches train).

    Remove: barkit stitch --remove NAME MODEL --out DIR (no training; the rest is unchanged).
    """
    from barkit.errors import ConfigError
    from barkit.stitch import TrainOptions, stitch_add, stitch_create, stitch_remove

    if add is not None and remove is not None:
        raise ConfigError("give --add or --remove, not both")
    names = [d.strip() for d in domains.split(",") if d.strip()] if domains is not None else None
    options = TrainOptions(sample=sample, steps=steps, preset=preset, seed=seed)
    if add is not None or remove is not None:
        if len(inputs) != 1:
            raise ConfigError(
                f"--add/--remove take exactly one stitched MODEL folder, got {len(inputs)} paths"
            )
        if remove is not None:
            manifest = stitch_remove(inputs[0], remove, out)
        else:
            assert add is not None
            if names is not None and len(names) != 1:
                raise ConfigError("--domains with --add names exactly one domain")
            manifest = stitch_add(inputs[0], add, out, domain=names[0] if names else None, options=options)
    else:
        if len(inputs) < 2:
            raise ConfigError("create needs SEED and at least one EXPERT_DIR")
        manifest = stitch_create(inputs[0], inputs[1:], out, every=every, domains=names, options=options)
    experts = ", ".join(manifest["stitched_experts"])
    typer.echo(f"stitched model: {out} (experts: {experts}; fingerprint {manifest['fingerprint']})")
