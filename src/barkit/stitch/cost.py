"""Inference cost, for comparing BTS with BAR and BTX side by side.

:func:`stitched_cost` counts the parameters a stitched model touches per token: the whole hub,
each expert up to its last stitch point (embedding and decoder layers; its final norm and LM head
are never used), and the stitches. ``matmul_params_per_token`` leaves out embedding tables (a
token reads one row of them), so it is proportional to the forward FLOPs per token.

:func:`measure_tokens_per_second` times greedy generation with the KV cache for any barkit model.
"""

from __future__ import annotations

import time
from typing import Any

from torch import nn

from barkit.errors import BarkitError
from barkit.stitch.layers import StitchedCausalLM


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _embedding(lm: Any) -> int:
    return _count(lm.model.embed_tokens)


def _expert_used(lm: Any, last_layer: int) -> int:
    """Embedding plus the decoder layers up to and including the last stitch point."""
    layers = lm.model.layers[: last_layer + 1]
    return _embedding(lm) + sum(_count(layer) for layer in layers)


def stitched_cost(model: nn.Module) -> dict[str, Any]:
    """Parameters touched per token by a stitched model: hub, each expert, stitches, totals.

    ``relative_to_seed`` is the total divided by the hub alone (the seed's own cost).
    """
    if not isinstance(model, StitchedCausalLM):
        raise BarkitError(f"stitched_cost needs a stitched model, got {type(model).__name__}")
    last = model.stitches.points[-1]
    hub = _count(model.hub)
    experts = {name: _expert_used(lm, last) for name, lm in model.experts.items()}
    stitches = _count(model.stitches)
    total = hub + sum(experts.values()) + stitches
    embeddings = _embedding(model.hub) + sum(_embedding(lm) for lm in model.experts.values())
    return {
        "hub": hub,
        "experts": experts,
        "stitches": stitches,
        "params_per_token": total,
        "matmul_params_per_token": total - embeddings,
        "relative_to_seed": total / hub,
    }


def _prompts(n: int, seed: int) -> list[list[dict[str, str]]]:
    """``n`` user turns taken in turn from the suite's test split of every category."""
    from barkit.suite import CATEGORIES, get_category

    per_category = -(-n // len(CATEGORIES))
    pools = [get_category(c).items("test", per_category, seed) for c in CATEGORIES]
    mixed = [pool[i] for i in range(per_category) for pool in pools if i < len(pool)]
    return [[{"role": "user", "content": item.prompt}] for item in mixed[:n]]


def measure_tokens_per_second(
    model: Any, tokenizer: Any, n_prompts: int, max_new_tokens: int, *, batch_size: int = 8, seed: int = 0
) -> dict[str, float]:
    """Greedy generation throughput (prefill included) on ``n_prompts`` suite test prompts.

    Works for any model with the HF-style forward (dense, MoE, stitched). Returns generated
    ``tokens``, ``seconds`` and ``tokens_per_second``.
    """
    import torch

    from barkit.generate import encode_prompt, greedy_batch

    if n_prompts < 1 or max_new_tokens < 1 or batch_size < 1:
        raise BarkitError(
            f"n_prompts, max_new_tokens and batch_size must be >= 1 (got {n_prompts}, {max_new_tokens}, {batch_size})"
        )
    encoded = [encode_prompt(tokenizer, p) for p in _prompts(n_prompts, seed)]
    model.eval()
    tokens = 0
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(encoded), batch_size):
            outputs = greedy_batch(
                model,
                encoded[i : i + batch_size],
                max_new_tokens=max_new_tokens,
                eos_id=tokenizer.eos_token_id,
                pad_id=tokenizer.pad_token_id,
            )
            tokens += sum(len(ids) for ids in outputs)
    seconds = time.perf_counter() - start
    return {
        "prompts": float(len(encoded)),
        "tokens": float(tokens),
        "seconds": seconds,
        "tokens_per_second": tokens / max(seconds, 1e-9),
    }
