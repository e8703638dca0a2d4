"""Time barkit's ``run_stage`` against a minimal hand-written PyTorch loop.

Same model (fresh copy per run, same init), same batches, same optimizer (fused AdamW), fp32,
on a dense OLMo-2 and on a 2-expert FlexOlmo branch of the tiny preset's shape. Runs are
interleaved and the best of ``--repeats`` is kept, because the machine may be shared.

usage: .venv/bin/python benchmarks/bench_loop.py [--steps 20] [--batch 8] [--seq-len 256] [--repeats 2]
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time

import torch
from transformers import FlexOlmoForCausalLM, Olmo2Config, Olmo2ForCausalLM

from barkit.families import OLMO2, use_trainable_experts
from barkit.train.config import OptimConfig, StageConfig
from barkit.train.data import PackedData
from barkit.train.loop import run_stage
from barkit.train.objectives import PackedObjective


def models() -> dict[str, torch.nn.Module]:
    dense_cfg = Olmo2Config(
        vocab_size=2048,
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    dense = Olmo2ForCausalLM(dense_cfg)
    moe = FlexOlmoForCausalLM(OLMO2.moe_config(dense_cfg, 2, 2))
    use_trainable_experts(moe, "eager")
    return {"dense olmo2": dense, "moe flex_olmo (2 experts)": moe}


def plain_loop(model: torch.nn.Module, objective: PackedObjective, cfg: StageConfig) -> float:
    start = time.perf_counter()
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.optim.lr, betas=cfg.optim.betas, fused=True)
    for step in range(cfg.steps):
        ids = objective.batch(step)["input_ids"]
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def barkit_loop(model: torch.nn.Module, objective: PackedObjective, cfg: StageConfig) -> float:
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        run_stage(model, None, cfg, objective, out, progress=False)
        return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    cfg = StageConfig(
        kind="pretrain",
        steps=args.steps,
        batch_size=args.batch,
        seq_len=args.seq_len,
        optim=OptimConfig(lr=1e-3, grad_clip=1.0),
        log_every=10,
        aux_loss_coef=0.0,
    )
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, 2048, (64, args.seq_len), generator=g)
    data = PackedData(ids, torch.ones_like(ids), torch.ones_like(ids))
    print(
        f"torch threads {torch.get_num_threads()}, {args.steps} steps of {args.batch}x{args.seq_len} tokens"
    )
    print(f"{'model':28s} {'plain s':>8s} {'barkit s':>9s} {'barkit/plain':>13s}")
    for name, model in models().items():
        best = {"plain": float("inf"), "barkit": float("inf")}
        for _ in range(args.repeats):
            for kind, fn in (("plain", plain_loop), ("barkit", barkit_loop)):
                objective = PackedObjective(data, cfg.batch_size, cfg.seed, cfg.aux_loss_coef)
                best[kind] = min(best[kind], fn(copy.deepcopy(model), objective, cfg))
        print(f"{name:28s} {best['plain']:8.2f} {best['barkit']:9.2f} {best['barkit'] / best['plain']:13.3f}")


if __name__ == "__main__":
    main()
