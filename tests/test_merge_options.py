"""The merge options of issue #11 through a recipe, end to end at micro size.

One recipe turns every option on: FlexOlmo's domain router init (``router_init: domain``), a
tool expert that trains only its added tokens' rows (``embeddings:new``, ``lm_head:new``), the
recovery after the merge (``recover:``) and the router's domain-label loss
(``route: {domain_loss}``). Each test reads the artifacts of that one run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from barkit.artifacts import read_manifest
from barkit.errors import ConfigError
from barkit.families import LLAMA
from barkit.recipe import parse_recipe

EXPERTS = ["math", "tool_use"]


def _recipe(base: Path) -> dict[str, Any]:
    return {
        "name": "options",
        "preset": "micro",
        "base": {"path": str(base)},
        "router_init": "domain",
        "experts": {
            "math": {"domain": "math", "stages": [{"kind": "sft", "steps": 2}]},
            "tool_use": {
                "domain": "tool_use",
                "stages": [
                    {
                        "kind": "sft",
                        "steps": 3,
                        "trainable": ["expert", "router", "embeddings:new", "lm_head:new"],
                        # long enough rows that the tool calls are not cut off (micro rows are 64)
                        "overrides": {"seq_len": 320, "batch_size": 2},
                    }
                ],
            },
        },
        "recover": {"steps": 2, "overrides": {"optim": {"lr": 1e-3}}},
        "route": {"steps": 2, "domain_loss": 0.5},
    }


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from barkit.modeling import build_dense, save_model
    from barkit.pipeline import run_recipe
    from barkit.presets import get_preset
    from barkit.suite import CATEGORIES, get_category
    from barkit.tokenizer import train_tokenizer

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("options")
    # suite text without the tool category, so that the tool markers are new tokens
    texts = [
        t
        for name in CATEGORIES
        if name != "tool_use"
        for item in get_category(name).items("train", 20, 0)
        for t in (item.prompt, item.answer)
    ]
    tok = train_tokenizer(500, texts=texts)
    save_model(build_dense("llama", get_preset("micro"), tok, seed=0), tok, root / "base", {"stage": "base"})
    out = root / "run"
    run_recipe(parse_recipe(_recipe(root / "base"), "test"), out, evaluate=False, log=lambda _: None)
    return out


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def _moved(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> set[str]:
    return {n for n, t in after.items() if t.shape != before[n].shape or not torch.equal(t, before[n])}


def test_domain_router_init_is_chosen_and_its_rows_survive_the_merge(run: Path) -> None:
    branches = [_weights(run / "experts" / e / "branch") for e in EXPERTS]
    experts = [_weights(run / "experts" / e / "sft") for e in EXPERTS]
    merged = _weights(run / "merged")
    for e in EXPERTS:
        assert read_manifest(run / "experts" / e / "branch")["router_init"] == "domain"
    for layer in range(2):
        router = LLAMA.router_tensor_name(layer)
        assert all(b[router].abs().sum() > 0 for b in branches)  # the domain init set them
        assert not torch.equal(branches[0][router][1], branches[1][router][1])
        # row 0 (the general mean) is the same in every branch, so taking it from one loses nothing
        assert torch.equal(branches[0][router][0], branches[1][router][0])
        expected = torch.stack([experts[0][router][0], experts[0][router][1], experts[1][router][1]])
        assert torch.equal(merged[router], expected)


def test_tool_expert_trained_only_its_new_rows(run: Path) -> None:
    from barkit.suite.tools import TOOL_TOKENS

    before, after = _weights(run / "experts/tool_use/branch"), _weights(run / "experts/tool_use/sft")
    manifest = read_manifest(run / "experts/tool_use/sft")
    ids = sorted(manifest["added_tokens"][t] for t in TOOL_TOKENS)
    rows = before["model.embed_tokens.weight"].shape[0]
    assert ids == [rows, rows + 1]
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        assert torch.equal(after[name][:rows], before[name][:rows]), f"an old row of {name} moved"
        mean = before[name].mean(dim=0)  # where add_special_tokens starts the new rows
        assert all(not torch.allclose(after[name][i], mean) for i in ids), f"new rows of {name} did not train"
    moved = _moved(before, after)
    assert {LLAMA.tensor_group(n) for n in moved} == {"expert", "router", "embeddings", "lm_head"}


def test_recovery_moves_shared_tensors_and_keeps_experts(run: Path) -> None:
    merged, recovered = _weights(run / "merged"), _weights(run / "recovered")
    moved = _moved(merged, recovered)
    groups = {LLAMA.tensor_group(n) for n in moved}
    assert groups == {"router", "embeddings", "lm_head", "norms"}, groups
    for layer in range(2):
        router = LLAMA.router_tensor_name(layer)
        assert torch.equal(recovered[router][0], merged[router][0]), "the anchor's router row moved"
    manifest = read_manifest(run / "recovered")
    assert manifest["stage"] == "recover" and manifest["experts"] == ["anchor", *EXPERTS]
    assert manifest["merge_inputs"] == read_manifest(run / "merged")["inputs"]
    assert manifest["data"]["sample"] == 0.05


def test_router_trains_on_the_recovered_model_with_the_domain_loss(run: Path) -> None:
    recovered, routed = _weights(run / "recovered"), _weights(run / "routed")
    moved = _moved(recovered, routed)
    assert moved and {LLAMA.tensor_group(n) for n in moved} == {"router"}
    manifest = read_manifest(run / "routed")
    assert manifest["inputs"][0]["path"] == str(run / "recovered")
    assert manifest["config"]["domain_loss"] == 0.5
    lines = (run / "routed" / "metrics.jsonl").read_text().splitlines()
    assert lines and all('"domain_loss"' in line for line in lines)
    assert manifest["merge_inputs"] == read_manifest(run / "merged")["inputs"]


def test_upgrade_replays_the_recorded_recovery_and_router(run: Path, tmp_path: Path) -> None:
    """An upgrade of a routed model built with ``recover:`` and a domain-label router rebuilds it
    the same way: the recovery and the router stage get the recorded configs back, and with no
    expert replaced and the same thread count the result is the original, bit for bit."""
    from barkit.upgrade import upgrade

    torch.set_num_threads(1)
    original = read_manifest(run / "routed")
    assert original["recover_config"]["config"] == read_manifest(run / "recovered")["config"]
    assert original["recover_config"]["sample"] == 0.05
    upgraded = upgrade(run / "routed", {}, tmp_path / "up", progress=False)
    assert upgraded["config"] == original["config"] and upgraded["config"]["domain_loss"] == 0.5
    assert upgraded["recover_config"] == original["recover_config"]
    before, after = _weights(run / "routed"), _weights(tmp_path / "up")
    assert sorted(before) == sorted(after)
    assert all(torch.equal(before[k], after[k]) for k in before), "the replay rebuilt another model"
    assert not list(tmp_path.glob(".up.*")), "the intermediate merge and recovery are removed"
    changed = upgrade(run / "routed", {}, tmp_path / "up2", steps=1, progress=False)
    assert changed["config"]["stage"]["steps"] == 1


def test_cli_recover_and_load_time_errors(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from barkit.cli import main

    out = tmp_path / "rec"
    args = ["recover", str(run / "merged"), "--out", str(out), "--preset", "micro", "--steps", "1"]
    assert main([*args, "--lr", "1e-3", "--trainable", "norms", "--no-progress"]) == 0
    assert "recover:" not in capsys.readouterr().err, "--no-progress draws no bar"
    moved = _moved(_weights(run / "merged"), _weights(out))
    assert moved and {LLAMA.tensor_group(n) for n in moved} == {"norms"}
    recipe = _recipe(run.parent / "base")
    with pytest.raises(ConfigError, match="recover"):
        parse_recipe({**recipe, "recover": {"overrides": {"optim": {"lr": -1}}}}, "t")
    with pytest.raises(ConfigError, match="domain_loss"):
        parse_recipe({**recipe, "route": {"domain_loss": -1}}, "t")
    assert parse_recipe({**recipe, "recover": None}, "t").recover is None
