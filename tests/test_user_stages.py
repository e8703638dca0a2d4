"""A user's own data through ``barkit train``, ``barkit route`` and recipes, on micro models.

Stages on JSONL files (sft with ``messages`` and with ``prompt``/``completion``, midtrain on
``text``, rlvr on ``prompt``/``answer`` with the numeric verifier), the data's content hash in
fingerprints, the training flags, and every kind of bad input as one line and status 2.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from barkit.artifacts import read_manifest
from barkit.cli import main


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _math_items(n: int = 24) -> list[Any]:
    from barkit.suite import draw_items

    return draw_items("math", "train", n, 0)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A micro Llama base, a branch with no suite domain, and the user's files."""
    from barkit.branch import branch
    from barkit.modeling import build_dense, save_model
    from barkit.presets import get_preset
    from barkit.suite import get_category
    from barkit.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("user")
    items = _math_items()
    texts = [t for i in items for t in (i.prompt, i.answer)] + get_category("math").text(20, 0)
    tok = train_tokenizer(400, texts=texts)
    save_model(build_dense("llama", get_preset("micro"), tok, seed=0), tok, root / "base", {"stage": "base"})
    branch(root / "base", root / "branch")
    files = {
        "messages": write_jsonl(root / "chat.jsonl", [{"messages": i.messages()} for i in items]),
        "pc": write_jsonl(
            root / "pc.jsonl", [{"prompt": i.prompt, "completion": i.answer} for i in items[::-1]]
        ),
        "text": write_jsonl(root / "text.jsonl", [{"text": t} for t in get_category("math").text(20, 0)]),
        "rl": write_jsonl(root / "rl.jsonl", [{"prompt": i.prompt, "answer": i.answer} for i in items]),
    }
    return {"root": root, "base": root / "base", "branch": root / "branch", **files}


def train(world: dict[str, Path], out: Path, *args: str) -> int:
    argv = ["train", str(world["branch"]), "--out", str(out), "--preset", "micro", "--no-progress"]
    return main([*argv, "--steps", "2", *args])


def _anchor_intact(before: Path, after: Path, dtype: torch.dtype = torch.float32) -> list[str]:
    """Names of expert tensors whose anchor slice moved, and checks something trained."""
    from barkit.modeling import load_model

    old, _ = load_model(before, dtype=dtype)
    new, _ = load_model(after, dtype=dtype)
    moved = [n for n, p in new.named_parameters() if not torch.equal(p, old.get_parameter(n))]
    assert any(".experts." in n for n in moved), moved
    return [
        n
        for n in moved
        if ".experts." in n and not torch.equal(new.get_parameter(n)[0], old.get_parameter(n)[0])
    ]


@pytest.mark.parametrize("form", ["messages", "pc"])
def test_sft_on_a_users_jsonl(world: dict[str, Path], tmp_path: Path, form: str) -> None:
    out = tmp_path / "sft"
    assert train(world, out, "--stage", "sft", "--data", str(world[form]), "--name", "calc") == 0
    manifest = read_manifest(out)
    from barkit.userdata import content_hash

    assert manifest["domain"] == "calc" and manifest["experts"] == ["anchor", "calc"]
    assert manifest["config"]["data"] == {"content_hashes": [content_hash(world[form])]}
    assert manifest["config"]["general_mix"] == 0.0  # --data alone mixes in no general data
    assert manifest["data"]["domain_items"] == 24 and manifest["data"]["files"] == [str(world[form])]
    assert manifest["added_tokens"] == {}
    assert _anchor_intact(world["branch"], out) == []


def test_sft_augments_a_users_tool_calls(world: dict[str, Path], tmp_path: Path) -> None:
    """``--augment tool_calls=2`` on a user's file: two copies of each row that holds a call, none
    of a row without one; the manifest counts the file's own rows apart from the copies."""
    from barkit.suite import draw_items

    calls = [{"messages": i.messages()} for i in draw_items("tool_use", "train", 10, 0)]
    chats = [{"messages": i.messages()} for i in _math_items(6)]
    path = write_jsonl(tmp_path / "tools.jsonl", calls + chats)
    out = tmp_path / "sft"
    argv = ["--stage", "sft", "--data", str(path), "--name", "tools", "--augment", "tool_calls=2"]
    assert train(world, out, *argv) == 0
    data = read_manifest(out)["data"]
    assert data["domain_items"] == 16 and data["augmented"] == {"tool_calls": 20}


