"""``barkit prune MODEL --drop NAME[,NAME] --out DIR``: remove experts from a MoE checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def main(
    model: Annotated[Path, typer.Argument(help="MoE model folder (a branch, merge or routed model).")],
    drop: Annotated[str, typer.Option("--drop", help="Comma-separated names of the experts to remove.")],
    out: Annotated[Path, typer.Option("--out", help="Folder to write the smaller model to.")],
) -> None:
    """Write a smaller MoE without the named experts (the anchor stays)."""
    from barkit.experts import parse_names, prune

    manifest = prune(model, parse_names(drop), out)
    typer.echo(f"kept {', '.join(manifest['experts'])} -> {out} ({manifest['fingerprint']})")
