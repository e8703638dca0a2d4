"""``barkit merge``: compose branch experts into one MoE (BAR), or dense models into one (BTX)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def main(
    experts: Annotated[
        list[Path], typer.Argument(help="Branch folders (dense model folders with --btx), in expert order.")
    ],
    out: Annotated[Optional[Path], typer.Option("--out", help="Output folder (written atomically).")] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Check the inputs and print the plan; write nothing.")
    ] = False,
    shared: Annotated[
        str,
        typer.Option(
            help="Policy for diverged shared tensors: mean, weighted, anchor (the base's), sum "
            "(task arithmetic: base + every branch's change), ties (sign-agreeing mean of each "
            "branch's largest changes) or dare (random drop and rescale of the changes); anchor, "
            "sum, ties and dare need --base."
        ),
    ] = "mean",
    weights: Annotated[
        Optional[str], typer.Option(help="Weights per input for --shared weighted, e.g. 0.5,0.3,0.2.")
    ] = None,
    override: Annotated[
        Optional[list[str]],
        typer.Option(
            "--override",
            help="GLOB=POLICY: the policy of the shared tensors GLOB matches, e.g. '*embed*=weighted' "
            "(repeatable; the first matching GLOB wins).",
        ),
    ] = None,
    base: Annotated[
        Optional[Path], typer.Option(help="The branches' base folder (needed by --shared anchor and sum).")
    ] = None,
    top_k: Annotated[Optional[int], typer.Option("--top-k", help="Experts per token (default: all).")] = None,
    max_shard_size: Annotated[
        str, typer.Option(help="Largest safetensors file, e.g. 2GB or 500MiB.")
    ] = "2GB",
    btx: Annotated[
        bool, typer.Option("--btx", help="BTX: dense models' FFNs become experts, no anchor, fresh router.")
    ] = False,
) -> None:
    """Compose experts into one native transformers MoE (anchor + each branch's expert)."""
    from barkit.errors import ConfigError
    from barkit.merge import merge, merge_dense_btx, parse_size, plan_dense_btx

    size = parse_size(max_shard_size)
    if btx:
        if dry_run:
            typer.echo(plan_dense_btx(experts, top_k=top_k, max_shard_size=size).describe())
        elif out is None:
            raise ConfigError("merge needs --out DIR (or --dry-run)")
        else:
            merge_dense_btx(experts, out, top_k=top_k, max_shard_size=size)
            typer.echo(f"merged {len(experts)} dense models into {out}")
        return
    try:
        parsed = [float(w) for w in weights.split(",")] if weights else None
    except ValueError:
        raise ConfigError(f"--weights {weights!r}: expected numbers separated by commas") from None
    plan = merge(
        experts,
        out,
        shared=shared,  # type: ignore[arg-type]  # validated by merge
        weights=parsed,
        base_dir=base,
        overrides=_overrides(override or []),  # type: ignore[arg-type]  # validated by merge
        top_k=top_k,
        max_shard_size=size,
        dry_run=dry_run,
    )
    if dry_run:
        typer.echo(plan.describe())
    else:
        typer.echo(f"merged {len(plan.experts)} experts into {out}")


def _overrides(items: list[str]) -> dict[str, str]:
    """``["*embed*=weighted"]`` -> ``{"*embed*": "weighted"}`` (policies are checked by the merge)."""
    from barkit.errors import ConfigError

    out: dict[str, str] = {}
    for item in items:
        pattern, sep, policy = item.rpartition("=")
        if not sep or not pattern:
            raise ConfigError(f"--override {item!r}: expected GLOB=POLICY, e.g. '*embed*=weighted'")
        out[pattern] = policy
    return out
