"""Tied embeddings (SmolLM2, Llama 3.2 1B/3B, small Qwen3 models): the LM head *is* the input
embedding, so the one tensor belongs to both groups, trains once and merges once.

Micro Llama and Qwen3 branches, tied and untied: the default SFT set (which names ``lm_head``)
trains the tied tensor with the anchor bit-exact, and a merge of two tied experts that added
different special tokens averages the tied tensor once, unites the vocabularies, writes no
separate LM head and loads and generates with plain transformers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

import micro
from _train_micro import random_rows
from barkit.artifacts import read_manifest, write_manifest
from barkit.families import family_of, use_trainable_experts
from barkit.merge import merge
from barkit.tokenizer import train_tokenizer
from barkit.train.config import OptimConfig, StageConfig
from barkit.train.freeze import select_trainable
from barkit.train.loop import run_stage
from barkit.train.objectives import PackedObjective
from barkit.vocab import add_special_tokens

EMBED, HEAD = "model.embed_tokens.weight", "lm_head.weight"
CASES = [("llama", True), ("llama", False), ("qwen3", True), ("qwen3", False)]


def _branch(arch: str, tied: bool, **config: Any) -> Any:
    dense = micro.dense_model(arch, tie_word_embeddings=tied, max_position_embeddings=64, **config)
    moe = micro.branch_of(dense)
    use_trainable_experts(moe, "eager")
    return moe


@pytest.mark.parametrize(("arch", "tied"), CASES)
def test_default_sft_set_trains_the_tied_tensor_once(arch: str, tied: bool, tmp_path: Path) -> None:
    model = _branch(arch, tied)
    assert (HEAD not in dict(model.named_parameters())) is tied
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    anchors = {n: v.detach().clone() for n, v in family_of(model).anchor_slices(model)}
    optim = OptimConfig(lr=0.02, weight_decay=0.1, warmup_steps=0, schedule="constant")
    cfg = StageConfig(kind="sft", steps=3, batch_size=4, seq_len=32, optim=optim)
    objective = PackedObjective(random_rows(), cfg.batch_size, cfg.seed, aux_loss_coef=0.0)
    result = run_stage(model, None, cfg, objective, tmp_path, progress=False)
    plan = result.plan
    vocab = {EMBED} if tied else {EMBED, HEAD}
    assert vocab <= set(plan.trainable) and len(plan.trainable) == len(set(plan.trainable))
    assert plan.per_pattern["lm_head"] == (1, before[EMBED if tied else HEAD].numel())
    after = dict(result.model.named_parameters())
    for name in vocab:
        assert not torch.equal(after[name], before[name]), f"{name} did not move"
    if tied:
        assert result.model.get_output_embeddings().weight is after[EMBED]
    for name, view in family_of(model).anchor_slices(model):
        assert torch.equal(view, anchors[name]), f"anchor slice {name} moved"
    for name in plan.frozen:
        assert torch.equal(after[name], before[name]), f"frozen {name} moved"


def test_tied_lm_head_group_alone_and_explicit() -> None:
    model = _branch("qwen3", True)
    assert select_trainable(model, ["lm_head"]).trainable == [EMBED]
    assert select_trainable(model, ["embeddings", "lm_head"], strict=True).trainable == [EMBED]


# ---------------------------------------------------------------------------- merge

CORPUS = ["the cat sat on the mat", "2 + 3 = 5", "def f(x): return x", "hello world"] * 4


def _expert(dense: Any, base: Path, tokens: list[str], seed: int, out: Path, fingerprint: str) -> Path:
    """A branch that added ``tokens`` and then moved its expert 1 and every shared tensor."""
    moe, tok = micro.branch_of(dense), AutoTokenizer.from_pretrained(base)
    add_special_tokens(moe, tok, tokens)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in moe.named_parameters():
            if "mlp.experts" in name or name.endswith("mlp.gate.weight"):
                p[1] += 0.05 * torch.randn(p[1].shape, generator=g)
            else:
                p += 0.01 * torch.randn(p.shape, generator=g)
    moe.save_pretrained(out)
    tok.save_pretrained(out)
    write_manifest(out, {"stage": "sft", "domain": out.name, "base_fingerprint": fingerprint})
    return out


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as h:
            out |= {k: h.get_tensor(k) for k in h.keys()}  # noqa: SIM118 - safe_open has no iteration
    return out


@pytest.mark.parametrize(("arch", "cls"), [("llama", "MixtralForCausalLM"), ("qwen3", "Qwen3MoeForCausalLM")])
def test_merge_of_tied_experts_averages_the_tied_tensor_once(arch: str, cls: str, tmp_path: Path) -> None:
    tok = train_tokenizer(300, texts=CORPUS)
    dense = micro.dense_model(arch, tokenizer=tok, tie_word_embeddings=True, max_position_embeddings=64)
    base = tmp_path / "base"
    dense.save_pretrained(base)
    tok.save_pretrained(base)
    write_manifest(base, {"stage": "base"})
    fp = read_manifest(base)["fingerprint"]
    tools = _expert(dense, base, ["<tool_call>", "</tool_call>"], 1, tmp_path / "tools", fp)
    think = _expert(dense, base, ["<think>"], 2, tmp_path / "think", fp)
    merge([tools, think], tmp_path / "merged", progress=False)

    a, b, out = _tensors(tools), _tensors(think), _tensors(tmp_path / "merged")
    assert HEAD not in a and HEAD not in out, "a tied checkpoint holds no separate LM head"
    n = len(tok)
    mean = torch.stack([a[EMBED][:n], b[EMBED][:n]]).double().mean(0).float()
    assert torch.equal(out[EMBED][:n], mean), "the tied tensor is not the mean of the experts'"
    assert out[EMBED].shape[0] == n + 3
    assert torch.equal(out[EMBED][n : n + 2], a[EMBED][n : n + 2])  # only 'tools' has them
    assert torch.equal(out[EMBED][n + 2], b[EMBED][n])

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    assert type(model).__name__ == cls and model.config.tie_word_embeddings is True
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert torch.equal(model.get_input_embeddings().weight.detach(), out[EMBED])
    merged_tok = AutoTokenizer.from_pretrained(tmp_path / "merged")
    assert merged_tok.convert_tokens_to_ids(["<tool_call>", "</tool_call>", "<think>"]) == [n, n + 1, n + 2]
    ids = merged_tok("the cat <think>", return_tensors="pt").input_ids
    gen = model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=merged_tok.pad_token_id)
    assert gen.shape[1] > ids.shape[1]
