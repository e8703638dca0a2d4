"""``barkit data ...``: the built-in micro-suite's data, exported for any trainer."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Export the built-in micro-suite's data as JSONL.", no_args_is_help=True)


@app.callback()
def group() -> None:
    """Export the built-in micro-suite's data as JSONL."""
    # a callback keeps ``data`` a group even while ``export`` is its only command


@app.command()
def export(
    category: Annotated[
        str, typer.Option(help="knowledge, reasoning, chat, math, code, tool_use or safety.")
    ],
    out: Annotated[Path, typer.Option(help="JSONL file to write (atomically).")],
    split: Annotated[str, typer.Option(help="train or test.")] = "train",
    kind: Annotated[
        str, typer.Option(help="sft (messages), rl (prompt, answer, meta) or text (raw documents).")
    ] = "sft",
    n: Annotated[int, typer.Option(help="Number of records.")] = 1000,
    seed: Annotated[int, typer.Option(help="Seed of the item generator.")] = 0,
) -> None:
    """Write N items of one category and split as chat-format JSONL (datasets-loadable)."""
    from barkit.suite.export import export_jsonl

    count = export_jsonl(category, split, kind, out, n=n, seed=seed)
    typer.echo(f"wrote {count} {kind} records of {category}/{split} to {out}")
