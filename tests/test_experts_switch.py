"""Switching experts off (router masking) and pruning them out, for every MoE family."""

from __future__ import annotations

import json

import pytest
import torch

import micro
from barkit.cli import main as cli_main
from barkit.errors import ArtifactError, BarkitError
from barkit.experts import (
    expert_names,
    model_expert_names,
    prune,
    prune_model,
    resolve_experts,
    restrict_experts,
)
from barkit.families import family_of

VOCAB = 300
NAMES = ["anchor", "math", "code"]


def moe_model(family: str, *, experts: int = 3, top_k: int = 2, vocab: int = VOCAB, seed: int = 0):
    """A random 3-expert MoE (hidden 32, 2 layers) with a random router, so routing matters."""
    model = micro.moe_model(family, experts=experts, top_k=top_k, vocab=vocab, seed=seed).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.gate.weight.normal_(0, 0.5)
    return model


def tokens(vocab: int = VOCAB) -> torch.Tensor:
    return torch.randint(4, vocab, (2, 13), generator=torch.Generator().manual_seed(5))


@torch.no_grad()
def perturb_expert(model, expert: int) -> None:
    fam = family_of(model)
    for _, view in fam.expert_slices(model, expert):
        view.add_(torch.randn_like(view))


@pytest.mark.parametrize("family", ["olmo2", "llama", "qwen3"])
@pytest.mark.parametrize("implementation", ["eager", "grouped_mm"])
@pytest.mark.parametrize("keep", [[0, 2], [0]])
def test_switched_off_expert_has_no_influence_at_all(family, implementation, keep):
    model = moe_model(family)
    model.set_experts_implementation(implementation)
    x = tokens()
    with torch.no_grad(), restrict_experts(model, keep):
        before = model(x).logits
        perturb_expert(model, 1)  # FFN slices and router row of the switched-off expert
        after = model(x).logits
    assert torch.equal(before, after)
    with torch.no_grad():
        # outside the block the perturbed expert is back in play
        assert not torch.equal(model(x).logits, after)


@pytest.mark.parametrize("family", ["olmo2", "llama", "qwen3"])
def test_switching_off_changes_output_and_is_restored(family):
    model = moe_model(family)
    x = tokens()
    with torch.no_grad():
        full = model(x).logits
        with restrict_experts(model, [0]):
            anchor_only = model(x).logits
        assert not torch.allclose(full, anchor_only)
        assert torch.equal(model(x).logits, full)
    assert all("forward" not in vars(layer.mlp.gate) for layer in model.model.layers)


@pytest.mark.parametrize("family", ["olmo2", "llama", "qwen3"])
@pytest.mark.parametrize("top_k", [1, 2, 3])
def test_keeping_all_experts_is_bit_identical(family, top_k):
    model = moe_model(family, top_k=top_k)
    x = tokens()
    with torch.no_grad():
        plain = model(x).logits
        with restrict_experts(model, [0, 1, 2]):
            restricted = model(x).logits
    assert torch.equal(plain, restricted)


def test_restrict_survives_an_exception_and_checks_indices():
    model = moe_model("llama")
    with pytest.raises(RuntimeError), restrict_experts(model, [0]):
        raise RuntimeError("boom")
    assert all("forward" not in vars(layer.mlp.gate) for layer in model.model.layers)
    for bad in ([], [3], [-1]):
        with pytest.raises(BarkitError), restrict_experts(model, bad):
            pass


@pytest.mark.parametrize("family", ["olmo2", "llama", "qwen3"])
@pytest.mark.parametrize("top_k", [1, 2, 3])
def test_pruned_model_equals_switched_off_model(family, top_k):
    model = moe_model(family, top_k=top_k)
    x = tokens()
    pruned = prune_model(model, [0, 2]).eval()
    assert pruned.config.num_experts == 2
    assert pruned.config.num_experts_per_tok == min(top_k, 2)
    with torch.no_grad(), restrict_experts(model, [0, 2]):
        expected = model(x).logits
        got = pruned(x).logits
    # Not asserted bit-exact: the pruned softmax runs over 2 logits, the masked one over 3 with a
    # -inf that contributes an exact 0 but can change the reduction's summation order.
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    with pytest.raises(BarkitError, match="anchor"):
        prune_model(model, [1, 2])


def test_expert_names_and_resolution():
    assert expert_names({}, 3) == ["anchor", "expert1", "expert2"]
    assert expert_names({"experts": NAMES}, 3) == NAMES
    with pytest.raises(ArtifactError):
        expert_names({"experts": ["anchor"]}, 3)
    assert resolve_experts(["code", "anchor", "code"], NAMES) == [0, 2]
    with pytest.raises(BarkitError, match="unknown expert 'chem'; this model's experts: anchor, math, code"):
        resolve_experts(["chem"], NAMES)


