"""``barkit reproduce --quick``: every method, ablation and upgrade built, evaluated and reported.

One quick run (micro preset, one seed, two test items per category) is built per session and
rerun once; the other tests read its artifacts. The building blocks that the run cannot check
by its structure alone (row-wise averaging of a grown vocabulary, the top-k copy, the dense
multi-domain stage, the cost arithmetic) are checked directly.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from barkit.artifacts import read_manifest
from barkit.baselines import Budget, _row_mean, domain_plan, with_top_k
from barkit.errors import ConfigError, IncompatibleError
from barkit.reproduce import QUICK, reproduce
from barkit.reproduce.run import METHODS
from barkit.reproduce.summary import aggregate, cost_scaling
from barkit.suite import CATEGORIES, DOMAINS

# The quick run builds every method (about 80 steps at micro size): about 1.5 minutes of CPU,
# several times that in wall time on a busy shared machine, hence the longer timeout.
pytestmark = pytest.mark.timeout(900)


def _ledger(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "ledger.jsonl").read_text().splitlines()]


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, Any], int]]:
    out = tmp_path_factory.mktemp("reproduce")
    # Micro models gain nothing from a second thread, and spinning threads slow a shared machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with contextlib.redirect_stderr(io.StringIO()) as err:
            result = reproduce(out, quick=True, seeds=1, progress=False, log=lambda _: None)
        _STDERR["first run"] = err.getvalue()
        yield out, result.results, len(_ledger(out))
    finally:
        torch.set_num_threads(threads)


# what the fixture's run printed to stderr
_STDERR: dict[str, str] = {}


def test_no_progress_draws_no_bar(run: tuple[Path, dict[str, Any], int]) -> None:
    """``progress=False`` reaches every training stage, the recovery and routers included."""
    printed = _STDERR["first run"]
    assert "it/s" not in printed and "s/it" not in printed, printed[-500:]


def test_every_method_row_and_file_is_there(run: tuple[Path, dict[str, Any], int]) -> None:
    out, results, _ = run
    report = (out / "report.md").read_text()
    for method in METHODS:
        assert f"| {method} |" in report, method
        scores = results["per_seed"][0]["methods"][method]
        assert set(scores) == {*CATEGORIES, "overall"}
        assert all(0.0 <= v <= 100.0 for v in scores.values())
    for plot in ("scores", "rewards", "routing", "cost_scaling"):
        assert (out / "plots" / f"{plot}.png").stat().st_size > 1000, plot
    assert json.loads((out / "results.json").read_text())["seeds"] == 1
    for section in (
        "## Ablations",
        "## Upgrades",
        "## Cost of domain updates",
        "## Inference cost",
        "## What the numbers say",
    ):
        assert section in report, section


def test_each_method_trained_through_the_runner(run: tuple[Path, dict[str, Any], int]) -> None:
    out, _, _ = run
    steps = {e["step"] for e in _ledger(out) if e["ran"]}
    for prefix in (
        "seed0.bar.route",
        "seed0.flexolmo.route",
        "seed0.monolithic_post.sft",
        "seed0.monolithic_mid.midtrain",
        "seed0.sequential.08_safety_sft",
        "seed0.average.mid",
        "seed0.btx.finetune",
        "seed0.bts.stitch",
        "seed0.ablations.rlvr_frozen.math",
        "seed0.upgrades.math_rl",
    ):
        assert prefix in steps, prefix


def test_rerun_skips_every_step(run: tuple[Path, dict[str, Any], int]) -> None:
    out, _, first_lines = run
    reproduce(out, quick=True, seeds=1, progress=False, log=lambda _: None)
    again = _ledger(out)[first_lines:]
    assert again and not any(e["ran"] for e in again), [e["step"] for e in again if e["ran"]]
    # One seed alone (what a per-seed worker process runs): nothing to build, no report.
    lines = len(_ledger(out))
    one = reproduce(out, quick=True, seeds=1, only_seed=0, progress=False, log=lambda _: None)
    assert one.report is None and one.results["seed"] == 0
    assert not any(e["ran"] for e in _ledger(out)[lines:])


def test_flexolmo_freezes_shared_and_bar_does_not(run: tuple[Path, dict[str, Any], int]) -> None:
    out, _, _ = run
    flex = read_manifest(out / "seed0/flexolmo/experts/math/rlvr")["trainable"]
    bar = read_manifest(out / "seed0/bar/experts/math/rlvr")["trainable"]
    assert set(flex) == {"expert", "router"} and "*" in bar
    frozen = read_manifest(out / "seed0/ablations/rlvr_frozen/math")
    assert set(frozen["trainable"]) == {"expert", "router"}
    assert frozen["metrics"]["reward_curve"], "the frozen RL run logged no rewards"


def test_dense_multi_domain_stage(run: tuple[Path, dict[str, Any], int]) -> None:
    out, _, _ = run
    sft = read_manifest(out / "seed0/monolithic_post/sft")
    assert sft["dense"] is True and sft["domains"] == list(DOMAINS)
    assert sft["config"]["steps"] == QUICK.steps["sft"] * len(DOMAINS)
    assert set(sft["added_tokens"]) == {"<tool_call>", "</tool_call>"}
    assert sft["base_fingerprint"] == read_manifest(out / "base")["fingerprint"]
    base, tuned = _weights(out / "base"), _weights(out / "seed0/monolithic_post/sft")
    # everything trains on a dense model: every tensor the base had has moved
    assert all(not torch.equal(base[k], tuned[k][: base[k].shape[0]]) for k in base if "norm" not in k)


def test_top_k_copy_changes_only_the_config(run: tuple[Path, dict[str, Any], int], tmp_path: Path) -> None:
    out, _, _ = run
    routed = out / "seed0/bar/routed"
    derived = out / "seed0/ablations/top_k"
    assert json.loads((derived / "config.json").read_text())["num_experts_per_tok"] == 4
    assert _weights(routed).keys() == _weights(derived).keys()
    assert read_manifest(derived)["fingerprint"] != read_manifest(routed)["fingerprint"]
    with pytest.raises(ConfigError, match="top_k=9"):
        with_top_k(routed, tmp_path / "x", 9)


def test_row_mean_keeps_an_added_tokens_rows() -> None:
    narrow = torch.zeros(3, 2)
    wide = torch.cat([torch.full((3, 2), 2.0), torch.full((2, 2), 5.0)])
    mean = _row_mean([narrow, wide])
    assert torch.equal(mean[:3], torch.ones(3, 2)) and torch.equal(mean[3:], torch.full((2, 2), 5.0))


def test_average_refuses_different_bases(run: tuple[Path, dict[str, Any], int], tmp_path: Path) -> None:
    import shutil

    from barkit.baselines import average_dense

    out, _, _ = run
    a = out / "seed0/dense/math/sft"
    other = tmp_path / "other"
    shutil.copytree(out / "seed0/dense/safety/sft", other)
    manifest = json.loads((other / "barkit.json").read_text())
    (other / "barkit.json").write_text(json.dumps({**manifest, "base_fingerprint": "0" * 16}))
    with pytest.raises(IncompatibleError, match="different bases"):
        average_dense([a, other], tmp_path / "avg")


def test_cost_scaling_arithmetic() -> None:
    from barkit.recipe import builtin_recipe

    recipe = builtin_recipe("default")
    plan = domain_plan(recipe)
    budget = Budget(preset="micro", steps={"midtrain": 2, "sft": 3, "rlvr": 1, "router": 2}, eval_limit=1)
    ledger = [
        {"step": "seed0.bar.route", "ran": True, "tokens": 10},
        *({"step": f"seed0.bar.experts.{n}.sft", "ran": True, "tokens": 100} for n in recipe.experts),
        # mono sft over 4 domains at 3 steps each: 1200 tokens = 100 per step
        {"step": "seed0.monolithic_mid.sft", "ran": True, "tokens": 1200},
        {"step": "seed0.monolithic_mid.midtrain", "ran": True, "tokens": 400},
        {"step": "seed0.monolithic_mid.rlvr", "ran": True, "tokens": 20},
    ]
    cost = cost_scaling(ledger, plan, budget, {s.domain: n for n, s in recipe.experts.items()})
    assert cost["bar"] == [110, 110, 110, 110]
    # k=1 (math): midtrain 2 steps x 100/step + sft 3 x 100 + rlvr 1 x 10
    assert cost["monolithic"][0] == 200 + 300 + 10
    assert cost["monolithic"][-1] == 400 + 1200 + 20


def test_aggregate_mean_and_std() -> None:
    table = aggregate([{"m": {"a": 1.0}}, {"m": {"a": 3.0}}])
    assert table["m"]["a"] == (2.0, pytest.approx(2**0.5))


def test_bad_budget_and_seeds(tmp_path: Path) -> None:
    from barkit.cli import main

    with pytest.raises(ConfigError, match="router"):
        Budget(preset="micro", steps={"midtrain": 1, "sft": 1, "rlvr": 1}, eval_limit=1)
    assert main(["reproduce", "--out", str(tmp_path / "r"), "--seeds", "0"]) == 2
    assert main(["reproduce", "--out", str(tmp_path / "r"), "--steps", "sft=x"]) == 2
    assert main(["reproduce", "--out", str(tmp_path / "r"), "--preset", "huge"]) == 2
    assert main(["reproduce", "--out", str(tmp_path / "r"), "--seeds", "3", "--only-seed", "3"]) == 2
    assert not (tmp_path / "r").exists()


def test_budget_overrides() -> None:
    from barkit.reproduce import FULL, override_budget

    budget = override_budget(FULL, preset="tiny", steps="sft=40, base=600", eval_limit=30)
    assert budget.preset == "tiny" and budget.steps["sft"] == 40 and budget.base_steps == 600
    assert budget.steps["rlvr"] == FULL.steps["rlvr"] and budget.eval_limit == 30


def test_compute_per_seed_counts_steps_and_evaluations(run: tuple[Path, dict[str, Any], int]) -> None:
    """The report's compute line sums every step that ran (per seed, the shared base apart) and
    every evaluation file; a rerun that skips everything adds nothing."""
    from barkit.reproduce import stage_seconds

    out, results, _ = run
    ledger = _ledger(out)
    spent = stage_seconds(ledger, 1, out / "eval")
    ran = sum(float(e.get("seconds", 0)) for e in ledger if e.get("ran") and e["step"].startswith("seed0."))
    evals = sum(json.loads(f.read_text())["wall_time_s"] for f in (out / "eval" / "seed0").glob("*.json"))
    assert spent["seed0"] == pytest.approx(ran + evals, abs=0.2)
    assert ran > 0 and evals > 0
    assert "shared" in spent and set(spent) == {"seed0", "shared"}
    skipped = [{**e, "ran": False} for e in ledger]
    assert stage_seconds(skipped, 1, out / "nowhere") == {"seed0": 0.0, "shared": 0.0}
    assert "Training and evaluation time, from the ledger" in (out / "report.md").read_text()
    assert results["base"]["fingerprint"] == read_manifest(out / "base")["fingerprint"]


def test_every_finding_has_a_verdict(run: tuple[Path, dict[str, Any], int]) -> None:
    """Each of BAR's findings the issue lists gets a Reproduced / Not reproduced / Inconclusive line."""
    out, _, _ = run
    report = (out / "report.md").read_text()
    verdicts = [line for line in report.splitlines() if line.startswith("- **")]
    for claim in (
        "above monolithic post-training",
        "BTX scores below BAR",
        "dense weight averaging fails after mid-training",
        "embeddings and LM head trainable",
        "RLVR reward stays flat",
        "replacing code v1 with code v2",
        "adding RL to the math expert",
        "one expert fewer",
        "mixing general data",
        "update cost grows linearly",
    ):
        assert [v for v in verdicts if claim in v], claim


