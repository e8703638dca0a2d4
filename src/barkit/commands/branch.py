"""``barkit branch BASE --out DIR``: a dense model becomes a 2-expert MoE branch."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def main(
    base: Annotated[Path, typer.Argument(help="Dense base model folder (OLMo-2, Llama or Mistral).")],
    out: Annotated[Path, typer.Option("--out", help="Folder to write the branch to.")],
    router_init: Annotated[
        str,
        typer.Option(
            "--router-init", help="Router rows: equal (zeros), domain (from domain data) or random."
        ),
    ] = "equal",
    domain: Annotated[
        str | None,
        typer.Option("--domain", help="Micro-suite domain of the expert (needed by --router-init domain)."),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed for the random and domain router inits.")] = 0,
) -> None:
    """Branch a dense model: expert 0 is the anchor (the base FFN), expert 1 a trainable copy."""
    from barkit.branch import ROUTER_INITS, branch
    from barkit.errors import ConfigError

    if router_init not in ROUTER_INITS:
        raise ConfigError(f"--router-init {router_init!r} is not one of {', '.join(ROUTER_INITS)}")
    manifest = branch(base, out, router_init=router_init, domain=domain, seed=seed)  # type: ignore[arg-type]
    typer.echo(f"branch {manifest['experts']} -> {out} ({manifest['fingerprint']})")
