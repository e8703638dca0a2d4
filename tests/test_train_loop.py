"""The training loop, objectives, data mixing/packing and stage configs."""

from __future__ import annotations

import json
import math

import pytest
import torch

from _train_micro import dense_model, moe_model, random_rows
from barkit.errors import ConfigError
from barkit.train.config import OptimConfig, StageConfig, default_stage, validate_stage
from barkit.train.data import RowSampler, mix_general, pack_examples, pack_stream
from barkit.train.kinds import get_kind
from barkit.train.loop import lr_at, run_stage
from barkit.train.objectives import PackedObjective, SFTObjective, next_token_loss, router_stats

# ----------------------------------------------------------------------------- config


def test_default_trainable_follows_progressive_unfreezing() -> None:
    assert default_stage("midtrain", "micro").trainable_patterns() == ["expert", "router"]
    assert default_stage("sft", "micro").trainable_patterns() == ["expert", "router", "embeddings", "lm_head"]
    assert default_stage("router", "micro").trainable_patterns() == ["router"]
    assert get_kind("rlvr").trainable == get_kind("pretrain").trainable == ("*",)
    assert default_stage("sft", "tiny", steps=7).steps == 7


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"kind": "sft", "steps": 3, "bogus": 1}, "bogus"),
        ({"kind": "finetune", "steps": 3}, "kind"),
        ({"kind": "sft", "steps": 0}, "steps"),
        ({"kind": "sft", "steps": 3, "general_mix": 1.5}, "general_mix"),
    ],
)
def test_bad_stage_config_names_the_field(fields: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        validate_stage(fields)


def test_unknown_preset_is_refused() -> None:
    with pytest.raises(ConfigError, match="huge"):
        default_stage("sft", "huge")


def test_lr_schedule_warmup_then_cosine() -> None:
    optim = OptimConfig(lr=1.0, warmup_steps=4, min_lr_ratio=0.1)
    lrs = [lr_at(s, 20, optim) for s in range(20)]
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0]
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:], strict=False))
    assert math.isclose(lr_at(20, 20, optim), 0.1)
    assert lr_at(10, 20, OptimConfig(lr=0.3, schedule="constant")) == 0.3


# ----------------------------------------------------------------------------- data


def test_mix_general_hits_the_ratio_and_is_deterministic() -> None:
    domain, general = [f"d{i}" for i in range(70)], [f"g{i}" for i in range(500)]
    mixed = mix_general(domain, general, 0.3, seed=1)
    assert sum(x.startswith("g") for x in mixed) == 30 and len(mixed) == 100
    assert mixed == mix_general(domain, general, 0.3, seed=1)
    assert mixed != mix_general(domain, general, 0.3, seed=2)
    assert mix_general(domain, general, 0.0, seed=1) != domain  # shuffled, same items
    assert sorted(mix_general(domain, general, 0.0, seed=1)) == sorted(domain)


def test_pack_examples_keeps_examples_whole() -> None:
    examples = [([5] * 5, [0, 0, 1, 1, 1]), ([6] * 4, [0, 1, 1, 1]), ([7] * 6, [1] * 6)]
    packed = pack_examples(examples, seq_len=10, pad_id=0)
    assert packed.input_ids.tolist() == [[5] * 5 + [6] * 4 + [0], [7] * 6 + [0] * 4]
    assert packed.loss_mask.tolist()[0] == [0, 0, 1, 1, 1, 0, 1, 1, 1, 0]
    assert packed.attention_mask.sum().item() == 15


def test_pack_stream_cuts_fixed_rows() -> None:
    packed = pack_stream([list(range(10)), list(range(10, 25))], seq_len=8)
    assert packed.input_ids.shape == (3, 8) and packed.input_ids[2, -1].item() == 23


def test_row_sampler_covers_every_row_each_epoch() -> None:
    sampler = RowSampler(10, 5, seed=3)
    first_epoch = sampler.indices(0) + sampler.indices(1)
    assert sorted(first_epoch) == list(range(10))
    assert sampler.indices(2) + sampler.indices(3) != first_epoch
    assert RowSampler(10, 5, seed=3).indices(3) == sampler.indices(3)


