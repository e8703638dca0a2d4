"""Run one micro stage; launched by tests/test_resume_ddp.py under torchrun (or alone).

usage: python tests/_ddp_worker.py OUT_DIR BATCH_SIZE GRAD_ACCUM
Each rank writes OUT_DIR/rank<r>.json with the world size it saw; rank 0 writes the final
weights to OUT_DIR/weights.safetensors.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from _train_micro import moe_model, random_rows  # noqa: E402
from barkit.train.config import OptimConfig, StageConfig  # noqa: E402
from barkit.train.loop import run_stage  # noqa: E402
from barkit.train.objectives import PackedObjective  # noqa: E402


def stage_config(batch_size: int, grad_accum: int) -> StageConfig:
    optim = OptimConfig(lr=1e-2, weight_decay=0.1, warmup_steps=1)
    return StageConfig(
        kind="sft", steps=4, batch_size=batch_size, grad_accum=grad_accum, seq_len=32, optim=optim
    )


def main(out: Path, batch_size: int, grad_accum: int) -> None:
    from safetensors.torch import save_file

    torch.set_num_threads(1)
    cfg = stage_config(batch_size, grad_accum)
    model = moe_model(seed=5)
    objective = PackedObjective(random_rows(n=48), cfg.batch_size, cfg.seed, aux_loss_coef=0.01)
    result = run_stage(model, None, cfg, objective, out / "stage", progress=False)
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    rank = int(os.environ.get("RANK", "0"))
    info = {"world_size": world, "rank": rank, "tokens": result.tokens, "loss": result.history[-1]["loss"]}
    (out / f"rank{rank}.json").write_text(json.dumps(info))
    if rank == 0:
        state = {n: p.detach().contiguous() for n, p in result.model.named_parameters()}
        save_file(state, str(out / "weights.safetensors"))
    if torch.distributed.is_initialized():  # as barkit's CLI does: no backend teardown at exit
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
