"""The one training loop: every stage (pretrain, midtrain, sft, rlvr, router) runs through here.

What differs between stages is data and loss (an :class:`~barkit.train.objectives.Objective`)
and the trainable set (``StageConfig.trainable`` or its kind's default, applied by
:func:`~barkit.train.freeze.select_trainable`). The loop does plain AdamW with warmup +
cosine, gradient accumulation and clipping, in the model's dtype, on accelerate so the same code
runs data-parallel under ``torchrun``. No autocast on CPU, and gradient checkpointing only when a
stage asks for it (``gradient_checkpointing``, for models that do not fit): both made small-model
training several times slower here.

Resuming is exact because nothing the loop does depends on hidden state other than what the
checkpoint stores: the learning rate is a function of the step, the data of the micro-batch
index, and the RNG is re-seeded from (seed, step, rank) at every step.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from barkit.errors import ArtifactError
from barkit.train.config import OptimConfig, StageConfig
from barkit.train.data import count_tokens
from barkit.train.freeze import AnchorGuard, OptimizerTensors, RowGuard, TrainPlan, select_trainable
from barkit.train.objectives import Objective

CHECKPOINT = "checkpoint"
METRICS = "metrics.jsonl"
StepCallback = Callable[[int, dict[str, float]], None]


@dataclass
class StageResult:
    """What a stage produced. ``history`` holds the logged metric lines; ``summary`` the
    stage-level figures (final loss, mean per-expert token fractions over all steps)."""

    model: nn.Module
    history: list[dict[str, float]]
    tokens: int
    seconds: float
    steps: int
    plan: TrainPlan
    summary: dict[str, float] = field(default_factory=dict)


def lr_at(step: int, total: int, optim: OptimConfig) -> float:
    """Learning rate for optimizer step ``step`` (0-based): linear warmup, then cosine or flat."""
    if optim.warmup_steps and step < optim.warmup_steps:
        return optim.lr * (step + 1) / optim.warmup_steps
    if optim.schedule == "constant":
        return optim.lr
    span = max(total - optim.warmup_steps, 1)
    progress = min((step - optim.warmup_steps) / span, 1.0)
    floor = optim.min_lr_ratio * optim.lr
    return floor + (optim.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _optimizer(
    tensors: OptimizerTensors, optim: OptimConfig, plan: TrainPlan
) -> tuple[torch.optim.AdamW, list[str]]:
    """AdamW over the trainable tensors (the anchor left out, see :class:`OptimizerTensors`);
    vectors (norms, biases) get no weight decay, as usual.

    Groups are keyed by (weight decay, lr scale); each group's ``lr_scale`` (read from the
    plan's tensor groups) multiplies the scheduled learning rate at every step.
    """
    keyed: dict[tuple[float, float], list[tuple[str, nn.Parameter]]] = {}
    for t in tensors.tensors:
        key = (
            optim.weight_decay if t.param.ndim >= 2 else 0.0,
            plan.lr_scale(t.parameter, optim.shared_lr_scale),
        )
        keyed.setdefault(key, []).append((t.name, t.param))
    order = sorted(keyed, key=lambda k: (-k[0], -k[1]))
    groups = [{"params": [p for _, p in keyed[k]], "weight_decay": k[0], "lr_scale": k[1]} for k in order]
    # fused AdamW measured fastest on CPU here (one kernel over all tensors).
    opt = torch.optim.AdamW(groups, lr=optim.lr, betas=optim.betas, eps=optim.eps, fused=True)
    return opt, [n for k in order for n, _ in keyed[k]]


def enable_activation_checkpointing(model: Any) -> None:
    """Turn on the model's own activation checkpointing, non-reentrant (frozen embeddings leave
    the layers' inputs without grad, which the reentrant form would silently drop)."""
    from barkit.errors import ConfigError

    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ConfigError(f"{type(model).__name__} does not support gradient checkpointing")
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers' newer name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    # transformers checkpoints only in training mode, which run_stage switches on for every stage


# ----------------------------------------------------------------------------- checkpoints


