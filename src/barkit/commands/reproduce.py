"""``barkit reproduce``: BAR against every alternative on the micro-suite, with ablations, upgrades and cost."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer


def main(
    out: Annotated[Path, typer.Option("--out", help="Run folder (reruns skip what is already built).")],
    quick: Annotated[
        bool, typer.Option("--quick", help="Micro models, a few steps, 2 eval items per category (minutes).")
    ] = False,
    seeds: Annotated[int, typer.Option("--seeds", help="Seeds per method (mean ± std in the tables).")] = 3,
    progress: Annotated[bool, typer.Option(help="Show progress bars of the training stages.")] = True,
) -> None:
    """Build and evaluate BAR, monolithic and sequential retraining, dense averaging, BTX, FlexOlmo-style
    training and BTS on the same data and budgets; ablations, upgrades, cost; writes OUT/report.md."""
    from barkit.reproduce import reproduce

    start = time.perf_counter()
    result = reproduce(out, quick=quick, seeds=seeds, progress=progress)
    typer.echo(f"report: {result.report}   wall time: {(time.perf_counter() - start) / 60:.1f} min")
