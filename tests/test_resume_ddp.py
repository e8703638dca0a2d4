"""Checkpoints resume bit-identically; the same loop runs data-parallel under torchrun."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from _ddp_worker import main as run_worker
from _train_micro import moe_model, random_rows
from barkit.errors import ArtifactError
from barkit.train.config import OptimConfig, StageConfig
from barkit.train.loop import run_stage
from barkit.train.objectives import PackedObjective

ROOT = Path(__file__).resolve().parents[1]


class Interrupted(Exception):
    pass


def _config(**kw: object) -> StageConfig:
    optim = OptimConfig(lr=1e-2, weight_decay=0.1, warmup_steps=2)
    fields = dict(
        kind="sft", steps=6, batch_size=2, grad_accum=2, seq_len=32, optim=optim, checkpoint_every=3
    )
    fields.update(kw)
    return StageConfig(**fields)  # type: ignore[arg-type]


def _run(out: Path, *, resume: bool = False, stop_at: int | None = None, cfg: StageConfig | None = None):
    cfg = cfg or _config()
    objective = PackedObjective(random_rows(n=20), cfg.batch_size, cfg.seed, aux_loss_coef=0.01)

    def interrupt(step: int, _: dict[str, float]) -> None:
        if step == stop_at:
            raise Interrupted

    hook = interrupt if stop_at is not None else None
    return run_stage(
        moe_model(seed=3), None, cfg, objective, out, resume=resume, progress=False, on_step=hook
    )


def test_resume_after_interruption_is_bit_identical(tmp_path: Path) -> None:
    whole = _run(tmp_path / "whole")
    with pytest.raises(Interrupted):
        _run(tmp_path / "cut", stop_at=3)
    assert json.loads((tmp_path / "cut/checkpoint/trainer.json").read_text())["step"] == 3
    resumed = _run(tmp_path / "cut", resume=True)
    a, b = dict(whole.model.named_parameters()), dict(resumed.model.named_parameters())
    assert all(torch.equal(a[n], b[n]) for n in a), "resumed weights differ from the uninterrupted run"
    assert resumed.tokens == whole.tokens
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in whole.history]
    lines = (tmp_path / "cut/metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2, 3, 4, 5, 6]


def test_resume_refuses_a_checkpoint_of_another_trainable_set(tmp_path: Path) -> None:
    _run(tmp_path, cfg=_config(steps=2))
    with pytest.raises(ArtifactError, match="trainable set"):
        _run(tmp_path, resume=True, cfg=_config(steps=4, trainable=["router"]))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _relative_gap(
    a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], init: dict[str, torch.Tensor]
) -> float:
    """Largest per-tensor ||a - b|| relative to how far b moved from init (trained tensors)."""
    gaps = [(a[n] - b[n]).norm() / (b[n] - init[n]).norm() for n in a if not torch.equal(b[n], init[n])]
    return float(max(gaps))


def test_two_process_run_matches_one_process(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    cmd = [
        *torchrun,
        "--master_port",
        str(_free_port()),
        str(ROOT / "tests/_ddp_worker.py"),
        str(tmp_path / "ddp"),
        "4",
        "1",
    ]
    (tmp_path / "ddp").mkdir()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"ddp/rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2], "torchrun did not give two processes"

    # One process, same global batch: 2 micro-batches of 4 instead of 2 ranks x 4.
    (tmp_path / "one").mkdir()
    run_worker(tmp_path / "one", 4, 2)
    # One process with half the global batch: must NOT match, or the comparison proves nothing.
    (tmp_path / "half").mkdir()
    run_worker(tmp_path / "half", 4, 1)

    ddp, one, half = (load_file(str(tmp_path / f"{d}/weights.safetensors")) for d in ("ddp", "one", "half"))
    init = {n: p.detach() for n, p in moe_model(seed=5).named_parameters()}
    assert ranks[0]["tokens"] == json.loads((tmp_path / "one/rank0.json").read_text())["tokens"]
    assert abs(ranks[0]["loss"] - json.loads((tmp_path / "one/rank0.json").read_text())["loss"]) < 1e-4
    assert _relative_gap(ddp, one, init) < 0.02
    assert _relative_gap(half, one, init) > 0.1
    # The anchor stays bit-exact under DDP too (DDP gives the parameters new storage; views
    # taken before the wrap would guard the old one while weight decay moved the new).
    for name in (n for n in init if n.endswith(("experts.gate_up_proj", "experts.down_proj", "gate.weight"))):
        assert torch.equal(ddp[name][0], init[name][0]), f"anchor slice {name}[0] moved under DDP"