def _save_checkpoint(
    out_dir: Path, model: nn.Module, opt: torch.optim.Optimizer, names: list[str], state: dict[str, Any]
) -> None:
    """model + optimizer tensors as safetensors, the rest as JSON; written atomically."""
    from safetensors.torch import save_file, save_model

    from barkit.artifacts import atomic_dir

    opt_state = opt.state_dict()["state"]
    flat = {f"{i}.{k}": v.detach().cpu().contiguous() for i, s in opt_state.items() for k, v in s.items()}
    with atomic_dir(out_dir / CHECKPOINT) as tmp:
        save_model(model, str(tmp / "model.safetensors"))
        save_file(flat, str(tmp / "optimizer.safetensors"))
        (tmp / "trainer.json").write_text(json.dumps({**state, "param_names": names}, indent=1) + "\n")


def _load_checkpoint(
    folder: Path, model: nn.Module, opt: torch.optim.Optimizer, names: list[str]
) -> dict[str, Any]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file, load_model

    try:
        state: dict[str, Any] = json.loads((folder / "trainer.json").read_text())
        if state.get("param_names") != names:
            raise ArtifactError(f"{folder}: checkpoint was taken with a different trainable set")
        load_model(model, str(folder / "model.safetensors"), strict=True)
        flat = load_file(str(folder / "optimizer.safetensors"))
    except (OSError, json.JSONDecodeError, SafetensorError, RuntimeError) as e:
        raise ArtifactError(f"{folder}: unreadable checkpoint ({e})") from None
    per_param: dict[int, dict[str, torch.Tensor]] = {}
    for key, tensor in flat.items():
        index, _, name = key.partition(".")
        per_param.setdefault(int(index), {})[name] = tensor
    opt.load_state_dict({"state": per_param, "param_groups": opt.state_dict()["param_groups"]})
    return state


# ----------------------------------------------------------------------------- the loop


