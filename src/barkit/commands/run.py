"""barkit run RECIPE.yaml: build a recipe's pipeline, skipping up-to-date steps."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from barkit.pipeline import RunResult


def main(
    recipe: Annotated[Path, typer.Argument(help="recipe YAML file")],
    out: Annotated[Path, typer.Option("--out", help="run folder")] = Path("runs/recipe"),
    only: Annotated[str | None, typer.Option("--only", help="build one expert alone: experts.NAME")] = None,
    no_eval: Annotated[bool, typer.Option("--no-eval", help="skip the evaluation and report")] = False,
    jobs: Annotated[
        int | None,
        typer.Option(
            "--jobs", help="experts built at once, each in its own process (default: one per CPU core)"
        ),
    ] = None,
) -> None:
    """Build the whole pipeline of a recipe (stages whose inputs and config are unchanged are skipped)."""
    from barkit.jobs import auto_jobs
    from barkit.pipeline import run_recipe
    from barkit.recipe import load_recipe

    loaded = load_recipe(recipe)
    jobs = jobs if jobs is not None else auto_jobs(len(loaded.experts))
    result = run_recipe(loaded, out, only=only, evaluate=not no_eval, jobs=jobs)
    _print_result(result)


def _print_result(result: RunResult) -> None:
    from barkit.evaluate import format_table

    if result.scores:
        print(format_table(result.scores))
    ran = sum(1 for s in result.steps if s.ran)
    print(f"{ran} step(s) ran, {len(result.steps) - ran} up to date; ledger: {result.out}/ledger.jsonl")
