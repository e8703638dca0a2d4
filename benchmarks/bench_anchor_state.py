"""What the anchor cost the optimizer: barkit's loop with the anchor outside AdamW vs the same loop
handing AdamW the whole fused expert tensors (anchor included, restored by the guard each step).

Same branch (a Llama with a sizeable FFN), same batches, same stage config, fp32; runs are
interleaved and the best of ``--repeats`` is kept. Prints AdamW's state (moment buffers), the
seconds per optimizer step and the largest weight difference between the two modes.

usage: OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_anchor_state.py [--steps 6] [--repeats 2]
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from typing import Any

import torch
from transformers import LlamaConfig, LlamaForCausalLM

import barkit.train.loop as loop
from barkit.branch import branch_model
from barkit.families import family_of
from barkit.train.config import OptimConfig, StageConfig
from barkit.train.data import PackedData
from barkit.train.freeze import OptimizerTensors, OptimTensor
from barkit.train.objectives import PackedObjective

MiB = 2**20


class WholeTensors(OptimizerTensors):
    """The alternative: every trainable parameter whole, the anchor's rows included."""

    def __init__(self, model: torch.nn.Module, plan: Any) -> None:
        self.tensors = [OptimTensor(n, p, None, n) for n, p in model.named_parameters() if p.requires_grad]


def branch() -> torch.nn.Module:
    config = LlamaConfig(
        vocab_size=2048,
        hidden_size=384,
        intermediate_size=1536,
        num_hidden_layers=4,
        num_attention_heads=6,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    return branch_model(LlamaForCausalLM(config))


def run(
    model: torch.nn.Module, cfg: StageConfig, data: PackedData, mode: str
) -> tuple[float, float, int, Any]:
    """(seconds per step, of which in the optimizer step, optimizer state bytes, trained model)."""
    captured: list[torch.optim.Optimizer] = []
    make, step = loop._optimizer, loop._Stage.optimizer_step
    in_step = [0.0]

    def timed_step(stage: Any) -> float:
        start = time.perf_counter()
        norm = step(stage)
        in_step[0] += time.perf_counter() - start
        return norm

    def capture(*args: Any) -> Any:
        opt, names = make(*args)
        captured.append(opt)
        return opt, names

    loop._optimizer = capture  # type: ignore[assignment]
    loop._Stage.optimizer_step = timed_step  # type: ignore[method-assign]
    loop.OptimizerTensors = WholeTensors if mode == "whole" else OptimizerTensors  # type: ignore[misc]
    try:
        with tempfile.TemporaryDirectory() as out:
            objective = PackedObjective(data, cfg.batch_size, cfg.seed, 0.0)
            start = time.perf_counter()
            result = loop.run_stage(model, None, cfg, objective, out, progress=False)
            seconds = (time.perf_counter() - start) / cfg.steps
    finally:
        loop._optimizer, loop.OptimizerTensors = make, OptimizerTensors  # type: ignore[misc]
        loop._Stage.optimizer_step = step  # type: ignore[method-assign]
    state = sum(
        v.numel() * v.element_size() for s in captured[0].state.values() for v in s.values() if v.ndim
    )
    return seconds, in_step[0] / cfg.steps, state, result.model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    base = branch()
    weights = sum(p.numel() * p.element_size() for p in base.parameters())
    anchor = sum(v.numel() * v.element_size() for _, v in family_of(base).anchor_slices(base))
    ids = torch.randint(4, 2048, (32, args.seq_len), generator=torch.Generator().manual_seed(0))
    data = PackedData(ids, torch.ones_like(ids), torch.ones_like(ids))
    print(
        f"torch threads {torch.get_num_threads()}; weights {weights / MiB:.1f} MiB, anchor {anchor / MiB:.1f} MiB"
    )
    print(f"{args.steps} steps of {args.batch}x{args.seq_len} tokens, fp32, AdamW fused, weight decay 0.1")
    head = [
        "state whole",
        "state views",
        "ratio",
        "s/step whole",
        "s/step views",
        "opt s whole",
        "opt s views",
    ]
    print(f"{'stage':9s} " + " ".join(f"{h:>12s}" for h in head) + f" {'max |dw|':>9s}")
    for kind in ("midtrain", "sft"):
        optim = OptimConfig(lr=1e-3, weight_decay=0.1, warmup_steps=0, grad_clip=1.0)
        cfg = StageConfig(
            kind=kind, steps=args.steps, batch_size=args.batch, seq_len=args.seq_len, optim=optim
        )
        best = {m: [float("inf"), float("inf")] for m in ("whole", "views")}
        state: dict[str, int] = {}
        trained: dict[str, torch.nn.Module] = {}
        for _ in range(args.repeats):
            for mode in ("whole", "views"):
                seconds, opt_s, state[mode], trained[mode] = run(copy.deepcopy(base), cfg, data, mode)
                best[mode] = [min(best[mode][0], seconds), min(best[mode][1], opt_s)]
        a, b = (dict(trained[m].named_parameters()) for m in ("whole", "views"))
        gap = max(float((a[n] - b[n]).detach().abs().max()) for n in a)
        cells = [f"{state['whole'] / MiB:8.1f} MiB", f"{state['views'] / MiB:8.1f} MiB"]
        cells.append(f"{state['views'] / state['whole']:.3f}")
        cells += [f"{best[m][i]:.3f}" for i in (0, 1) for m in ("whole", "views")]
        print(f"{kind:9s} " + " ".join(f"{c:>12s}" for c in cells) + f" {gap:9.2e}")


if __name__ == "__main__":
    main()