class _Stage:
    """One run of ``run_stage``: holds the moving parts so each piece stays a short method."""

    def __init__(
        self,
        model: nn.Module,
        cfg: StageConfig,
        objective: Objective,
        out_dir: Path,
        new_rows: Sequence[int] = (),
    ) -> None:
        from accelerate import Accelerator

        self.cfg, self.objective, self.out_dir = cfg, objective, out_dir
        # Without cpu=True accelerate ignores torchrun's WORLD_SIZE on a machine with no GPU
        # and every process trains alone (seen with accelerate 1.15).
        self.acc = Accelerator(cpu=not torch.cuda.is_available())
        self.log = self.acc.print
        # A kind's default set is lenient (a dense model has no router); explicit sets are strict.
        strict = cfg.trainable is not None
        patterns = cfg.trainable_patterns()
        self.plan = select_trainable(model, patterns, strict=strict, log=self.log, new_rows=new_rows)
        if cfg.gradient_checkpointing:
            enable_activation_checkpointing(model)
        self.inner = model.to(self.acc.device)
        self.model = self.acc.prepare_model(self.inner)
        # Snapshots and optimizer views after the move and the wrap: .to(device) and DDP both
        # give parameters new storage, and a view taken before would guard (or train) the old
        # one (under DDP weight decay moved the anchor that way, seen on torchrun gloo).
        self.guards = (AnchorGuard(model), RowGuard(model, self.plan))
        for what, guard in zip(("anchor", "pre-existing row"), self.guards, strict=True):
            if len(guard):
                self.log(f"{what} guard: {len(guard)} slices kept bit-identical")
        self.tensors = OptimizerTensors(self.inner, self.plan)
        held, whole = self.tensors.state_numel()
        if held < whole:
            self.log(f"optimizer: {held:,} of {whole:,} trainable parameters (the anchor holds no state)")
        self.opt, self.names = _optimizer(self.tensors, cfg.optim, self.plan)
        self.params = self.tensors.params
        # tokens/seconds of earlier sessions (from a checkpoint) plus this session's
        self.step, self.tokens, self.seconds = 0, 0, 0.0
        self.tokens_this_run = 0
        self.started = time.perf_counter()
        self.history: list[dict[str, float]] = []
        self.sums: dict[str, float] = {}

    @property
    def main(self) -> bool:
        return bool(self.acc.is_main_process)

    def resume(self) -> None:
        folder = self.out_dir / CHECKPOINT
        if not (folder / "trainer.json").is_file():
            self.log(f"resume: no checkpoint in {self.out_dir}; starting at step 0")
            return
        state = _load_checkpoint(folder, self.inner, self.opt, self.names)
        self.step, self.tokens, self.seconds = state["step"], state["tokens"], state["seconds"]
        self.sums = state.get("sums", {})
        self.history = [h for h in _read_metrics(self.out_dir) if h["step"] <= self.step]
        self.log(f"resume: continuing from step {self.step}")

    def checkpoint(self) -> None:
        tokens = self._global_tokens()
        if self.main:
            state = {"step": self.step, "tokens": tokens, "seconds": self.elapsed(), "sums": self.sums}
            state["seed"] = self.cfg.seed
            _save_checkpoint(self.out_dir, self.inner, self.opt, self.names, state)
        self.acc.wait_for_everyone()

    def _global_tokens(self) -> int:
        # self.tokens is global after a resume; only the tokens of this session are per rank
        local = torch.tensor(float(self.tokens_this_run), device=self.acc.device)
        return int(self.acc.reduce(local, "sum").item()) + self.tokens

    def elapsed(self) -> float:
        return self.seconds + time.perf_counter() - self.started

    def micro_step(self, micro: int) -> dict[str, float]:
        cfg, acc = self.cfg, self.acc
        index = (self.step * cfg.grad_accum + micro) * acc.num_processes + acc.process_index
        batch = {k: v.to(acc.device) for k, v in self.objective.batch(index).items()}
        self.tokens_this_run += (
            count_tokens(batch) if "attention_mask" in batch else batch["input_ids"].numel()
        )
        last = micro == cfg.grad_accum - 1
        sync = contextlib.nullcontext() if last else acc.no_sync(self.model)
        with sync:
            loss, metrics = self.objective.loss(self.model, batch)
            acc.backward(loss / cfg.grad_accum)
        metrics["loss"] = float(loss.detach())
        return metrics

    def optimizer_step(self) -> float:
        lr = lr_at(self.step, self.cfg.steps, self.cfg.optim)
        for group in self.opt.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        for guard in self.guards:
            guard.zero_grads()
        self.tensors.sync_grads()
        clip = self.cfg.optim.grad_clip
        norm = torch.nn.utils.clip_grad_norm_(self.params, clip if clip is not None else float("inf"))
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.tensors.clear_grads()
        # The anchor is outside the optimizer; the guards still restore their snapshots, so that
        # a bit-exact anchor (and RowGuard's rows, which do train) never rests on that alone.
        for guard in self.guards:
            guard.restore()
        return float(norm)

    def train_step(self) -> dict[str, float]:
        torch.manual_seed((self.cfg.seed * 1_000_003 + self.step) * 1024 + self.acc.process_index)
        per_micro = [self.micro_step(m) for m in range(self.cfg.grad_accum)]
        metrics = {k: sum(m[k] for m in per_micro) / len(per_micro) for k in per_micro[0]}
        metrics["grad_norm"] = self.optimizer_step()
        metrics["lr"] = self.opt.param_groups[0]["lr"]
        for k, v in metrics.items():
            if k.startswith("expert_frac/") or k == "aux_loss":
                self.sums[k] = self.sums.get(k, 0.0) + v
        self.step += 1
        return metrics

    def record(self, metrics: dict[str, float]) -> dict[str, float]:
        """Average the step's metrics over ranks and append them to metrics.jsonl."""
        keys = sorted(metrics)
        values = torch.tensor([metrics[k] for k in keys], dtype=torch.float64, device=self.acc.device)
        mean = self.acc.reduce(values, "mean").tolist() if self.acc.num_processes > 1 else values.tolist()
        line: dict[str, float] = {"step": self.step, **dict(zip(keys, mean, strict=True))}
        line["tokens"] = self._global_tokens()
        elapsed = self.elapsed()
        line["seconds"] = round(elapsed, 3)
        line["tokens_per_s"] = round(line["tokens"] / max(elapsed, 1e-9), 1)
        self.history.append(line)
        if self.main:
            with open(self.out_dir / METRICS, "a") as f:
                f.write(json.dumps(line) + "\n")
        return line


