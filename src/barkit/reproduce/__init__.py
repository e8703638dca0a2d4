"""``barkit reproduce``: BAR against every alternative on the micro-suite, in one resumable run.

:func:`reproduce` builds, for each seed, BAR and the methods it is compared with (monolithic
and sequential retraining, dense weight averaging, BTX, FlexOlmo-style frozen training, BTS),
the ablations and the upgrades, all on the same base, data and per-domain budgets; evaluates
them; and writes ``report.md`` with tables (mean ± std over seeds), PNG plots and the raw JSON.
Every training step goes through the pipeline's :class:`~barkit.pipeline.Runner`, so a rerun
skips whatever is already built.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from barkit.artifacts import atomic_write_text
from barkit.baselines import Budget, domain_plan
from barkit.errors import ConfigError
from barkit.reproduce.run import (
    BAR,
    BTS,
    BTX,
    METHODS,
    Log,
    SeedModels,
    build_seed,
    evaluate_seed,
    inference_cost,
)

# --quick: micro models, a few steps per stage, two test items per category (tests, smoke runs).
QUICK = Budget(
    preset="micro", steps={"midtrain": 2, "sft": 3, "rlvr": 1, "router": 2}, eval_limit=2, base_steps=None
)
# The full run: 3 seeds at the tiny preset, each stage at the tiny preset's own step counts (the
# demo's: midtrain 80, sft 250, rlvr 20, router 40 per domain). One seed trains about 9 midtrain,
# 27 sft, 16 rlvr and 7 router-type stages across all methods, so SFT dominates. At 120 SFT steps
# (the budget until 2026-12-03) the shipped base's code expert scores 2 alone, against 36.5 at
# 250 (math 38 vs 46; docs/results/README.md), so the smaller budget could not test the findings
# about code. The base is the shipped one (barkit.shipped), as BAR starts from a released
# post-trained model; without one the tiny base recipe is rebuilt first (hours). Run one
# --only-seed process per seed with one torch thread each (OMP_NUM_THREADS=1); the wall time is
# in the report.
FULL = Budget(
    preset="tiny",
    steps={"midtrain": 80, "sft": 250, "rlvr": 20, "router": 40},
    eval_limit=25,
    base_steps=None,
)


def override_budget(
    budget: Budget, *, preset: str | None = None, steps: str | None = None, eval_limit: int | None = None
) -> Budget:
    """``budget`` with a preset, ``"kind=N,..."`` step counts (``base`` for the base) and an eval limit."""
    from dataclasses import replace

    from barkit.presets import get_preset

    table, base_steps = dict(budget.steps), budget.base_steps
    for part in (steps or "").split(","):
        if not part.strip():
            continue
        kind, sep, value = part.partition("=")
        kind = kind.strip()
        if not sep or not value.strip().isdigit() or int(value) < 1 or kind not in (*table, "base"):
            raise ConfigError(
                f"--steps {part.strip()!r}: expected KIND=N with N >= 1, KIND one of {', '.join([*table, 'base'])}"
            )
        if kind == "base":
            base_steps = int(value)
        else:
            table[kind] = int(value)
    if preset is not None:
        get_preset(preset)  # an unknown preset fails here, naming the known ones
    if eval_limit is not None and eval_limit < 1:
        raise ConfigError(f"--eval-limit {eval_limit}: must be at least 1")
    return replace(
        budget,
        preset=preset or budget.preset,
        steps=table,
        base_steps=base_steps,
        eval_limit=eval_limit or budget.eval_limit,
    )


def _print(msg: str) -> None:
    print(msg, flush=True)


@dataclass
class ReproduceResult:
    out: Path
    report: Path | None  # None after ``only_seed``: one seed built, no report written
    results: dict[str, Any]


def reproduce(
    out: str | Path,
    *,
    quick: bool = False,
    seeds: int = 3,
    budget: Budget | None = None,
    only_seed: int | None = None,
    progress: bool = True,
    log: Log = _print,
) -> ReproduceResult:
    """Build and evaluate every method over ``seeds`` seeds under ``out``; write the report.

    ``only_seed``: build and evaluate that one seed (the base first, if missing) and write no
    report. Seeds are independent after the shared base, so several processes can each take
    one seed of the same ``out``; a final call without ``only_seed`` then finds every step
    built and every evaluation cached, and writes the report.
    """
    from barkit.pipeline import Runner, build_base
    from barkit.recipe import BaseSpec, builtin_recipe

    if seeds < 1:
        raise ConfigError(f"--seeds {seeds}: need at least one seed")
    if only_seed is not None and not 0 <= only_seed < seeds:
        raise ConfigError(f"--only-seed {only_seed}: must lie in 0..{seeds - 1} (--seeds {seeds})")
    budget = budget or (QUICK if quick else FULL)
    recipe = builtin_recipe("default")
    # The reproduction measures BAR as published: shared tensors averaged, no recovery and the
    # preset's router rate, not the default recipe's three measured deviations (sum, shared-tensor
    # recovery, router lr); the "barkit's default merge" row has them.
    recipe = recipe.model_copy(
        update={
            "preset": budget.preset,
            "base": BaseSpec(arch=recipe.base.arch, steps=budget.base_steps),
            "merge": recipe.merge.model_copy(update={"shared": "mean"}),
            "recover": None,
            "route": recipe.route.model_copy(update={"lr": None}),
        }
    )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    runner = Runner(out, recipe, log)
    base = build_base(runner, progress=progress)
    if only_seed is not None:
        models = build_seed(runner, base, recipe, budget, only_seed, progress)
        scores = evaluate_seed(out, only_seed, models, budget.eval_limit, log)
        return ReproduceResult(out, None, {"seed": only_seed, "scores": scores})
    per_seed: list[dict[str, Any]] = []
    first: SeedModels | None = None
    for seed in range(seeds):
        models = build_seed(runner, base, recipe, budget, seed, progress)
        first = first or models
        per_seed.append(evaluate_seed(out, seed, models, budget.eval_limit, log))
    assert first is not None
    cost_models = {
        "base (dense)": base,
        BAR: first.methods[BAR],
        BTX: first.methods[BTX],
        BTS: first.methods[BTS],
    }
    n_prompts = 8 if budget.preset == "micro" else 32
    inference = inference_cost(out, cost_models, n_prompts, 16 if budget.preset == "micro" else 32)
    from barkit.artifacts import read_manifest
    from barkit.report import ledger_summary
    from barkit.reproduce.report import write_report

    base_manifest = read_manifest(base)
    results = {
        "budget": budget.to_dict(),
        "base": {
            "fingerprint": base_manifest.get("fingerprint"),
            "tokens": base_manifest.get("tokens"),
            "created": base_manifest.get("created"),
            "suite_version": base_manifest.get("suite_version"),
        },
        "stage_seconds": stage_seconds(ledger_summary(out), seeds, out / "eval"),
        "seeds": seeds,
        "plan": {d: list(k) for d, k in domain_plan(recipe).items()},
        "per_seed": per_seed,
        "inference_cost": inference,
        "wall_time_s": round(time.perf_counter() - started, 1),
    }
    report = write_report(out, results, recipe, budget, first)
    atomic_write_text(out / "results.json", json.dumps(results, indent=2) + "\n")
    return ReproduceResult(out, report, results)


def stage_seconds(ledger: Sequence[dict[str, Any]], seeds: int, evals: Path) -> dict[str, float]:
    """Seconds of every step that ran and of every evaluation, per seed (``seedS``) and for the
    shared steps (``shared``).

    Measured where each step ran (``--only-seed`` processes included), so the total is the
    compute the reproduction took, unlike the wall time of the invocation that writes the report.
    """
    totals = {f"seed{s}": 0.0 for s in range(seeds)}
    totals["shared"] = 0.0
    for entry in ledger:
        if not entry.get("ran"):
            continue
        head = str(entry.get("step", "")).split(".")[0]
        key = head if head in totals else "shared"
        totals[key] += float(entry.get("seconds", 0) or 0)
    for seed in range(seeds):
        for file in sorted((evals / f"seed{seed}").glob("*.json")):
            try:
                totals[f"seed{seed}"] += float(json.loads(file.read_text()).get("wall_time_s", 0) or 0)
            except (json.JSONDecodeError, AttributeError):
                continue
    return {k: round(v, 1) for k, v in totals.items()}


def method_rows() -> Sequence[str]:
    """The main table's rows, in order."""
    return METHODS


__all__ = [
    "FULL",
    "QUICK",
    "Budget",
    "ReproduceResult",
    "method_rows",
    "override_budget",
    "reproduce",
    "stage_seconds",
]
