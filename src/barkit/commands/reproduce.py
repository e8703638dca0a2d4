"""``barkit reproduce``: BAR against every alternative on the micro-suite, with ablations, upgrades and cost."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from barkit.train.kinds import branch_kinds


def main(
    out: Annotated[Path, typer.Option("--out", help="Run folder (reruns skip what is already built).")],
    quick: Annotated[
        bool, typer.Option("--quick", help="Micro models, a few steps, 2 eval items per category (minutes).")
    ] = False,
    seeds: Annotated[int, typer.Option("--seeds", help="Seeds per method (mean ± std in the tables).")] = 3,
    preset: Annotated[
        str | None, typer.Option("--preset", help="Model preset (micro, tiny, small); default: the budget's.")
    ] = None,
    steps: Annotated[
        str | None,
        typer.Option(
            "--steps",
            help=f"Per-domain steps of stage kinds, e.g. 'sft=40,rlvr=5' (kinds: {', '.join(branch_kinds())}, base).",
        ),
    ] = None,
    eval_limit: Annotated[int | None, typer.Option("--eval-limit", help="Test items per category.")] = None,
    threads: Annotated[
        int | None,
        typer.Option(
            "--threads",
            help="CPU threads for torch (default: torch's). 1 is fastest for micro models on a busy machine.",
        ),
    ] = None,
    only_seed: Annotated[
        int | None,
        typer.Option(
            "--only-seed",
            help="Build and evaluate this seed only, no report: run one process per seed (start the "
            "others once OUT/base exists), then once without it to write the report. Processes sharing OUT "
            "lock each step, so none builds what another is building.",
        ),
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars of the training stages.")] = True,
) -> None:
    """Build and evaluate BAR, monolithic and sequential retraining, dense averaging, BTX, FlexOlmo-style
    training and BTS on the same data and budgets; ablations, upgrades, cost; writes OUT/report.md."""
    from barkit.errors import ConfigError
    from barkit.reproduce import FULL, QUICK, override_budget, reproduce

    if threads is not None:
        if threads < 1:
            raise ConfigError(f"--threads {threads}: must be at least 1")
        import torch

        # Oversubscribed OpenMP threads spin; on a shared 2-core machine a micro stage ran ~50x slower.
        torch.set_num_threads(threads)

    budget = override_budget(QUICK if quick else FULL, preset=preset, steps=steps, eval_limit=eval_limit)
    start = time.perf_counter()
    result = reproduce(out, seeds=seeds, budget=budget, only_seed=only_seed, progress=progress)
    minutes = (time.perf_counter() - start) / 60
    if result.report is None:
        typer.echo(f"seed {only_seed} built and evaluated under {out}   wall time: {minutes:.1f} min")
    else:
        typer.echo(f"report: {result.report}   wall time: {minutes:.1f} min")