def _read_metrics(out_dir: Path) -> list[dict[str, float]]:
    path = out_dir / METRICS
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _rewrite_metrics(out_dir: Path, history: list[dict[str, float]]) -> None:
    """Keep metrics.jsonl consistent with the checkpoint a resumed run continues from."""
    from barkit.artifacts import atomic_write_text

    atomic_write_text(out_dir / METRICS, "".join(json.dumps(h) + "\n" for h in history))


def run_stage(
    model: nn.Module,
    tokenizer: Any,
    cfg: StageConfig,
    objective: Objective,
    out_dir: str | os.PathLike[str],
    *,
    resume: bool = False,
    progress: bool = True,
    on_step: StepCallback | None = None,
    new_rows: Sequence[int] = (),
) -> StageResult:
    """Train ``model`` in place for one stage and return it with its metrics.

    Writes ``out_dir/metrics.jsonl`` (one line per ``log_every`` steps) and a resumable
    ``out_dir/checkpoint/`` every ``checkpoint_every`` steps and at the end. With
    ``resume=True`` a run continues from that checkpoint and ends bit-identical to an
    uninterrupted one. ``on_step(step, metrics)`` runs after each step (after its checkpoint).
    ``tokenizer`` is accepted so objectives that generate (RL) share the loop's signature; the
    loop itself does not use it. ``new_rows`` are the ids of the tokens the stage added: the
    only rows that ``embeddings:new`` / ``lm_head:new`` train.
    """
    from tqdm.auto import tqdm

    del tokenizer
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stage = _Stage(model, cfg, objective, out, new_rows)
    if resume:
        stage.resume()
    if stage.main:
        _rewrite_metrics(out, stage.history)
    stage.started = time.perf_counter()
    # from_pretrained hands models over in eval mode; a model's own dropout (or router jitter)
    # belongs to training, as under transformers' Trainer. barkit's own models have neither.
    was_training = model.training
    model.train()
    bar = tqdm(total=cfg.steps, initial=stage.step, desc=cfg.kind, disable=not (progress and stage.main))
    while stage.step < cfg.steps:
        metrics = stage.train_step()
        if stage.step % cfg.log_every == 0 or stage.step == cfg.steps:
            stage.record(metrics)
        bar.update(1)
        bar.set_postfix(loss=f"{metrics['loss']:.3f}")
        if cfg.checkpoint_every and stage.step % cfg.checkpoint_every == 0 and stage.step < cfg.steps:
            stage.checkpoint()
        if on_step is not None:
            on_step(stage.step, metrics)
    bar.close()
    model.train(was_training)
    stage.checkpoint()
    return _result(stage)


def _result(stage: _Stage) -> StageResult:
    steps_run = max(stage.step, 1)
    counts = torch.tensor([stage.sums.get(k, 0.0) for k in sorted(stage.sums)], dtype=torch.float64)
    if stage.acc.num_processes > 1 and len(counts):
        counts = stage.acc.reduce(counts.to(stage.acc.device), "mean").cpu()
    summary = {f"mean_{k}": v / steps_run for k, v in zip(sorted(stage.sums), counts.tolist(), strict=True)}
    last = stage.history[-1] if stage.history else {}
    summary.update({"final_loss": last.get("loss", float("nan")), "steps": float(stage.step)})
    tokens = stage.history[-1]["tokens"] if stage.history else stage.tokens
    seconds = stage.elapsed()
    return StageResult(
        stage.inner, stage.history, int(tokens), float(seconds), stage.step, stage.plan, summary
    )
