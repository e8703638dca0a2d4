"""barkit demo: the whole BAR pipeline on the built-in micro-suite, ending in a result table."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer


def main(
    out: Annotated[Path, typer.Option("--out", help="run folder")] = Path("runs/demo"),
    quick: Annotated[
        bool, typer.Option("--quick", help="micro models and a few steps (about 2 minutes)")
    ] = False,
    jobs: Annotated[
        int | None,
        typer.Option(
            "--jobs", help="experts built at once, each in its own process (default: one per CPU core)"
        ),
    ] = None,
) -> None:
    """Base, four experts (math, code, tool use, safety), merge, route, eval; prints one table."""
    from barkit.commands.run import _print_result
    from barkit.jobs import auto_jobs
    from barkit.pipeline import run_recipe
    from barkit.recipe import builtin_recipe, quick_variant

    recipe = builtin_recipe("default")
    if quick:
        recipe = quick_variant(recipe)
    start = time.perf_counter()
    result = run_recipe(recipe, out, jobs=jobs if jobs is not None else auto_jobs(len(recipe.experts)))
    _print_result(result)
    print(f"report: {out}/report.md   wall time: {time.perf_counter() - start:.0f} s")
