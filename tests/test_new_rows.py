"""``embeddings:new`` / ``lm_head:new``: the added tokens' rows train, every other row stays
bit-identical (frozen means bit-identical, whatever AdamW's decay and momentum do)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from _train_micro import VOCAB, dense_config, moe_model
from barkit.errors import BarkitError, ConfigError
from barkit.train.config import OptimConfig, StageConfig
from barkit.train.data import PackedData
from barkit.train.freeze import kept_row_ranges, select_trainable
from barkit.train.loop import run_stage
from barkit.train.objectives import PackedObjective
from barkit.train.stages import resolve_stage

NEW = [VOCAB, VOCAB + 1]


def _grown(model: torch.nn.Module) -> torch.nn.Module:
    """The model with two added token rows, as ``add_special_tokens`` leaves it."""
    model.resize_token_embeddings(VOCAB + len(NEW), mean_resizing=False)  # type: ignore[operator]
    return model


def _rows_with_new_tokens(n: int = 16, seq_len: int = 24) -> PackedData:
    """Rows where the new tokens appear in the input and as targets."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, VOCAB, (n, seq_len), generator=g)
    ids[:, ::4] = NEW[0]
    ids[:, 2::4] = NEW[1]
    ones = torch.ones_like(ids)
    return PackedData(ids, ones.clone(), ones)


def _train(model: torch.nn.Module, trainable: list[str], tmp_path: Path) -> dict[str, torch.Tensor]:
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optim = OptimConfig(lr=0.05, weight_decay=0.5, warmup_steps=0, schedule="constant")
    cfg = StageConfig(kind="sft", steps=3, batch_size=4, seq_len=24, optim=optim, trainable=trainable)
    objective = PackedObjective(_rows_with_new_tokens(), cfg.batch_size, cfg.seed)
    run_stage(model, None, cfg, objective, tmp_path, progress=False, new_rows=NEW)
    return before


EMBED, HEAD = "model.embed_tokens.weight", "lm_head.weight"


@pytest.mark.parametrize(
    ("trainable", "moving"),
    [(["embeddings:new", "lm_head:new"], {EMBED, HEAD}), (["expert", "embeddings:new"], {EMBED})],
)
def test_only_new_rows_move(trainable: list[str], moving: set[str], tmp_path: Path) -> None:
    model = _grown(moe_model("llama"))
    before = _train(model, trainable, tmp_path)
    after = dict(model.named_parameters())
    for name in (EMBED, HEAD):
        assert torch.equal(after[name][:VOCAB], before[name][:VOCAB]), f"an old row of {name} moved"
        assert (not torch.equal(after[name][VOCAB:], before[name][VOCAB:])) == (name in moving), name
    for name, old in before.items():
        if name not in (EMBED, HEAD) and ".experts." not in name:
            assert torch.equal(after[name], old), f"frozen {name} moved"


def _tied() -> torch.nn.Module:
    from transformers import LlamaForCausalLM

    config = dense_config("llama")
    config.tie_word_embeddings = True
    torch.manual_seed(0)
    return _grown(LlamaForCausalLM(config))


def test_tied_head_resolves_to_the_embedding_once(tmp_path: Path) -> None:
    for trainable in (["lm_head:new"], ["embeddings:new", "lm_head:new"]):
        plan = select_trainable(_tied(), trainable, new_rows=NEW)
        assert plan.trainable == [EMBED] and plan.only_rows == {EMBED: tuple(NEW)}
    model = _tied()
    before = _train(model, ["lm_head:new"], tmp_path)
    weight = model.get_parameter(EMBED)
    assert torch.equal(weight[:VOCAB], before[EMBED][:VOCAB])
    assert not torch.equal(weight[VOCAB:], before[EMBED][VOCAB:])


def test_whole_selection_wins_and_counts() -> None:
    model = _grown(moe_model("llama"))
    plan = select_trainable(model, ["embeddings:new", "embeddings"], new_rows=NEW)
    assert plan.only_rows == {}
    plan = select_trainable(model, ["embeddings:new"], new_rows=NEW)
    assert plan.per_pattern["embeddings:new"] == (1, 2 * 32)
    assert plan.parameter_count(model)[0] == 2 * 32
    assert kept_row_ranges(6, [2, 5]) == [(0, 2), (3, 5)]
    assert kept_row_ranges(3, []) == [(0, 3)]


def test_refusals() -> None:
    model = _grown(moe_model("llama"))
    with pytest.raises(BarkitError, match="only embeddings, lm_head"):
        select_trainable(model, ["expert:new"], new_rows=NEW)
    with pytest.raises(BarkitError, match="adds no token"):
        select_trainable(model, ["embeddings:new"])
    with pytest.raises(ConfigError, match="embeddings:new"):
        resolve_stage("sft", "math", "micro", overrides={"trainable": ["expert", "embeddings:new"]})
    plan = resolve_stage("sft", "tool_use", "micro", overrides={"trainable": ["expert", "lm_head:new"]})
    assert plan.special_tokens and plan.cfg.trainable == ["expert", "lm_head:new"]
