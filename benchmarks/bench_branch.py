"""Step time of a 2-expert branch over its dense base on the same batch, beside their FLOPs ratio.

The branch computes both experts for every token (top-k = 2 of 2, as BAR's branches do), so
its FFN work doubles while attention, embeddings and the LM head stay the same; the router
adds a (hidden x 2) product per layer. The measured step-time ratio is printed next to the
ratio of matmul FLOPs so the overhead of the MoE dispatch itself is visible.

usage: .venv/bin/python benchmarks/bench_branch.py [--preset tiny] [--batch 8] [--seq-len 256] [--repeats 5]
"""

from __future__ import annotations

import argparse
import time

import torch

from barkit.branch import branch_model
from barkit.families import use_trainable_experts
from barkit.modeling import build_dense
from barkit.presets import get_preset
from barkit.tokenizer import train_tokenizer


def matmul_flops_per_token(preset_name: str, experts_active: int, router_experts: int) -> float:
    """Forward matmul FLOPs per token (2 x multiply-adds), attention scores left out (same in both)."""
    p = get_preset(preset_name)
    h, i, v, layers = p.hidden_size, p.intermediate_size, p.vocab_size, p.num_layers
    kv = p.num_kv_heads * p.head_dim
    attention = 2 * h * h + 2 * h * kv
    ffn = 3 * h * i * experts_active
    router = h * router_experts
    return 2.0 * (layers * (attention + ffn + router) + h * v)


def step_time(model: torch.nn.Module, ids: torch.Tensor, repeats: int) -> float:
    """Best forward+backward time over ``repeats`` (after one warm-up)."""
    model.train()
    best = float("inf")
    for r in range(repeats + 1):
        start = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        model.zero_grad(set_to_none=True)
        if r:
            best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    preset = get_preset(args.preset)
    tokenizer = train_tokenizer(preset.vocab_size, 0, per_category=200)
    dense = build_dense("olmo2", preset, tokenizer, seed=0)
    branch = branch_model(dense, "equal")
    use_trainable_experts(branch, "eager")
    ids = torch.randint(
        7, preset.vocab_size, (args.batch, args.seq_len), generator=torch.Generator().manual_seed(0)
    )
    # Interleave the two models so that load changes on a shared machine hit both alike.
    dense_t, branch_t = float("inf"), float("inf")
    for _ in range(2):
        dense_t = min(dense_t, step_time(dense, ids, args.repeats))
        branch_t = min(branch_t, step_time(branch, ids, args.repeats))
    flops = matmul_flops_per_token(args.preset, 2, 2) / matmul_flops_per_token(args.preset, 1, 0)
    tokens = args.batch * args.seq_len
    print(f"preset {args.preset}: batch {args.batch} x {args.seq_len} tokens, best of {args.repeats} x 2")
    print(f"{'model':<24}{'step (s)':>10}{'tokens/s':>12}")
    print(f"{'dense base':<24}{dense_t:>10.3f}{tokens / dense_t:>12,.0f}")
    print(f"{'2-expert branch':<24}{branch_t:>10.3f}{tokens / branch_t:>12,.0f}")
    print(f"step-time ratio branch/dense: {branch_t / dense_t:.2f}   matmul-FLOPs ratio: {flops:.2f}")


if __name__ == "__main__":
    main()