def test_midtrain_on_text_with_general_data(world: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "mid"
    args = ["--stage", "midtrain", "--data", str(world["text"]), "--general-data", str(world["text"])]
    assert train(world, out, *args) == 0
    manifest = read_manifest(out)
    assert manifest["config"]["general_mix"] == 0.3  # the kind's share, once general data is given
    assert manifest["data"]["general_texts"] == 20 and manifest["data"]["rows"] > 0
    assert _anchor_intact(world["branch"], out) == []


def test_rlvr_on_prompt_answer_with_numeric(world: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "rl"
    args = ["--stage", "rlvr", "--data", str(world["rl"]), "--verifier", "numeric", "--lr", "1e-3"]
    assert train(world, out, *args) == 0
    manifest = read_manifest(out)
    assert manifest["config"]["data"]["verifier"] == "numeric"
    assert manifest["config"]["optim"]["lr"] == 1e-3
    assert len(manifest["metrics"]["reward_curve"]) == 2
    assert _anchor_intact(world["branch"], out) == []


def test_fingerprint_follows_the_files_content(world: dict[str, Path], tmp_path: Path) -> None:
    from barkit.train.file_data import user_data
    from barkit.train.stages import resolve_stage

    rows = [json.loads(line) for line in world["messages"].read_text().splitlines()]
    copy = write_jsonl(tmp_path / "a.jsonl", rows)

    def key() -> dict[str, Any]:
        return resolve_stage("sft", "calc", "micro", data=user_data(copy)).to_json()

    first = key()
    moved = write_jsonl(tmp_path / "b.jsonl", rows)
    assert resolve_stage("sft", "calc", "micro", data=user_data(moved)).to_json() == first
    write_jsonl(copy, rows[:-1])
    assert key() != first
    rl = resolve_stage("rlvr", "calc", "micro", data=user_data(world["rl"], verifier="numeric")).to_json()
    exact = resolve_stage("rlvr", "calc", "micro", data=user_data(world["rl"], verifier="exact")).to_json()
    assert rl != exact


def test_training_flags_override_the_resolved_config(world: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "flags"
    args = ["--stage", "sft", "--data", str(world["messages"]), "--batch-size", "2", "--grad-accum", "2"]
    args += ["--seq-len", "48", "--checkpoint-every", "1", "--add-special-tokens", "<calc>"]
    assert train(world, out, *args) == 0
    config = read_manifest(out)["config"]
    assert (config["batch_size"], config["grad_accum"], config["seq_len"], config["checkpoint_every"]) == (
        2,
        2,
        48,
        1,
    )
    assert config["add_special_tokens"] == ["<calc>"] and "<calc>" in read_manifest(out)["added_tokens"]
    assert "dtype" not in config  # float32, the default, leaves the keyed config as it was


def test_gradient_checkpointing_trains_to_the_same_weights(world: dict[str, Path], tmp_path: Path) -> None:
    from barkit.modeling import load_model
    from barkit.train.loop import enable_activation_checkpointing
    from barkit.train.objectives import SFTObjective
    from barkit.train.stages import resolve_stage

    model, tok = load_model(world["branch"])
    plan = resolve_stage("sft", "math", "micro", overrides={"general_mix": 0.0})
    objective = SFTObjective.from_conversations(tok, plan.cfg, [i.messages() for i in _math_items(8)])
    batch = objective.batch(0)
    model.train()
    plain, _ = objective.loss(model, batch)
    enable_activation_checkpointing(model)
    checkpointed, _ = objective.loss(model, batch)
    assert torch.equal(plain, checkpointed)

    outs = [tmp_path / "plain", tmp_path / "gc"]
    args = ["--stage", "sft", "--data", str(world["messages"])]
    assert train(world, outs[0], *args) == 0
    assert train(world, outs[1], *args, "--gradient-checkpointing") == 0
    assert read_manifest(outs[1])["config"]["gradient_checkpointing"] is True
    a, _ = load_model(outs[0])
    b, _ = load_model(outs[1])
    for name, p in a.named_parameters():
        torch.testing.assert_close(p, b.get_parameter(name), rtol=0, atol=1e-6)


def test_bfloat16_keeps_the_anchor_and_resumes(
    world: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bf16 stage interrupted after a checkpoint resumes to the uninterrupted run's weights."""
    from barkit.modeling import load_model
    from barkit.train import loop

    args = ["--stage", "sft", "--data", str(world["messages"]), "--dtype", "bfloat16"]
    args += ["--checkpoint-every", "1"]
    whole = tmp_path / "whole"
    assert train(world, whole, *args) == 0
    assert read_manifest(whole)["config"]["dtype"] == "bfloat16"
    assert _anchor_intact(world["branch"], whole, torch.bfloat16) == []

    step = loop._Stage.optimizer_step
    calls = {"n": 0}

    def interrupted(self: Any) -> float:
        calls["n"] += 1
        if calls["n"] == 2:  # after step 1's checkpoint
            raise KeyboardInterrupt
        return step(self)

    resumed = tmp_path / "resumed"
    monkeypatch.setattr(loop._Stage, "optimizer_step", interrupted)
    assert train(world, resumed, *args) == 130 and not resumed.exists()
    monkeypatch.setattr(loop._Stage, "optimizer_step", step)
    assert train(world, resumed, *args, "--resume") == 0
    a, _ = load_model(whole, dtype=torch.bfloat16)
    b, _ = load_model(resumed, dtype=torch.bfloat16)
    assert all(torch.equal(p, b.get_parameter(n)) for n, p in a.named_parameters())


# ----------------------------------------------------------------------------- bad input


def _bad_files(world: dict[str, Path], tmp: Path) -> dict[str, Path]:
    lines = world["messages"].read_text().splitlines()
    no_field = tmp / "nofield.jsonl"
    no_field.write_text("\n".join([*lines[:2], json.dumps({"text": "no chat here"}), *lines[2:]]) + "\n")
    (tmp / "empty.jsonl").write_text("")
    (tmp / "raises.py").write_text("def score(completion, row):\n    raise RuntimeError('boom')\n")
    return {"no_field": no_field, "empty": tmp / "empty.jsonl", "raises": tmp / "raises.py"}


def _no_template_branch(world: dict[str, Path], tmp: Path) -> Path:
    import shutil

    folder = tmp / "bare_branch"
    shutil.copytree(world["branch"], folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    return folder


def test_bad_input_is_one_line_and_status_2(
    world: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = _bad_files(world, tmp_path)
    sft, rl = ["--stage", "sft", "--data"], ["--stage", "rlvr", "--data", str(world["rl"]), "--verifier"]
    cases = {
        "no such file": [*sft, str(tmp_path / "missing.jsonl")],
        f"{bad['no_field']} line 3: no 'messages'": [*sft, str(bad["no_field"])],
        "empty dataset": [*sft, str(bad["empty"])],
        "unknown verifier 'nope'": [*rl, "nope"],
        "boom": [*rl, f"{bad['raises']}:score"],
        "needs a verifier": ["--stage", "rlvr", "--data", str(world["rl"])],
        "needs general data": [*sft, str(world["messages"]), "--general-mix", "0.5"],
        "one of them": ["--stage", "sft"],
    }
    for i, (needle, args) in enumerate(cases.items()):
        out = tmp_path / f"out{i}"
        assert train(world, out, *args) == 2, needle
        err = capsys.readouterr().err
        assert needle in err and err.count("\n") == 1, (needle, err)
        assert not out.exists() and not any(tmp_path.glob(f".out{i}*")), needle
    bare = _no_template_branch(world, tmp_path)
    out = tmp_path / "bare_out"
    argv = ["train", str(bare), "--out", str(out), "--preset", "micro", *sft, str(world["messages"])]
    assert main([*argv, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "no chat template" in err and err.count("\n") == 1 and not out.exists()


# ----------------------------------------------------------------------------- route


@pytest.fixture(scope="module")
def merged(world: dict[str, Path]) -> Path:
    """Two experts trained on the user's two SFT files, merged."""
    root = world["root"]
    for name, form in (("alpha", "messages"), ("beta", "pc")):
        assert train(world, root / name, "--stage", "sft", "--data", str(world[form]), "--name", name) == 0
    assert main(["merge", str(root / "alpha"), str(root / "beta"), "--out", str(root / "merged")]) == 0
    return root / "merged"


def test_route_on_the_experts_own_files(world: dict[str, Path], merged: Path, tmp_path: Path) -> None:
    from barkit.modeling import load_model
    from barkit.userdata import content_hash

    out = tmp_path / "routed"
    files = f"{world['messages']},{world['pc']}"
    argv = ["route", str(merged), "--out", str(out), "--data", files, "--sample", "0.25"]
    assert main([*argv, "--preset", "micro", "--steps", "2"]) == 0
    manifest = read_manifest(out)
    assert manifest["experts"] == ["anchor", "alpha", "beta"]
    assert manifest["sample_sizes"] == {"chat": 6, "pc": 6}  # a quarter of each file's 24 rows
    assert manifest["config"]["data"]["content_hashes"] == [
        content_hash(world["messages"]),
        content_hash(world["pc"]),
    ]
    assert set(manifest["routing_fractions"]) == {"chat", "pc"}
    before, _ = load_model(merged)
    after, _ = load_model(out)
    moved = {n for n, p in after.named_parameters() if not torch.equal(p, before.get_parameter(n))}
    assert moved and all("gate" in n or "router" in n for n in moved), moved


# ----------------------------------------------------------------------------- recipes


def _data_recipe(world: dict[str, Path], alpha: Path, **route: Any) -> dict[str, Any]:
    def expert(path: Path) -> dict[str, Any]:
        return {"stages": [{"kind": "sft", "data": str(path), "steps": 2}]}

    return {
        "name": "mine",
        "preset": "micro",
        "base": {"path": str(world["base"])},
        "experts": {"alpha": expert(alpha), "beta": expert(world["pc"])},
        "route": {"steps": 2, **route},
    }


def test_recipe_data_fields_are_checked_at_load(world: dict[str, Path], tmp_path: Path) -> None:
    from barkit.errors import ConfigError
    from barkit.recipe import load_recipe, parse_recipe

    recipe = parse_recipe(_data_recipe(world, world["messages"]), "r")
    assert recipe.experts["alpha"].domain is None
    assert recipe.route_files() == [str(world["messages"]), str(world["pc"])]  # the experts' own sft files

    def refused(data: dict[str, Any], needle: str) -> None:
        with pytest.raises(ConfigError, match=needle):
            parse_recipe(data, "r.yaml")

    missing = _data_recipe(world, tmp_path / "gone.jsonl")
    refused(missing, r"r.yaml: experts.alpha.stages.0.data: .*gone.jsonl: no such file")
    rl = _data_recipe(world, world["messages"])
    rl["experts"]["alpha"]["stages"] = [{"kind": "rlvr", "data": str(world["rl"])}]
    refused(rl, "experts.alpha.stages.0: .*needs a verifier")
    rl["experts"]["alpha"]["stages"][0]["verifier"] = "nope"
    refused(rl, "unknown verifier 'nope'")
    refused(
        {**_data_recipe(world, world["messages"]), "route": {"data": [str(tmp_path / "x.jsonl")]}},
        "route.data: .*x.jsonl: no such file",
    )
    no_data = _data_recipe(world, world["messages"])
    no_data["experts"]["beta"]["stages"] = [{"kind": "sft"}]
    refused(no_data, "experts.beta: stages.0: an expert without a suite domain needs data")

    # relative paths are read from the recipe's folder
    import yaml

    folder = tmp_path / "recipes"
    folder.mkdir()
    (folder / "chat.jsonl").write_text(world["messages"].read_text())
    data = _data_recipe(world, Path("chat.jsonl"))
    (folder / "r.yaml").write_text(yaml.safe_dump(data))
    loaded = load_recipe(folder / "r.yaml")
    assert loaded.experts["alpha"].stages[0].data == str((folder / "chat.jsonl").resolve())


def test_recipe_on_data_rebuilds_only_the_expert_whose_file_changed(
    world: dict[str, Path], tmp_path: Path
) -> None:
    from barkit.pipeline import run_recipe
    from barkit.recipe import parse_recipe

    alpha = tmp_path / "alpha.jsonl"
    alpha.write_text(world["messages"].read_text())
    recipe = parse_recipe(_data_recipe(world, alpha), "r")
    first = run_recipe(recipe, tmp_path / "run", evaluate=False, log=lambda _: None)
    assert all(s.ran for s in first.steps)
    assert read_manifest(tmp_path / "run" / "routed")["experts"] == ["anchor", "alpha", "beta"]

    rows = alpha.read_text().splitlines()
    alpha.write_text("\n".join(rows[:-3]) + "\n")
    recipe = parse_recipe(_data_recipe(world, alpha), "r")
    second = run_recipe(recipe, tmp_path / "run", evaluate=False, log=lambda _: None)
    ran = {s.name for s in second.steps if s.ran}
    assert ran == {"experts.alpha.sft", "merge", "route"}, ran