# ----------------------------------------------------------------------------- objectives


def test_loss_ignores_positions_outside_the_mask() -> None:
    logits = torch.randn(1, 6, 11)
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    mask = torch.tensor([[0, 0, 0, 1, 1, 0]])
    changed = ids.clone()
    changed[0, 5] = 9  # a target outside the mask
    assert torch.equal(next_token_loss(logits, ids, mask), next_token_loss(logits, changed, mask))
    manual = torch.nn.functional.cross_entropy(logits[0, 2:4], ids[0, 3:5])
    assert torch.allclose(next_token_loss(logits, ids, mask), manual)


def test_sft_objective_trains_on_assistant_tokens_only() -> None:
    from barkit.tokenizer import train_tokenizer

    texts = ["the cat sat on the mat", "what is two plus two", "four is the answer"] * 20
    tok = train_tokenizer(300, texts=texts)
    convs = [
        [{"role": "user", "content": "what is two plus two"}, {"role": "assistant", "content": "four"}]
    ] * 3
    cfg = StageConfig(kind="sft", steps=1, batch_size=2, seq_len=64)
    objective = SFTObjective.from_conversations(tok, cfg, convs)
    batch = objective.batch(0)
    row, mask = batch["input_ids"][0], batch["loss_mask"][0]
    assert tok.decode(row[mask.bool()].tolist()).replace("</s>", "|") == "four|four|four|"


def test_router_stats_match_transformers_aux_loss() -> None:
    model = moe_model(experts=3, top_k=1, seed=4)
    with torch.no_grad():
        model.model.layers[0].mlp.gate.weight.normal_(0, 1.0)
        ids = torch.randint(3, 300, (2, 16))
        out = model(input_ids=ids, output_router_logits=True)
    aux, fractions = router_stats(out.router_logits, 3, 1, None)
    assert torch.allclose(aux, out.aux_loss, atol=1e-6)
    assert math.isclose(float(fractions.sum()), 1.0, rel_tol=1e-6)
    assert not torch.allclose(fractions, torch.full((3,), 1 / 3))


def test_aux_loss_changes_the_loss_only_when_on() -> None:
    model = moe_model(experts=3, top_k=1, seed=4)
    batch = PackedObjective(random_rows(), 4, 0).batch(0)
    off, m_off = PackedObjective(random_rows(), 4, 0, aux_loss_coef=0.0).loss(model, batch)
    on, m_on = PackedObjective(random_rows(), 4, 0, aux_loss_coef=0.5).loss(model, batch)
    assert m_on["aux_loss"] > 0 and {"expert_frac/0", "expert_frac/2"} <= set(m_on)
    assert torch.allclose(on - off, torch.tensor(0.5 * m_on["aux_loss"]), atol=1e-5)
    # None defers to the model config's coefficient (set by the family to a non-zero value).
    default, _ = PackedObjective(random_rows(), 4, 0).loss(model, batch)
    assert torch.allclose(default - off, torch.tensor(model.config.router_aux_loss_coef * m_on["aux_loss"]))


def test_router_stats_leave_padding_out() -> None:
    logits = (torch.tensor([[5.0, 0.0], [5.0, 0.0], [0.0, 5.0], [0.0, 5.0]]),)
    _, fractions = router_stats(logits, 2, 1, torch.tensor([[1, 1, 1, 0]]))
    assert torch.allclose(fractions, torch.tensor([2 / 3, 1 / 3]))


# ----------------------------------------------------------------------------- loop


def test_loop_lowers_loss_and_writes_metrics(tmp_path) -> None:
    model = dense_model()
    optim = OptimConfig(lr=2e-2, warmup_steps=2)
    cfg = StageConfig(kind="pretrain", steps=24, batch_size=4, seq_len=32, optim=optim, log_every=4)
    objective = PackedObjective(random_rows(), cfg.batch_size, cfg.seed)
    result = run_stage(model, None, cfg, objective, tmp_path, progress=False)
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [4, 8, 12, 16, 20, 24]
    assert lines[-1]["loss"] < lines[0]["loss"] - 0.5
    assert result.tokens == 24 * 4 * 32 == lines[-1]["tokens"]
    assert result.steps == 24 and result.seconds > 0
    assert (tmp_path / "checkpoint" / "model.safetensors").is_file()


