"""Domain stages end to end on a micro branch, special tokens at SFT, and ``barkit train``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from barkit.artifacts import read_manifest
from barkit.errors import ArtifactError, BarkitError, ConfigError, IncompatibleError
from barkit.suite.tools import TOOL_TOKENS
from barkit.train.stages import resolve_stage, run_domain_stage
from barkit.vocab import add_special_tokens


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Micro models run fastest on one thread; two threads thrash when the CPU is shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _corpus() -> list[str]:
    """Suite text without the tool category, so that the tool markers are not BPE pieces."""
    from barkit.suite import CATEGORIES, get_category

    texts: list[str] = []
    for name in CATEGORIES:
        if name == "tool_use":
            continue
        category = get_category(name)
        for item in category.items("train", 30, 0):
            texts.extend((item.prompt, item.answer))
        texts.extend(category.text(30, 0))
    return texts


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A micro Llama base and its math and tool_use branches (equal router init)."""
    from barkit.branch import branch
    from barkit.modeling import build_dense, save_model
    from barkit.presets import get_preset
    from barkit.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("stages")
    tok = train_tokenizer(600, texts=_corpus())
    assert "<tool_call>" not in tok.get_vocab()
    dense = build_dense("llama", get_preset("micro"), tok, seed=0)
    save_model(dense, tok, root / "base", {"stage": "base"})
    branch(root / "base", root / "math_branch", domain="math")
    branch(root / "base", root / "tool_branch", domain="tool_use")
    return {"root": root, "tok": tok}


def _params(folder: Path) -> dict[str, torch.Tensor]:
    from barkit.modeling import load_model

    model, _ = load_model(folder)
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _group(name: str) -> str:
    from barkit.families import LLAMA

    return LLAMA.tensor_group(name)


