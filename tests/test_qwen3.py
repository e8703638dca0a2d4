"""A Qwen3 model that barkit did not make, through the whole recipe on the user's JSONL files.

The base is a plain ``Qwen3ForCausalLM`` built from a ``Qwen3Config`` (tied embeddings, as the
small Qwen3 models have, GQA, q/k norms) and saved with barkit's tokenizer, without a manifest.
It goes through ``barkit branch``, ``train --stage midtrain/sft/rlvr``, ``merge``,
``route --data`` and ``eval --data --verifier numeric``; the merged and routed models load with
plain ``AutoModelForCausalLM`` as ``Qwen3MoeForCausalLM``, and the anchor never moves.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, Qwen3Config, Qwen3ForCausalLM

from barkit.artifacts import read_manifest
from barkit.cli import main

RUN = ["--preset", "micro", "--steps", "2", "--no-progress"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from barkit.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("qwen3")
    pairs = [(f"What is {a} + {b}?", str(a + b)) for a in range(3, 10) for b in range(2, 6)]
    train, test = pairs[:24], pairs[24:]
    prompts = [p for p, _ in pairs]
    answers = [a for _, a in pairs]
    tok = train_tokenizer(400, texts=prompts + answers + ["adding numbers is fun"] * 4)
    config = Qwen3Config(
        vocab_size=len(tok),
        hidden_size=48,
        intermediate_size=72,
        num_hidden_layers=2,
        num_attention_heads=6,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(0)
    Qwen3ForCausalLM(config).save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    chat = [[{"role": "user", "content": p}, {"role": "assistant", "content": a}] for p, a in train]
    files = {
        "text": _jsonl(root / "text.jsonl", [{"text": f"{p} It is {a}."} for p, a in train]),
        "chat": _jsonl(root / "chat.jsonl", [{"messages": m} for m in chat]),
        "pc": _jsonl(root / "pc.jsonl", [{"prompt": p, "completion": a} for p, a in train]),
        "rl": _jsonl(root / "rl.jsonl", [{"prompt": p, "answer": a} for p, a in train]),
        "test": _jsonl(root / "test.jsonl", [{"prompt": p, "answer": a} for p, a in test]),
    }
    return {"root": root, **files}


def _anchor(folder: Path) -> dict[str, torch.Tensor]:
    from barkit.families import family_of
    from barkit.modeling import load_model

    model, _ = load_model(folder)
    return {n: v.detach().clone() for n, v in family_of(model).anchor_slices(model)}


def _assert_anchor_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys() and a
    for name, view in a.items():
        assert torch.equal(view, b[name]), f"anchor slice {name} moved"


def test_qwen3_through_the_whole_recipe(world: dict[str, Any]) -> None:
    root = world["root"]

    def run(*argv: str) -> None:
        assert main(list(argv)) == 0, argv

    run("branch", str(root / "base"), "--out", str(root / "branch"))
    assert read_manifest(root / "branch")["family"] == "qwen3"
    anchor = _anchor(root / "branch")
    stages = [
        ("branch", "mid", ["--stage", "midtrain", "--data", world["text"], "--name", "calc"]),
        ("mid", "sft", ["--stage", "sft", "--data", world["chat"], "--add-special-tokens", "<sum>"]),
        ("sft", "rl", ["--stage", "rlvr", "--data", world["rl"], "--verifier", "numeric"]),
        ("branch", "beta", ["--stage", "sft", "--data", world["pc"], "--name", "beta"]),
    ]
    for src, out, args in stages:
        run("train", str(root / src), "--out", str(root / out), *args, *RUN)
        _assert_anchor_equal(anchor, _anchor(root / out))
    assert "<sum>" in read_manifest(root / "sft")["added_tokens"]

    run("merge", str(root / "rl"), str(root / "beta"), "--out", str(root / "merged"))
    files = f"{world['chat']},{world['pc']}"
    run(
        "route",
        str(root / "merged"),
        "--out",
        str(root / "routed"),
        "--data",
        files,
        "--preset",
        "micro",
        "--steps",
        "2",
    )
    for folder in ("merged", "routed"):
        model = AutoModelForCausalLM.from_pretrained(root / folder)
        assert type(model).__name__ == "Qwen3MoeForCausalLM", folder
        assert model.config.num_local_experts == 3 and model.config.tie_word_embeddings is True
        assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert read_manifest(root / "routed")["experts"] == ["anchor", "calc", "beta"]

    scores = root / "scores.json"
    run("eval", str(root / "routed"), "--data", world["test"], "--verifier", "numeric", "--out", str(scores))
    written = json.loads(scores.read_text())
    assert len(written["items"]) == 4 and 0.0 <= written["overall"] <= 100.0


def test_btx_of_qwen3_dense_models(world: dict[str, Any]) -> None:
    """BTX on Qwen3: each dense model's FFN becomes an expert of a ``Qwen3MoeForCausalLM``."""
    from safetensors.torch import load_file

    from barkit.merge import merge_dense_btx

    root = world["root"]
    base = Qwen3ForCausalLM.from_pretrained(root / "base")
    dirs = []
    for k in range(2):
        torch.manual_seed(100 + k)
        dense = Qwen3ForCausalLM(base.config)
        dense.save_pretrained(root / f"dense{k}")
        dirs.append(root / f"dense{k}")
    out = root / "btx"
    merge_dense_btx(dirs, out, top_k=1, progress=False)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert type(model).__name__ == "Qwen3MoeForCausalLM"
    assert model.config.num_local_experts == 2 and model.config.tie_word_embeddings is True
    got = load_file(str(out / "model.safetensors"))
    srcs = [load_file(str(d / "model.safetensors")) for d in dirs]
    down = [n for n in got if n.startswith("model.layers.1.") and "experts.1" in n and "down" in n]
    assert down, sorted(got)[:20]
    assert torch.equal(got[down[0]], srcs[1]["model.layers.1.mlp.down_proj.weight"])
    name = "model.layers.0.self_attn.q_norm.weight"
    assert torch.equal(got[name], torch.stack([s[name] for s in srcs]).double().mean(0).float())
    assert torch.isfinite(model(torch.tensor([[1, 2, 3]])).logits).all()
