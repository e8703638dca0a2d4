"""Branching: dense -> 2-expert MoE computes exactly what the dense model computes.

The dense models are random micro transformers configs that barkit did not build, with a
non-default rope theta and rms eps and grouped-query attention, so that a field the branch
forgets to copy shows up as a logit difference.
"""

from __future__ import annotations

import json

import pytest
import torch

import micro
from barkit.branch import _copy_weights, branch, branch_model
from barkit.cli import main as cli_main
from barkit.errors import BarkitError, IncompatibleError
from barkit.families import LLAMA, OLMO2, QWEN3, family_of

VOCAB = 300
SIZES = {  # micro sizes plus fields a branch must not forget to copy
    **micro.SIZES,
    "max_position_embeddings": 64,
    "rms_norm_eps": 1e-3,
    "rope_parameters": {"rope_type": "default", "rope_theta": 123.0},
}


def dense_model(family: str, vocab: int = VOCAB, seed: int = 0, **extra):
    model = micro.dense_model(family, vocab=vocab, seed=seed, **{**SIZES, **extra}).eval()
    # Norm weights start at 1; random ones make a mis-wired norm visible.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return model


def tokens(seed: int = 1) -> torch.Tensor:
    return torch.randint(4, VOCAB, (2, 11), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("family", ["olmo2", "llama", "qwen3"])
@pytest.mark.parametrize("router_init", ["equal", "random"])
def test_branch_logits_equal_dense(family, router_init):
    dense = dense_model(family)
    moe = branch_model(dense, router_init, seed=3).eval()
    assert moe.config.model_type == family_of(dense).moe_model_type
    assert moe.config.num_experts == 2 and moe.config.num_experts_per_tok == 2
    x = tokens()
    with torch.no_grad():
        torch.testing.assert_close(moe(x).logits, dense(x).logits, atol=1e-5, rtol=0)
    if router_init == "equal":
        assert all(layer.mlp.gate.weight.abs().max() == 0 for layer in moe.model.layers)
    else:
        assert all(layer.mlp.gate.weight.abs().max() > 0 for layer in moe.model.layers)


@pytest.mark.parametrize("family", ["olmo2", "llama", "qwen3"])
def test_branch_config_copies_every_computation_field(family):
    dense = dense_model(family, tie_word_embeddings=False)
    cfg = branch_model(dense).config
    for key in (
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
    ):
        assert getattr(cfg, key) == getattr(dense.config, key), key
    assert cfg.rms_norm_eps == 1e-3
    assert cfg.rope_parameters["rope_theta"] == 123.0
    assert (cfg.pad_token_id, cfg.bos_token_id, cfg.eos_token_id) == (3, 1, 2)
    assert cfg.output_router_logits is False
    if family == "llama":
        assert cfg.sliding_window is None and cfg.router_jitter_noise == 0.0
    elif family == "qwen3":
        assert cfg.moe_intermediate_size == dense.config.intermediate_size
        assert cfg.head_dim == dense.config.head_dim and cfg.sliding_window is None
        assert (cfg.decoder_sparse_step, cfg.mlp_only_layers, cfg.norm_topk_prob) == (1, [], True)
    else:
        assert cfg.norm_topk_prob is False


QWEN3_ODD = dict(  # odd widths, 1 KV head for 5 query heads, head_dim not hidden / heads
    hidden_size=40,
    intermediate_size=56,
    num_attention_heads=5,
    num_key_value_heads=1,
    head_dim=6,
    num_hidden_layers=3,
)


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("router_init", ["equal", "random"])
def test_qwen3_branch_odd_shapes_gqa_and_tying(tied, router_init):
    """Qwen3 with GQA, q/k norms (randomised by dense_model), an odd vocabulary and widths."""
    dense = dense_model("qwen3", vocab=301, **{**QWEN3_ODD, "tie_word_embeddings": tied})
    assert dense.config.tie_word_embeddings is tied
    moe = branch_model(dense, router_init, seed=5).eval()
    assert type(moe).__name__ == "Qwen3MoeForCausalLM" and moe.config.tie_word_embeddings is tied
    head = moe.get_output_embeddings().weight
    assert (head is moe.get_input_embeddings().weight) is tied
    assert all(type(layer.mlp).__name__ == "Qwen3MoeSparseMoeBlock" for layer in moe.model.layers)
    x = torch.randint(4, 301, (3, 13), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(moe(x).logits, dense(x).logits, atol=1e-5, rtol=0)


def test_qwen3_branch_refuses_sliding_window():
    with pytest.raises(IncompatibleError, match="use_sliding_window=True cannot become qwen3_moe"):
        branch_model(dense_model("qwen3", use_sliding_window=True, sliding_window=8, max_window_layers=1))


@pytest.mark.parametrize("family", ["olmo2", "llama", "qwen3"])
def test_moe_config_from_defaults_would_differ(family):
    """The same weights in a MoE whose config takes the class defaults compute something else."""
    from transformers import AutoConfig, AutoModelForCausalLM

    dense = dense_model(family)
    fam = family_of(dense)
    sizes = {k: v for k, v in SIZES.items() if k not in ("rms_norm_eps", "rope_parameters")}
    if family == "qwen3":  # the experts' width alone (its default, 768, would not even fit)
        sizes["moe_intermediate_size"] = SIZES["intermediate_size"]
    naive = AutoConfig.for_model(
        fam.moe_model_type, vocab_size=VOCAB, num_experts_per_tok=2, pad_token_id=3, eos_token_id=2, **sizes
    )
    naive.num_experts = 2
    moe = AutoModelForCausalLM.from_config(naive).eval()
    _copy_weights(dense, moe, fam)
    with torch.no_grad():
        moe.model.layers[0].mlp.gate.weight.zero_()
        moe.model.layers[1].mlp.gate.weight.zero_()
        gap = (moe(tokens()).logits - dense(tokens()).logits).abs().max().item()
    assert gap > 1e-3, gap


def test_branch_refuses_unsupported_family():
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=2, n_positions=32))
    with pytest.raises(
        BarkitError, match=r"gpt2 is not supported; supported: olmo2 \(-> flex_olmo\), llama/mistral"
    ):
        branch_model(gpt2)