# ---------------------------------------------------------------------------- folders and CLI


@pytest.fixture(scope="module")
def moe_dir(tmp_path_factory):
    """A saved 3-expert Mixtral with tokenizer and a manifest naming its experts."""
    from barkit.modeling import generation_config_for
    from barkit.tokenizer import train_tokenizer

    folder = tmp_path_factory.mktemp("moe") / "merged"
    tokenizer = train_tokenizer(300, texts=["what is two plus two", "hello world", "def f(x): return x"] * 10)
    model = moe_model("llama", vocab=len(tokenizer))
    model.generation_config = generation_config_for(tokenizer)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    manifest = {
        "stage": "route",
        "experts": NAMES,
        "base_fingerprint": "b" * 16,
        "fingerprint": "f" * 16,
        "inputs": [{"domain": "math", "fingerprint": "m"}, {"domain": "code", "fingerprint": "c"}],
    }
    (folder / "barkit.json").write_text(json.dumps(manifest))
    return folder


def test_prune_folder(moe_dir, tmp_path):
    from barkit.modeling import load_model

    manifest = prune(moe_dir, ["math"], tmp_path / "pruned")
    assert manifest["experts"] == ["anchor", "code"] and manifest["dropped"] == ["math"]
    assert manifest["base_fingerprint"] == "b" * 16
    assert manifest["inputs"][0]["fingerprint"] == "f" * 16
    assert manifest["expert_inputs"] == [{"domain": "code", "fingerprint": "c"}]
    assert model_expert_names(tmp_path / "pruned") == ["anchor", "code"]
    original, _ = load_model(moe_dir)
    pruned, _ = load_model(tmp_path / "pruned")
    x = tokens(pruned.config.vocab_size)
    with torch.no_grad(), restrict_experts(original, [0, 2]):
        torch.testing.assert_close(pruned(x).logits, original(x).logits, atol=1e-5, rtol=0)
    with pytest.raises(BarkitError, match="anchor"):
        prune(moe_dir, ["anchor"], tmp_path / "nope")
    assert not (tmp_path / "nope").exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["generate", "{m}", "--prompt", "hi", "--experts", "anchor,chem"],
        ["eval", "{m}", "--experts", "chem", "--limit", "1", "--out", "{o}"],
        ["prune", "{m}", "--drop", "chem", "--out", "{o}"],
        ["prune", "{m}", "--drop", "anchor", "--out", "{o}"],
    ],
)
def test_cli_expert_errors_exit_2_with_one_line(argv, moe_dir, tmp_path, capsys):
    argv = [a.format(m=moe_dir, o=tmp_path / "out") for a in argv]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("barkit: error:"), err
    assert "anchor, math, code" in err[0] or "cannot be dropped" in err[0]
    assert not (tmp_path / "out").exists()


def test_cli_generate_with_experts_switched_off(moe_dir, capsys):
    from barkit.generate import generate
    from barkit.modeling import load_model

    argv = ["generate", str(moe_dir), "--prompt", "hi", "--experts", "anchor,code", "--max-new-tokens", "6"]
    assert cli_main(argv) == 0
    printed = capsys.readouterr().out
    model, tokenizer = load_model(moe_dir)
    with restrict_experts(model, [0, 2]):
        expected = generate(model, tokenizer, ["hi"], max_new_tokens=6, batch_size=1)
    assert printed == expected[0] + "\n"


def test_cli_eval_with_experts_switched_off(moe_dir, tmp_path):
    """``barkit eval --experts`` scores exactly the completions of the restricted model."""
    from barkit.evaluate import evaluate
    from barkit.modeling import load_model

    out = tmp_path / "eval.json"
    argv = [
        "eval",
        str(moe_dir),
        "--experts",
        "anchor,code",
        "--categories",
        "knowledge,chat",
        "--limit",
        "3",
    ]
    assert cli_main([*argv, "--max-new-tokens", "6", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["settings"]["experts"] == [0, 2]
    model, tokenizer = load_model(moe_dir)
    with restrict_experts(model, [0, 2]):
        expected = evaluate(model, tokenizer, ["knowledge", "chat"], 3, max_new_tokens=6)
    assert [r["completion"] for r in data["items"]] == [r.completion for r in expected.items]
    everyone = evaluate(model, tokenizer, ["knowledge", "chat"], 3, max_new_tokens=6)
    assert [r.completion for r in everyone.items] != [r.completion for r in expected.items]
