"""What trains, and the anchor guarantee: frozen means bit-identical, whatever the optimizer does."""

from __future__ import annotations

import pytest
import torch

from _train_micro import dense_model, moe_model, random_rows
from barkit.errors import BarkitError
from barkit.families import family_of
from barkit.train.config import OptimConfig, StageConfig
from barkit.train.freeze import AnchorGuard, select_trainable
from barkit.train.loop import run_stage
from barkit.train.objectives import PackedObjective


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_groups_and_globs_set_requires_grad() -> None:
    model = moe_model()
    lines: list[str] = []
    plan = select_trainable(model, ["router", "model.layers.0.self_attn.q_proj.*"], log=lines.append)
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained == set(plan.trainable)
    assert trained == {
        "model.layers.0.mlp.gate.weight",
        "model.layers.1.mlp.gate.weight",
        "model.layers.0.self_attn.q_proj.weight",
    }
    assert plan.per_pattern["router"] == (2, 2 * 2 * 32)
    assert any(line.startswith("trainable router: 2 tensors") for line in lines)
    assert any("trainable total: 3 tensors" in line for line in lines)


def test_dense_groups_map_expert_to_the_mlp() -> None:
    model = dense_model()
    plan = select_trainable(model, ["expert"])
    assert plan.trainable and all(".mlp." in n for n in plan.trainable)


@pytest.mark.parametrize("pattern", ["experts", "model.layers.*.mlp.nothing*"])
def test_pattern_that_matches_nothing_is_refused(pattern: str) -> None:
    with pytest.raises(BarkitError, match=pattern.replace("*", r"\*")):
        select_trainable(moe_model(), ["expert", pattern])


def test_router_group_on_a_dense_model_is_refused() -> None:
    with pytest.raises(BarkitError, match="'router'"):
        select_trainable(dense_model(), ["router"])


def test_weight_decay_moves_zero_grad_params_without_the_guard() -> None:
    """Why the guard exists: AdamW decays a parameter even when its gradient is zero."""
    model = moe_model()
    param = model.model.layers[0].mlp.experts.down_proj
    before = param.detach().clone()
    opt = torch.optim.AdamW([param], lr=0.1, weight_decay=0.5)
    param.grad = torch.zeros_like(param)
    opt.step()
    assert not torch.equal(param[0], before[0])


@pytest.mark.parametrize("arch", ["olmo2", "llama"])
@pytest.mark.parametrize("trainable", [["expert", "router"], ["*"]])
def test_anchor_bit_identical_after_training(arch: str, trainable: list[str], tmp_path) -> None:
    model = moe_model(arch)
    before = _snapshot(model)
    anchors = {n: v.detach().clone() for n, v in family_of(model).anchor_slices(model)}
    optim = OptimConfig(lr=0.05, weight_decay=0.3, warmup_steps=0, schedule="constant", grad_clip=1.0)
    cfg = StageConfig(kind="midtrain", steps=4, batch_size=4, seq_len=32, optim=optim, trainable=trainable)
    objective = PackedObjective(random_rows(), cfg.batch_size, cfg.seed, aux_loss_coef=0.1)
    result = run_stage(model, None, cfg, objective, tmp_path, progress=False)
    after = dict(result.model.named_parameters())
    for name, view in family_of(model).anchor_slices(model):
        assert torch.equal(view, anchors[name]), f"anchor slice {name} moved"
    for name in result.plan.frozen:
        assert torch.equal(after[name], before[name]), f"frozen {name} moved"
    down = "model.layers.0.mlp.experts.down_proj"
    assert not torch.equal(after[down][1], before[down][1]), "trainable expert 1 did not move"
    router = "model.layers.1.mlp.gate.weight"
    assert not torch.equal(after[router][1], before[router][1]), "router row 1 did not move"
    if trainable == ["*"]:
        assert not torch.equal(after["model.embed_tokens.weight"], before["model.embed_tokens.weight"])


def test_guard_zeroes_only_the_anchor_gradient() -> None:
    model = moe_model()
    guard = AnchorGuard(model)
    assert len(guard) == 6  # 2 layers x (gate_up, down, router row)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    guard.zero_grads()
    experts = model.model.layers[0].mlp.experts
    assert experts.gate_up_proj.grad[0].abs().sum() == 0
    assert torch.all(experts.gate_up_proj.grad[1] == 1)
    gate = model.model.layers[0].mlp.gate.weight
    assert gate.grad[0].abs().sum() == 0 and torch.all(gate.grad[1] == 1)


@pytest.mark.parametrize("arch", ["olmo2", "llama"])
def test_optimizer_holds_no_state_for_the_anchor(arch: str, tmp_path) -> None:
    """The fused tensors reach AdamW as views of rows 1: (storage shared): expert 1 trains in
    place, and the anchor has neither moment buffers nor updates."""
    from barkit.train.freeze import OptimizerTensors
    from barkit.train.loop import _optimizer

    model = moe_model(arch)
    plan = select_trainable(model, ["expert", "router", "embeddings"])
    tensors = OptimizerTensors(model, plan)
    views = [t for t in tensors.tensors if t.owner is not None]
    assert len(views) == 3 * 2 and all(t.name == f"{t.parameter}[1:]" for t in views)
    for t in views:
        assert t.param.data_ptr() == t.owner[1:].data_ptr() and t.param.shape == t.owner[1:].shape
    held, whole = tensors.state_numel()
    anchor = sum(v.numel() for _, v in family_of(model).anchor_slices(model))
    assert whole - held == anchor

    optim = OptimConfig(lr=0.05, weight_decay=0.3, warmup_steps=0, schedule="constant", grad_clip=1.0)
    cfg = StageConfig(kind="midtrain", steps=2, batch_size=4, seq_len=32, optim=optim)
    opt, names = _optimizer(tensors, optim, plan)
    assert "model.layers.0.mlp.experts.down_proj[1:]" in names
    model.train()
    before = model.model.layers[0].mlp.experts.down_proj.detach().clone()
    objective = PackedObjective(random_rows(), cfg.batch_size, cfg.seed)
    objective.loss(model, objective.batch(0))[0].backward()
    tensors.sync_grads()
    opt.step()
    after = model.model.layers[0].mlp.experts.down_proj
    assert torch.equal(after[0], before[0]) and not torch.equal(after[1], before[1])
    state = sum(s["exp_avg"].numel() + s["exp_avg_sq"].numel() for s in opt.state.values())
    assert state == 2 * held