def test_branch_refuses_biased_llama():
    with pytest.raises(IncompatibleError, match="attention_bias=True cannot become mixtral"):
        branch_model(dense_model("llama", attention_bias=True))


def test_group_patterns_cover_every_parameter():
    for family in ("olmo2", "llama", "qwen3"):
        dense = dense_model(family)
        moe = branch_model(dense)
        fam = family_of(moe)
        groups = {fam.tensor_group(n) for n, _ in moe.named_parameters()}
        assert groups == {"expert", "router", "embeddings", "lm_head", "attention", "norms"}
        assert {fam.tensor_group(n) for n, _ in dense.named_parameters()} == groups - {"router"}
        slices = fam.anchor_slices(moe)
        assert len(slices) == 3 * SIZES["num_hidden_layers"]
        assert fam.anchor_slices(dense) == []


# ---------------------------------------------------------------------------- folder level


@pytest.fixture(scope="module")
def tokenizer():
    from barkit.tokenizer import train_tokenizer

    texts = ["the cat sat on the mat", "what is two plus two", "def f(x): return x + 1", "hello world"]
    return train_tokenizer(300, texts=texts * 10)


def save_dense(family, tokenizer, folder, *, manifest=True):
    from barkit.modeling import generation_config_for

    dense = dense_model(family, vocab=len(tokenizer))
    dense.generation_config = generation_config_for(tokenizer)
    dense.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    if manifest:
        (folder / "barkit.json").write_text(json.dumps({"stage": "base", "fingerprint": "feedbeef00000000"}))
    return dense


@pytest.mark.parametrize(
    ("family", "cls"),
    [("olmo2", "FlexOlmoForCausalLM"), ("llama", "MixtralForCausalLM"), ("qwen3", "Qwen3MoeForCausalLM")],
)
def test_branch_folder_loads_with_plain_transformers(family, cls, tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    dense = save_dense(family, tokenizer, tmp_path / "base")
    manifest = branch(tmp_path / "base", tmp_path / "branch", router_init="domain", domain="math")
    assert manifest["stage"] == "branch" and manifest["base_fingerprint"] == "feedbeef00000000"
    assert manifest["experts"] == ["anchor", "math"] and manifest["router_init"] == "domain"
    assert manifest["family"] == family
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "branch").eval()
    assert type(loaded).__name__ == cls
    x = torch.randint(4, len(tokenizer), (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, dense(x).logits, atol=1e-5, rtol=0)
    # domain init: rows point at different data, so they differ from each other
    gate = loaded.model.layers[0].mlp.gate.weight
    assert not torch.allclose(gate[0], gate[1])
    on_disk = json.loads((tmp_path / "branch" / "barkit.json").read_text())
    assert on_disk["fingerprint"] == manifest["fingerprint"]


def test_branch_fingerprints_a_base_without_manifest(tokenizer, tmp_path):
    from barkit.artifacts import content_fingerprint

    save_dense("llama", tokenizer, tmp_path / "base", manifest=False)
    manifest = branch(tmp_path / "base", tmp_path / "branch")
    assert manifest["base_fingerprint"] == content_fingerprint(tmp_path / "base")


def test_cli_branch_refuses_gpt2_with_one_line(tmp_path, capsys):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(
        GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=2, n_positions=32)
    ).save_pretrained(tmp_path / "gpt2")
    capsys.readouterr()
    status = cli_main(["branch", str(tmp_path / "gpt2"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert len(err) == 1 and "gpt2 is not supported; supported: olmo2" in err[0], err
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["gpt2"]


def test_cli_branch_bad_router_init_and_domain(tokenizer, tmp_path, capsys):
    save_dense("olmo2", tokenizer, tmp_path / "base")
    capsys.readouterr()
    assert (
        cli_main(["branch", str(tmp_path / "base"), "--out", str(tmp_path / "o"), "--router-init", "nope"])
        == 2
    )
    assert (
        cli_main(["branch", str(tmp_path / "base"), "--out", str(tmp_path / "o"), "--domain", "cooking"]) == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "nope" in err[0] and "cooking" in err[1]
    assert not (tmp_path / "o").exists()


def test_families_table_is_consistent():
    assert family_of("mistral") is LLAMA and family_of("flex_olmo") is OLMO2
    assert LLAMA.expert_tensor_names(3, 1) == [
        "model.layers.3.block_sparse_moe.experts.1.w1.weight",
        "model.layers.3.block_sparse_moe.experts.1.w3.weight",
        "model.layers.3.block_sparse_moe.experts.1.w2.weight",
    ]
    assert OLMO2.router_tensor_name(0) == "model.layers.0.mlp.gate.weight"
    assert LLAMA.tensor_group("model.layers.0.block_sparse_moe.gate.weight") == "router"
    assert OLMO2.tensor_group("model.layers.0.mlp.gate_proj.weight") == "expert"
    assert family_of("qwen3") is QWEN3 and family_of("qwen3_moe") is QWEN3
    assert QWEN3.expert_tensor_names(0, 2)[2] == "model.layers.0.mlp.experts.2.down_proj.weight"
    assert QWEN3.tensor_group("model.layers.1.self_attn.q_norm.weight") == "attention"
    with pytest.raises(IncompatibleError):
        OLMO2.tensor_group("model.rotary_emb.inv_freq")