def test_loop_trains_in_training_mode_and_restores_the_mode(tmp_path) -> None:
    """A model arrives from from_pretrained in eval mode: its own dropout must still train."""
    model = dense_model().eval()
    cfg = StageConfig(kind="pretrain", steps=2, batch_size=2, seq_len=32)
    objective = PackedObjective(random_rows(), cfg.batch_size, cfg.seed)
    seen: list[bool] = []
    real_loss = objective.loss

    def loss(m, batch):  # type: ignore[no-untyped-def]
        seen.append(m.training)
        return real_loss(m, batch)

    objective.loss = loss  # type: ignore[method-assign]
    run_stage(model, None, cfg, objective, tmp_path, progress=False)
    assert seen == [True, True] and not model.training


def test_loop_logs_expert_fractions_for_moe(tmp_path) -> None:
    model = moe_model(experts=3, top_k=1)
    cfg = StageConfig(kind="midtrain", steps=3, batch_size=2, seq_len=32, aux_loss_coef=0.01)
    objective = PackedObjective(random_rows(pad_tail=4), cfg.batch_size, cfg.seed, cfg.aux_loss_coef)
    result = run_stage(model, None, cfg, objective, tmp_path, progress=False)
    fractions = [result.summary[f"mean_expert_frac/{i}"] for i in range(3)]
    assert math.isclose(sum(fractions), 1.0, rel_tol=1e-6)
    assert "aux_loss" in result.history[-1] and "mean_aux_loss" in result.summary
    assert result.tokens == 3 * 2 * 28  # padding not counted


def test_weight_shares_follow_the_router_when_all_experts_are_selected() -> None:
    """With top-k = all experts, selection counts are uniform; weight shares are not."""
    from barkit.train.objectives import weight_shares

    logits = [torch.tensor([[2.0, 0.0], [2.0, 0.0], [0.0, 0.0]])]
    _, fractions = router_stats(logits, 2, 2, None)
    assert torch.allclose(fractions, torch.tensor([0.5, 0.5]))
    shares = weight_shares(logits, 2, torch.tensor([[1, 1, 0]]))
    expected = torch.softmax(torch.tensor([2.0, 0.0]), dim=0)
    assert torch.allclose(shares, expected)


def test_next_token_loss_is_zero_not_nan_without_targets() -> None:
    logits = torch.randn(2, 5, 11, requires_grad=True)
    ids = torch.randint(0, 11, (2, 5))
    loss = next_token_loss(logits, ids, torch.zeros(2, 5, dtype=torch.long))
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert logits.grad is not None and not torch.isnan(logits.grad).any()


def test_shared_lr_scale_slows_only_shared_tensors(tmp_path) -> None:
    """With shared_lr_scale, an MoE's shared tensors get the scaled rate; experts and router the full one."""
    from barkit.families import family_of

    model = moe_model("olmo2")
    cfg = StageConfig(
        kind="sft",
        steps=1,
        batch_size=2,
        seq_len=32,
        trainable=["*"],
        optim=OptimConfig(lr=1e-2, shared_lr_scale=0.1, grad_clip=None),
    )
    result = run_stage(model, None, cfg, PackedObjective(random_rows(8), 2, 0), tmp_path, progress=False)
    from barkit.train.freeze import OptimizerTensors
    from barkit.train.loop import _optimizer

    tensors = OptimizerTensors(model, result.plan)
    opt, _ = _optimizer(tensors, cfg.optim, result.plan)
    family = family_of(model)
    scales = {id(p): g["lr_scale"] for g in opt.param_groups for p in g["params"]}
    assert len(tensors.tensors) == len(list(model.parameters()))
    for t in tensors.tensors:
        expected = 1.0 if family.tensor_group(t.parameter) in ("expert", "router") else 0.1
        assert scales[id(t.param)] == expected, t.name
    assert default_stage("sft", "tiny").optim.shared_lr_scale == 0.1  # small-model deviation, see config
    assert default_stage("midtrain", "tiny").optim.shared_lr_scale == 1.0
