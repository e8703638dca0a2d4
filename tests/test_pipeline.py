"""The recipe pipeline end to end at micro size: run, skip, rebuild one expert, route, upgrade.

One small recipe (two experts, SFT only) is built once per session; the tests read its
artifacts. The router invariant (every non-router tensor bit-identical) and the upgrade path
are checked on real pipeline outputs, not on hand-made fixtures.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from barkit.errors import ConfigError
from barkit.pipeline import run_recipe
from barkit.recipe import parse_recipe

RECIPE = {
    "name": "test",
    "preset": "micro",
    "seed": 0,
    "experts": {
        "math": {"domain": "math", "stages": [{"kind": "sft", "steps": 3}]},
        "tool_use": {
            "domain": "tool_use",
            "stages": [{"kind": "sft", "steps": 3, "add_special_tokens": ["<tool_call>", "</tool_call>"]}],
        },
    },
    "route": {"sample": 0.05, "steps": 3},
    "eval": {"limit": 2, "categories": ["math", "chat"]},
}


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def _ledger(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "ledger.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run")
    run_recipe(parse_recipe(RECIPE, "test"), out, log=lambda _: None)
    return out


def test_layout_and_report(run: Path) -> None:
    for rel in [
        "base",
        "experts/math/branch",
        "experts/math/sft",
        "experts/tool_use/sft",
        "merged",
        "routed",
    ]:
        assert (run / rel / "barkit.json").is_file(), rel
    assert (run / "report.md").read_text().count("|") > 10
    assert (run / "plots" / "scores.png").stat().st_size > 1000
    assert (run / "plots" / "routing.png").stat().st_size > 1000
    assert {e["step"] for e in _ledger(run)} >= {"base", "experts.math.sft", "merge", "route"}
    merged = json.loads((run / "merged" / "barkit.json").read_text())
    assert merged["experts"] == ["anchor", "math", "tool_use"]


def test_router_stage_changes_only_the_router(run: Path) -> None:
    before, after = _weights(run / "merged"), _weights(run / "routed")
    assert before.keys() == after.keys()
    moved = [k for k in before if not torch.equal(before[k], after[k])]
    assert moved, "the router did not train"
    assert all(k.endswith("mlp.gate.weight") for k in moved), moved
    fractions = json.loads((run / "routed" / "routing.json").read_text())["fractions"]
    assert set(fractions) == {"math", "tool_use", "knowledge", "reasoning", "chat"}
    for row in fractions.values():
        assert len(row) == 3 and abs(sum(row) - 1.0) < 1e-5


def test_rerun_skips_everything(run: Path) -> None:
    n = len(_ledger(run))
    run_recipe(parse_recipe(RECIPE, "test"), run, log=lambda _: None)
    new = [e for e in _ledger(run)[n:] if not e["step"].startswith("eval.")]
    assert new and not any(e["ran"] for e in new)


def test_changing_one_expert_rebuilds_only_it_merge_and_router(run: Path, tmp_path: Path) -> None:
    import shutil

    out = tmp_path / "run"
    shutil.copytree(run, out)
    changed = json.loads(json.dumps(RECIPE))
    changed["experts"]["math"]["stages"][0]["steps"] = 4
    n = len(_ledger(out))
    run_recipe(parse_recipe(changed, "test"), out, evaluate=False, log=lambda _: None)
    ran = {e["step"] for e in _ledger(out)[n:] if e["ran"]}
    assert ran == {"experts.math.sft", "merge", "route"}


def test_sum_policy_in_a_recipe_reads_the_base(run: Path, tmp_path: Path) -> None:
    """`merge: {shared: sum}` rebuilds only merge and router; the merge is base + summed changes,
    and an upgrade of that model finds the base again through its manifest."""
    import shutil

    from barkit.upgrade import upgrade

    out = tmp_path / "run"
    shutil.copytree(run, out)
    changed = json.loads(json.dumps(RECIPE)) | {"merge": {"shared": "sum"}}
    n = len(_ledger(out))
    run_recipe(parse_recipe(changed, "test"), out, evaluate=False, log=lambda _: None)
    assert {e["step"] for e in _ledger(out)[n:] if e["ran"]} == {"merge", "route"}
    assert json.loads((out / "merged" / "barkit.json").read_text())["config"]["base"] == str(out / "base")
    name = "model.layers.0.self_attn.q_proj.weight"
    base, merged = _weights(out / "base")[name], _weights(out / "merged")[name]
    branches = [_weights(out / "experts" / e / "sft")[name] for e in ("math", "tool_use")]
    expected = base.double() + sum(b.double() - base.double() for b in branches)
    torch.testing.assert_close(merged.double(), expected, atol=1e-6, rtol=0)
    upgraded = upgrade(out / "routed", {}, tmp_path / "up", preset="micro", steps=1, progress=False)
    assert upgraded["merge_config"]["shared"] == "sum"


def test_weighted_override_in_a_recipe_merges(run: Path, tmp_path: Path) -> None:
    """`merge: {overrides: {"*embed*": weighted}, weights: [...]}` loads, merges and weighs."""
    import shutil

    out = tmp_path / "run"
    shutil.copytree(run, out)
    merge = {"overrides": {"*embed*": "weighted"}, "weights": [0.75, 0.25]}
    changed = json.loads(json.dumps(RECIPE)) | {"merge": merge}
    n = len(_ledger(out))
    run_recipe(parse_recipe(changed, "test"), out, evaluate=False, log=lambda _: None)
    assert {e["step"] for e in _ledger(out)[n:] if e["ran"]} == {"merge", "route"}
    merged = _weights(out / "merged")
    a, b = (_weights(out / "experts" / e / "sft") for e in ("math", "tool_use"))
    name = "model.embed_tokens.weight"
    rows = a[name].shape[0]  # the vocabulary both experts share (tool_use added two tokens)
    expected = ((a[name].double() * 0.75 + b[name][:rows].double() * 0.25) / 1.0).float()
    assert torch.equal(merged[name][:rows], expected)
    name = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(merged[name], torch.stack([a[name], b[name]]).double().mean(0).float())


def test_upgrade_replaces_one_expert(run: Path, tmp_path: Path) -> None:
    from barkit.upgrade import upgrade

    out = tmp_path / "upgraded"
    manifest = upgrade(
        run / "routed",
        {"math": run / "experts" / "math" / "sft"},
        out,
        preset="micro",
        steps=2,
        progress=False,
    )
    assert manifest["experts"] == ["anchor", "math", "tool_use"]
    before, after = _weights(run / "routed"), _weights(out)
    # Same inputs re-merged: only router rows can differ (they were retrained from the merge).
    moved = [k for k in before if not torch.equal(before[k], after[k])]
    assert all(k.endswith("mlp.gate.weight") for k in moved), moved


@pytest.mark.timeout(900)
def test_quick_demo_cli(tmp_path: Path) -> None:
    """`barkit demo --quick` (the whole default recipe at micro size) finishes and prints a table.

    No wall-clock assertion: on a shared 2-core machine its time says more about the neighbours
    than about barkit (it took over 5 minutes beside two training jobs, under 2 alone)."""
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "barkit.cli", "demo", "--quick", "--out", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        timeout=880,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "BAR (routed)" in proc.stdout and "overall" in proc.stdout


def test_experts_built_at_once_match_the_sequential_layout(tmp_path: Path) -> None:
    """jobs=2 builds each expert in its own process; a rerun at jobs=1 finds every step up to date."""
    recipe = parse_recipe(RECIPE, "test")
    result = run_recipe(recipe, tmp_path / "run", evaluate=False, log=lambda _: None, jobs=2)
    names = [s.name for s in result.steps]
    assert names == [
        "base",
        "experts.math.branch",
        "experts.math.sft",
        "experts.tool_use.branch",
        "experts.tool_use.sft",
        "merge",
        "route",
    ]
    assert all(s.ran for s in result.steps[1:]) and set(result.experts) == {"math", "tool_use"}
    ran = [e["step"] for e in _ledger(tmp_path / "run") if e["ran"]]
    assert sorted(ran) == sorted(names), "each step ran exactly once"
    again = run_recipe(recipe, tmp_path / "run", evaluate=False, log=lambda _: None, jobs=1)
    assert not any(s.ran for s in again.steps)
    with pytest.raises(ConfigError, match="jobs"):
        run_recipe(recipe, tmp_path / "run", evaluate=False, log=lambda _: None, jobs=0)


def test_router_learning_rate_is_an_option(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from barkit.cli import main
    from barkit.route import route_plan

    default = route_plan(run / "merged", preset="micro", steps=2)
    faster = route_plan(run / "merged", preset="micro", steps=2, lr=0.02)
    assert faster.cfg.optim.lr == 0.02 != default.cfg.optim.lr
    assert faster.cfg.model_dump() | {"optim": None} == default.cfg.model_dump() | {"optim": None}
    with pytest.raises(ConfigError, match=r"optim\.lr"):
        route_plan(run / "merged", preset="micro", lr=0.0)
    assert parse_recipe({**RECIPE, "route": {"lr": 0.02}}, "test").route.lr == 0.02
    assert main(["route", str(run / "merged"), "--out", str(tmp_path / "o"), "--lr", "-1"]) == 2
    assert "optim.lr" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    argv = ["route", str(run / "merged"), "--out", str(tmp_path / "o"), "--preset", "micro", "--steps", "1"]
    assert main([*argv, "--no-progress"]) == 0
    assert "router:" not in capsys.readouterr().err, "--no-progress draws no bar"


def test_two_runners_never_build_the_same_step_at_once(tmp_path: Path) -> None:
    """A second process (here a thread with its own lock handle) waits for a step another one
    is building, then finds it up to date instead of building it again."""
    import threading

    from barkit.pipeline import Runner

    recipe = parse_recipe(RECIPE, "test")
    started, release = threading.Event(), threading.Event()
    builds: list[str] = []
    logs: list[str] = []

    def build(path: Path) -> None:
        builds.append(threading.current_thread().name)
        started.set()
        assert release.wait(10)
        path.mkdir(parents=True)
        (path / "barkit.json").write_text(json.dumps({"kind": "test", "fingerprint": "abc"}))

    def run_step() -> None:
        Runner(tmp_path, recipe, logs.append).step("s", "x/step", {"a": 1}, [], build)

    first = threading.Thread(target=run_step, name="first")
    first.start()
    assert started.wait(10)
    second = threading.Thread(target=run_step, name="second")
    second.start()
    for _ in range(200):  # until the second one reports that it waits
        if any(line.startswith("[wait] s") for line in logs):
            break
        threading.Event().wait(0.01)
    assert any(line.startswith("[wait] s") for line in logs), logs
    release.set()
    first.join(10)
    second.join(10)
    assert builds == ["first"], logs
    assert any(line.startswith("[skip] s") for line in logs), logs
    ledger = [json.loads(line) for line in (tmp_path / "ledger.jsonl").read_text().splitlines()]
    assert [row["ran"] for row in ledger] == [True, False]


def test_experts_at_once_start_longest_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker pool gets the longest expert first; the paths and outcomes come back by name
    and in recipe order."""
    import barkit.jobs
    from barkit.pipeline import Runner, _build_experts_at_once

    recipe_dict = json.loads(json.dumps(RECIPE))
    recipe_dict["experts"]["tool_use"]["stages"][0]["steps"] = 30  # ten times math's
    recipe = parse_recipe(recipe_dict, "test")
    submitted: list[str] = []

    def fake(fn: Any, calls: list[tuple[Any, ...]], jobs: int, *, desc: str) -> list[Any]:
        submitted.extend(call[2] for call in calls)
        return [(tmp_path / call[2], []) for call in calls]

    monkeypatch.setattr(barkit.jobs, "run_at_once", fake)
    paths = _build_experts_at_once(
        Runner(tmp_path, recipe, lambda _: None), ["math", "tool_use"], tmp_path, 2
    )
    assert submitted == ["tool_use", "math"]
    assert list(paths) == ["math", "tool_use"] and paths["math"] == tmp_path / "math"
