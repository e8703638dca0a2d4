"""``barkit generate MODEL --prompt TEXT [--experts a,b]``: chat completion, experts switched off at will."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def main(
    model: Annotated[Path, typer.Argument(help="Model folder (dense or MoE).")],
    prompt: Annotated[list[str], typer.Option("--prompt", help="User message; repeat for several prompts.")],
    experts: Annotated[
        str | None, typer.Option("--experts", help="Comma-separated experts to keep active (default: all).")
    ] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="Tokens to generate at most.")] = 64,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Prompts decoded together.")] = 8,
) -> None:
    """Greedy chat completion of each prompt, formatted with the model's chat template."""
    import contextlib

    from barkit.artifacts import require_model_dir
    from barkit.experts import model_expert_names, parse_names, resolve_experts, restrict_experts
    from barkit.generate import generate
    from barkit.loader import load_model

    folder = require_model_dir(model)
    # Names are checked before the weights load, so a typo fails fast.
    keep = resolve_experts(parse_names(experts), model_expert_names(folder)) if experts is not None else None
    net, tokenizer = load_model(folder)
    switch = restrict_experts(net, keep) if keep is not None else contextlib.nullcontext(net)
    with switch:
        outputs = generate(net, tokenizer, prompt, max_new_tokens=max_new_tokens, batch_size=batch_size)
    for text in outputs:
        typer.echo(text)
