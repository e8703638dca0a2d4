"""``barkit eval MODEL [--out FILE.json]``: micro-suite evaluation, per category and overall."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer


def main(
    model: Annotated[Path, typer.Argument(help="Model folder (dense or MoE).")],
    out: Annotated[
        Path | None, typer.Option("--out", help="Write scores and per-item results to this JSON file.")
    ] = None,
    categories: Annotated[
        str | None, typer.Option("--categories", help="Comma-separated categories (default: all seven).")
    ] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", help="Test items per category (100); with --data: rows (all).")
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Prompts decoded together.")] = 16,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="Tokens to generate at most.")] = 64,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the test items drawn.")] = 0,
    split: Annotated[
        str,
        typer.Option(
            "--split",
            help="test (the scores), or train: a fit check that tells memorising (train high, test "
            "low) from underfitting (both low).",
        ),
    ] = "test",
    experts: Annotated[
        str | None,
        typer.Option("--experts", help="MoE: comma-separated experts to keep switched on (default: all)."),
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(
            "--data",
            help="Evaluate on your own file instead of the micro-suite: JSONL, Parquet or a saved "
            "dataset with 'prompt' (text or messages) and 'answer'.",
        ),
    ] = None,
    verifier: Annotated[
        str | None,
        typer.Option(
            "--verifier",
            help="With --data: exact, numeric, regex, tool-call, python-tests, or module.path:function "
            "(a function of yours, run as your own code).",
        ),
    ] = None,
    copy_items: Annotated[
        int,
        typer.Option("--copy-probe", help="Held-out spans for the in-prompt copy probe (0 = skip it)."),
    ] = 100,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Evaluate a model on the micro-suite's test split (or your --data file) and print the scores (0-100)."""
    from barkit.artifacts import require_model_dir
    from barkit.errors import ConfigError
    from barkit.evaluate import DEFAULT_LIMIT, evaluate_folder, format_table, resolve_categories

    # Cheap checks first, so that a typo fails before the weights load.
    folder = require_model_dir(model)
    if data is not None:
        if split != "test":
            raise ConfigError("--split applies to the micro-suite; --data evaluates your file")
        from barkit.userdata import detect_format
        from barkit.verifiers import get_verifier

        if verifier is None:
            raise ConfigError(
                "--data needs --verifier (exact, numeric, regex, tool-call, python-tests, or module:function)"
            )
        detect_format(data)
        get_verifier(verifier)
        chosen: dict[str, Any] = {"data": data, "verifier": verifier, "limit": limit, "copy_items": 0}
    else:
        from barkit.suite.base import SPLITS

        if split not in SPLITS:
            raise ConfigError(f"--split {split}: choose {' or '.join(SPLITS)}")
        chosen = {
            "categories": resolve_categories(categories),
            "limit": limit or DEFAULT_LIMIT,
            "seed": seed,
            "split": split,
            "copy_items": copy_items,
        }
    keep = None
    if experts is not None:
        from barkit.experts import model_expert_names, parse_names, resolve_experts

        keep = resolve_experts(parse_names(experts), model_expert_names(folder))
    result = evaluate_folder(
        folder,
        out,
        keep_experts=keep,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        progress=progress,
        **chosen,
    )
    typer.echo(format_table({model.name or str(model): {**result["scores"], "overall": result["overall"]}}))
    if split == "train":
        typer.echo("(train split: a fit check of what the model was trained on, not a score)")
    if "copy_probe" in result:
        probe = result["copy_probe"]
        typer.echo(f"copy probe: {probe['copy']:.1f}% of {probe['items']} held-out spans repeated exactly")
    if out is not None:
        typer.echo(f"wrote {out}")
