"""``barkit train BRANCH --stage KIND --domain NAME --out DIR``: one expert stage.

The stage choices are the registry's kinds that run on a branch (:mod:`barkit.train.kinds`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from barkit.train.kinds import branch_kinds

STAGES = branch_kinds()


def main(
    branch: Annotated[Path, typer.Argument(help="Branch folder, or the previous stage's output folder.")],
    stage: Annotated[str, typer.Option("--stage", help=f"Stage to run: {', '.join(STAGES)}.")],
    domain: Annotated[
        str, typer.Option("--domain", help="Micro-suite domain: math, code, tool_use, safety.")
    ],
    out: Annotated[Path, typer.Option("--out", help="Folder to write the trained expert to.")],
    steps: Annotated[int | None, typer.Option("--steps", help="Override the preset's step count.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed for data order and sampling.")] = 0,
    preset: Annotated[str, typer.Option("--preset", help="Schedule size: micro, tiny or small.")] = "tiny",
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from the checkpoint an interrupted run left.")
    ] = False,
    trainable: Annotated[
        str | None,
        typer.Option(
            "--trainable",
            help="Comma-separated groups (expert, router, embeddings, lm_head, attention, norms), "
            "embeddings:new / lm_head:new (only the added tokens' rows) or parameter globs; default: "
            "BAR's schedule for the stage.",
        ),
    ] = None,
    general_mix: Annotated[
        float | None,
        typer.Option("--general-mix", help="Share of general data mixed in (0 = domain only)."),
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Run one stage of one expert: progressive unfreezing, anchor kept bit-identical."""
    from barkit.errors import ConfigError
    from barkit.train.stages import run_domain_stage

    if stage not in branch_kinds():
        raise ConfigError(f"--stage {stage!r} is not one of {', '.join(branch_kinds())}")
    overrides: dict[str, object] = {}
    if trainable is not None:
        patterns = [p.strip() for p in trainable.split(",") if p.strip()]
        if not patterns:
            raise ConfigError("--trainable names no group or pattern")
        overrides["trainable"] = patterns
    if general_mix is not None:
        overrides["general_mix"] = general_mix
    manifest = run_domain_stage(
        branch,
        stage=stage,
        domain=domain,
        out_dir=out,
        preset=preset,
        steps=steps,
        seed=seed,
        overrides=overrides,
        resume=resume,
        progress=progress,
    )
    metrics = manifest["metrics"]
    line = f"{stage} {domain} -> {out}: {manifest['tokens']:,} tokens in {manifest['seconds']:.1f} s"
    line += f", final loss {metrics['final_loss']:.4f}"
    if metrics.get("reward_curve"):
        line += f", reward {metrics['reward_curve'][0]:.3f} -> {metrics['reward_curve'][-1]:.3f}"
    typer.echo(f"{line}, fingerprint {manifest['fingerprint']}")