def test_upgrade_verdict_names_the_merge_when_the_expert_is_lost_in_it() -> None:
    """An upgraded expert that scores well alone but not in the routed model: the verdict gives the
    measured cause (the merge), not a candidate about the expert's own score."""
    from barkit.reproduce.summary import Noise, ablation_findings
    from barkit.suite import CATEGORIES

    def row(**scores: float) -> dict[str, float]:
        return {c: scores.get(c, 0.0) for c in CATEGORIES}

    def seed(code_alone: float, code_routed: float) -> dict[str, Any]:
        return {
            "experts_alone": {"code": {"code": code_alone}, "math": {"math": 40.0}},
            "upgrades": {"start": row(), "code_v2": row(code=code_routed), "math_rl": row(code=code_routed)},
        }

    lost = ablation_findings([seed(30.0, 0.0), seed(32.0, 0.0)], Noise(1.0, 1.0), None)
    line = next(v for v in lost if "code v1 with code v2" in v)
    assert "Measured cause" in line and "scores 0.0 in code" in line, line
    kept = ablation_findings([seed(2.0, 0.0), seed(4.0, 0.0)], Noise(1.0, 1.0), None)
    line = next(v for v in kept if "code v1 with code v2" in v)
    assert "Candidate reason" in line and "little or no gain" in line, line