def _moved(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> dict[str, list[str]]:
    """Per group, which tensors (expert tensors per slot: ``name[e]``) changed."""
    out: dict[str, list[str]] = {}
    for name, old in before.items():
        new = after[name]
        group = _group(name)
        if group in ("expert", "router"):
            for e in range(old.shape[0]):
                if not torch.equal(old[e], new[e]):
                    out.setdefault(f"{group}{e}", []).append(name)
        elif old.shape != new.shape or not torch.equal(old, new):
            out.setdefault(group, []).append(name)
    return out


def _stage(world: dict[str, Any], src: str, kind: str, domain: str, **kw: Any) -> dict[str, Any]:
    return run_domain_stage(
        world["root"] / src,
        stage=kind,
        domain=domain,
        out_dir=world["root"] / kind,
        preset="micro",
        progress=False,
        **kw,
    )


def _check_manifest(man: dict[str, Any], kind: str, domain: str, world: dict[str, Any], src: str) -> None:
    parent = read_manifest(world["root"] / src)
    assert man["stage"] == kind and man["domain"] == domain
    assert man["base_fingerprint"] == parent["base_fingerprint"]
    assert man["inputs"][0]["fingerprint"] == parent["fingerprint"]
    assert man["config"]["kind"] == kind and man["tokens"] > 0 and man["seconds"] > 0
    fractions = man["metrics"]["expert_fractions"]
    assert len(fractions) == 2 and sum(fractions) == pytest.approx(1.0)
    assert read_manifest(world["root"] / kind)["fingerprint"] == man["fingerprint"]


# ----------------------------------------------------------------------------- stages in order


@pytest.fixture(scope="session")
def midtrain(world: dict[str, Any]) -> dict[str, Any]:
    return _stage(world, "math_branch", "midtrain", "math")


@pytest.fixture(scope="session")
def sft(world: dict[str, Any], midtrain: dict[str, Any]) -> dict[str, Any]:
    return _stage(world, "midtrain", "sft", "math")


def test_midtrain_moves_only_expert1_and_router_row1(world: dict[str, Any], midtrain: dict[str, Any]) -> None:
    _check_manifest(midtrain, "midtrain", "math", world, "math_branch")
    moved = _moved(_params(world["root"] / "math_branch"), _params(world["root"] / "midtrain"))
    assert set(moved) == {"expert1", "router1"}, moved
    assert midtrain["data"]["general_texts"] > 0  # mixed with general text by default


def test_sft_moves_embeddings_and_head_not_attention(world: dict[str, Any], sft: dict[str, Any]) -> None:
    _check_manifest(sft, "sft", "math", world, "midtrain")
    moved = _moved(_params(world["root"] / "midtrain"), _params(world["root"] / "sft"))
    assert {"expert1", "router1", "embeddings", "lm_head"} <= set(moved), moved
    assert not {"expert0", "router0", "attention", "norms"} & set(moved), moved


def test_rlvr_keeps_anchor_and_logs_rewards(world: dict[str, Any], sft: dict[str, Any]) -> None:
    man = _stage(world, "sft", "rlvr", "math", steps=2, overrides={"grpo": {"max_new_tokens": 8}})
    _check_manifest(man, "rlvr", "math", world, "sft")
    assert len(man["metrics"]["reward_curve"]) == 2
    assert man["config"]["grpo"]["max_new_tokens"] == 8
    moved = _moved(_params(world["root"] / "sft"), _params(world["root"] / "rlvr"))
    assert not {"expert0", "router0"} & set(moved), moved
    # everything trains at rlvr; an untrained micro base mostly earns zero reward everywhere,
    # which leaves no signal, so movement is checked only when some group had one
    (count, _), total = man["trainable"]["*"], len(_params(world["root"] / "sft"))
    assert count == total
    if man["metrics"]["history"][0]["zero_var_frac"] < 1.0:
        assert "attention" in moved


def test_anchor_equals_the_base_ffn_after_every_stage(world: dict[str, Any], sft: dict[str, Any]) -> None:
    branch = _params(world["root"] / "math_branch")
    for kind in ("midtrain", "sft"):
        after = _params(world["root"] / kind)
        for name, old in branch.items():
            if _group(name) in ("expert", "router"):
                assert torch.equal(old[0], after[name][0]), f"{kind}: anchor moved in {name}"


def test_tool_sft_adds_the_call_tokens(world: dict[str, Any]) -> None:
    from barkit.modeling import load_model

    man = run_domain_stage(
        world["root"] / "tool_branch",
        stage="sft",
        domain="tool_use",
        out_dir=world["root"] / "tool_sft",
        preset="micro",
        steps=2,
        progress=False,
    )
    assert list(man["added_tokens"]) == list(TOOL_TOKENS)
    model, tok = load_model(world["root"] / "tool_sft")
    ids = [tok.convert_tokens_to_ids(t) for t in TOOL_TOKENS]
    assert ids == list(man["added_tokens"].values())
    assert min(ids) >= len(world["tok"]) and model.get_input_embeddings().weight.shape[0] == len(tok)
    assert tok("<tool_call>", add_special_tokens=False)["input_ids"] == [ids[0]]
    assert set(TOOL_TOKENS) <= set(tok.all_special_tokens)


def test_synthetic_conversations_join_the_domain_data(world: dict[str, Any]) -> None:
    man = run_domain_stage(
        world["root"] / "tool_branch",
        stage="sft",
        domain="tool_use",
        out_dir=world["root"] / "tool_sft_synthetic",
        preset="micro",
        steps=1,
        overrides={"synthetic": {"invented_calls": 0.5, "repeat": 0.25}},
        progress=False,
    )
    n = man["data"]["domain_items"]
    assert man["data"]["synthetic"] == round(n * 0.5) + round(n * 0.25)
    assert man["config"]["synthetic"] == {"invented_calls": 0.5, "repeat": 0.25}
    plain = resolve_stage("sft", "tool_use", "micro")
    assert "synthetic" not in plain.cfg.model_dump()  # stages without it keep their fingerprints
    with pytest.raises(ConfigError, match="unknown synthetic data 'nope'"):
        resolve_stage("sft", "tool_use", "micro", overrides={"synthetic": {"nope": 1.0}})
    with pytest.raises(ConfigError, match="applies to SFT stages"):
        resolve_stage("midtrain", "math", "micro", overrides={"synthetic": {"repeat": 1.0}})


def test_augmented_copies_join_the_domain_data(world: dict[str, Any]) -> None:
    man = run_domain_stage(
        world["root"] / "tool_branch",
        stage="sft",
        domain="tool_use",
        out_dir=world["root"] / "tool_sft_augmented",
        preset="micro",
        steps=1,
        overrides={"augment": {"tool_calls": 2.0}},
        progress=False,
    )
    n = man["data"]["domain_items"]
    assert man["data"]["augmented"] == {"tool_calls": 2 * n}  # every suite tool item has a call
    assert man["config"]["augment"] == {"tool_calls": 2.0}
    assert "augment" not in resolve_stage("sft", "tool_use", "micro").cfg.model_dump()
    with pytest.raises(ConfigError, match="unknown augmentation 'nope'"):
        resolve_stage("sft", "tool_use", "micro", overrides={"augment": {"nope": 1.0}})
    with pytest.raises(ConfigError, match="in \\(0, 10\\]"):
        resolve_stage("sft", "tool_use", "micro", overrides={"augment": {"tool_calls": 0.0}})
    with pytest.raises(ConfigError, match="'augment' adds conversations: it applies to SFT stages"):
        resolve_stage("midtrain", "math", "micro", overrides={"augment": {"tool_calls": 1.0}})


# ----------------------------------------------------------------------------- special tokens


def _fresh_model(world: dict[str, Any]) -> tuple[Any, Any]:
    from barkit.modeling import load_model

    return load_model(world["root"] / "math_branch")


def test_new_rows_start_at_the_mean(world: dict[str, Any], tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    model, tok = _fresh_model(world)
    emb_before = model.get_input_embeddings().weight.detach().clone()
    head_before = model.get_output_embeddings().weight.detach().clone()
    n = emb_before.shape[0]
    ids = add_special_tokens(model, tok, TOOL_TOKENS)
    assert ids == [n, n + 1]
    emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert emb.shape[0] == head.shape[0] == n + 2 == model.config.vocab_size
    assert torch.equal(emb[:n], emb_before) and torch.equal(head[:n], head_before)
    for new_row in (n, n + 1):
        assert torch.allclose(emb[new_row], emb_before.mean(dim=0), atol=1e-7)
        assert torch.allclose(head[new_row], head_before.mean(dim=0), atol=1e-7)
    assert add_special_tokens(model, tok, TOOL_TOKENS) == ids  # idempotent
    assert emb.shape[0] == n + 2
    tok.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    encoded = reloaded("x <tool_call>{}</tool_call>", add_special_tokens=False)["input_ids"]
    assert ids[0] in encoded and ids[1] in encoded
    assert reloaded("<tool_call>", add_special_tokens=False)["input_ids"] == [ids[0]]


def test_a_token_the_bpe_already_knows_keeps_its_row(world: dict[str, Any]) -> None:
    model, tok = _fresh_model(world)
    piece = next(t for t, i in tok.get_vocab().items() if len(t) > 3 and i > 300)
    before = model.get_input_embeddings().weight.detach().clone()
    ids = add_special_tokens(model, tok, [piece])
    assert ids == [tok.get_vocab()[piece]]
    assert torch.equal(model.get_input_embeddings().weight, before)
    assert piece in tok.all_special_tokens


# ----------------------------------------------------------------------------- errors and CLI


def test_refusals(world: dict[str, Any], tmp_path: Path) -> None:
    root = world["root"]
    with pytest.raises(BarkitError, match="tool_use"):
        run_domain_stage(
            root / "tool_branch", stage="midtrain", domain="tool_use", out_dir=tmp_path / "x", preset="micro"
        )
    with pytest.raises(BarkitError, match="unknown category 'poetry'"):
        run_domain_stage(
            root / "math_branch", stage="sft", domain="poetry", out_dir=tmp_path / "x", preset="micro"
        )
    with pytest.raises(ArtifactError, match="not a barkit branch"):
        run_domain_stage(root / "base", stage="sft", domain="math", out_dir=tmp_path / "x", preset="micro")
    with pytest.raises(ArtifactError, match="no such model folder"):
        run_domain_stage(
            tmp_path / "nope", stage="sft", domain="math", out_dir=tmp_path / "x", preset="micro"
        )
    with pytest.raises(IncompatibleError, match="math expert"):
        run_domain_stage(
            root / "math_branch", stage="sft", domain="code", out_dir=tmp_path / "x", preset="micro"
        )
    with pytest.raises(ConfigError, match="max_new_tokens"):
        resolve_stage("rlvr", "math", "micro", None, 0, {"grpo": {"max_new_tokens": 0}})
    with pytest.raises(ConfigError, match="only applies to rlvr"):
        resolve_stage("sft", "math", "micro", None, 0, {"grpo": {"beta": 0.1}})
    assert not (tmp_path / "x").exists()


def test_cli_router_stage_and_errors(
    world: dict[str, Any], midtrain: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from barkit.cli import main

    out = tmp_path / "routed"
    # From the midtrain output: on a fresh branch both experts are equal, so the router gets
    # no gradient at all (any mix of two identical experts computes the same thing).
    args = ["train", str(world["root"] / "midtrain"), "--stage", "router", "--domain", "math"]
    code = main(
        [
            *args,
            "--out",
            str(out),
            "--preset",
            "micro",
            "--steps",
            "2",
            "--general-mix",
            "0.5",
            "--no-progress",
        ]
    )
    assert code == 0, capsys.readouterr().err
    man = read_manifest(out)
    assert man["stage"] == "router" and man["config"]["general_mix"] == 0.5
    moved = _moved(_params(world["root"] / "midtrain"), _params(out))
    assert set(moved) == {"router1"}, moved
    capsys.readouterr()
    assert (
        main(["train", str(tmp_path / "missing"), "--stage", "sft", "--domain", "math", "--out", str(out)])
        == 2
    )
    assert main([*args, "--out", str(out), "--trainable", "nonexistent_group"]) == 2
    assert main([*args[:2], "--stage", "pretrain", "--domain", "math", "--out", str(out)]) == 2
    stderr = capsys.readouterr().err
    # transformers may draw loading bars on stderr too; the errors themselves are one line each
    err = [line for line in stderr.splitlines() if line.startswith("barkit: error:")]
    assert len(err) == 3 and "Traceback" not in stderr
    assert "no such model folder" in err[0] and "nonexistent_group" in err[1] and "pretrain" in err[2]
