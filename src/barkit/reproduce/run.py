"""Build and evaluate every method, ablation and upgrade of one reproduction run.

Layout under ``OUT``: ``base/`` (one base shared by all seeds: BAR starts from a given
post-trained model, so seeds vary post-training only), ``seed<S>/<method>/...`` for every
training step, ``eval/seed<S>/<label>.json`` (cached by model fingerprint), ``ledger.jsonl``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from barkit.baselines import (
    BarRun,
    Budget,
    Context,
    ScopedRunner,
    averaged,
    bar_pipeline,
    bts,
    btx,
    budget_recipe,
    dense_experts,
    domain_plan,
    monolithic,
    sequential,
    stage_step,
    with_top_k,
)
from barkit.pipeline import Runner, build_merge, build_recover, build_route
from barkit.recipe import Recipe, builtin_recipe
from barkit.suite import CATEGORIES, GENERAL

Log = Callable[[str], None]

# Main-table rows, in the order the report shows them.
BAR = "BAR"
MONO_POST = "Monolithic retraining (post-training only)"
MONO_MID = "Monolithic retraining (with mid-training)"
SEQUENTIAL = "Sequential continual training"
AVG_POST = "Dense weight averaging (no mid-training)"
AVG_MID = "Dense weight averaging (with mid-training)"
BTX = "BTX"
FLEXOLMO = "FlexOlmo-style (shared frozen)"
BTS = "BTS"
# BAR's experts merged and routed with barkit's default recipe instead of BAR's published settings
# (shared tensors summed as task vectors, router at lr 2e-2; see the README): same experts, same
# router budget, so the row isolates what the two measured deviations change.
BAR_SUM = "BAR experts, barkit's default merge (sum, shared-tensor recovery, router lr 2e-2)"
METHODS = (BAR, BAR_SUM, MONO_POST, MONO_MID, SEQUENTIAL, AVG_POST, AVG_MID, BTX, FLEXOLMO, BTS)
FROZEN = ["expert", "router"]


@dataclass
class SeedModels:
    """Every model folder one seed produced, by role."""

    methods: dict[str, Path] = field(default_factory=dict)
    bar: BarRun = field(default_factory=BarRun)
    flex: BarRun = field(default_factory=BarRun)
    rl_frozen: dict[str, Path] = field(default_factory=dict)
    sft_domain_only: dict[str, Path] = field(default_factory=dict)
    top_k_minus_one: Path | None = None
    upgrades: dict[str, Path] = field(default_factory=dict)


def build_seed(
    runner: Runner, base: Path, recipe: Recipe, budget: Budget, seed: int, progress: bool
) -> SeedModels:
    """Every method, ablation and upgrade for one seed (each step skipped when up to date)."""
    ctx = Context(runner, base, budget, seed, domain_plan(recipe), progress).scoped(f"seed{seed}")
    models = SeedModels()
    bar_recipe = budget_recipe(recipe, budget, seed)
    models.bar = bar_pipeline(ctx, bar_recipe, "bar")
    bar_sum = _barkit_default_merge(ctx, bar_recipe, models.bar)
    models.flex = bar_pipeline(ctx, budget_recipe(recipe, budget, seed, FROZEN), "flexolmo")
    with_mid, post_only = dense_experts(ctx, midtrain=True), dense_experts(ctx, midtrain=False)
    assert models.bar.routed is not None and models.flex.routed is not None
    models.methods = {
        BAR: models.bar.routed,
        BAR_SUM: bar_sum,
        MONO_POST: monolithic(ctx, midtrain=False),
        MONO_MID: monolithic(ctx, midtrain=True),
        SEQUENTIAL: sequential(ctx),
        AVG_POST: averaged(ctx, "average/post", post_only),
        AVG_MID: averaged(ctx, "average/mid", with_mid),
        BTX: btx(ctx, with_mid),
        FLEXOLMO: models.flex.routed,
        BTS: bts(ctx, with_mid),
    }
    _ablations(ctx, recipe, models)
    models.upgrades = _upgrades(ctx, recipe, models.bar)
    return models


def _barkit_default_merge(ctx: Context, recipe: Recipe, bar: BarRun) -> Path:
    """BAR's experts merged, recovered and routed under ``bar_default/`` with the merge, the
    recovery and the router learning rate of barkit's built-in default recipe (the router keeps
    the budget's steps and sample; the recovery takes the router's step count)."""
    default = builtin_recipe("default")
    recover = default.recover and default.recover.model_copy(update={"steps": recipe.route.steps})
    variant = recipe.model_copy(
        update={
            "merge": default.merge,
            "recover": recover,
            "route": recipe.route.model_copy(update={"lr": default.route.lr}),
        }
    )
    scoped = ScopedRunner(ctx.runner, "bar_default", variant)
    merged = build_merge(scoped, bar.experts, ctx.base, progress=ctx.progress)
    recovered = build_recover(scoped, merged, progress=ctx.progress) if recover is not None else merged
    return build_route(scoped, recovered, progress=ctx.progress)


def _domain_step(
    ctx: Context, name: str, previous: Path, kind: str, domain: str, steps: int, overrides: dict[str, Any]
) -> Path:
    """One BAR expert stage outside the recipe pipeline (ablations, upgrade experts)."""
    return stage_step(ctx, name, previous, kind, [domain], on="branch", steps=steps, overrides=overrides)


def _input_of(stages: dict[str, Path], kind: str) -> Path:
    """The folder a BAR stage started from: the previous stage's output, or the branch."""
    kinds = list(stages)
    index = kinds.index(kind)
    return stages[kinds[index - 1]] if index else stages[kind].parent / "branch"


def _ablations(ctx: Context, recipe: Recipe, models: SeedModels) -> None:
    """RLVR with shared parameters frozen, domain-only SFT, and the routed model at top-k = n-1.

    The tool-expert ablation needs no extra run: the FlexOlmo-style pipeline's tool expert is
    exactly BAR's tool SFT with embeddings and LM head frozen.
    """
    steps = ctx.budget.steps
    for name, stages in models.bar.stages.items():
        domain = recipe.experts[name].suite_domain()
        if "rlvr" in stages:
            models.rl_frozen[name] = _domain_step(
                ctx,
                f"ablations/rlvr_frozen/{name}",
                _input_of(stages, "rlvr"),
                "rlvr",
                domain,
                steps["rlvr"],
                {"trainable": FROZEN},
            )
        if "sft" in stages:
            models.sft_domain_only[name] = _domain_step(
                ctx,
                f"ablations/sft_domain_only/{name}",
                _input_of(stages, "sft"),
                "sft",
                domain,
                steps["sft"],
                {"general_mix": 0.0},
            )
    routed = models.bar.routed
    assert routed is not None
    experts = len(read_experts(routed))
    models.top_k_minus_one = ctx.runner.step(
        "ablations.top_k",
        "ablations/top_k",
        {"top_k": experts - 1},
        [routed],
        lambda p: with_top_k(routed, p, experts - 1),
    )


def read_experts(model_dir: Path) -> list[str]:
    from barkit.artifacts import read_manifest

    return [str(e) for e in read_manifest(model_dir).get("experts", [])]


def _upgrades(ctx: Context, recipe: Recipe, bar: BarRun) -> dict[str, Path]:
    """Start from BAR with code v1 (half the SFT steps, SFT only) and math at SFT; then upgrade
    code to v2 (BAR's mid-training + SFT + RL expert) and math to SFT+RL, one at a time."""
    from barkit.merge import merge
    from barkit.route import route

    code, math = _named(recipe, "code"), _named(recipe, "math")
    budget, seed = ctx.budget, ctx.seed
    v1_steps = max(1, budget.steps["sft"] // 2)
    code_v1 = _domain_step(
        ctx, "upgrades/code_v1", bar.stages[code]["sft"].parent / "branch", "sft", "code", v1_steps, {}
    )
    start_experts = {**bar.experts, code: code_v1, math: bar.stages[math]["sft"]}
    dirs = list(start_experts.values())
    merged = ctx.runner.step(
        "upgrades.start.merge",
        "upgrades/start_merged",
        {"merge": "bar"},
        dirs,
        lambda p: merge(dirs, p, progress=False),
    )
    route_cfg = {
        "sample": budget.sample,
        "steps": budget.steps["router"],
        "preset": budget.preset,
        "seed": seed,
    }

    def routed(p: Path) -> Any:
        return route(
            merged,
            p,
            sample=budget.sample,
            seed=seed,
            preset=budget.preset,
            steps=budget.steps["router"],
            progress=False,
        )

    start = ctx.runner.step("upgrades.start.route", "upgrades/start", route_cfg, [merged], routed)
    out = {"start": start}
    for label, name, new in (("code_v2", code, bar.experts[code]), ("math_rl", math, bar.experts[math])):
        out[label] = _upgrade_step(ctx, label, out[list(out)[-1]], name, new, route_cfg)
    return out


def _upgrade_step(
    ctx: Context, label: str, previous: Path, name: str, new: Path, route_cfg: dict[str, Any]
) -> Path:
    from barkit.upgrade import upgrade

    budget = ctx.budget

    def build(path: Path) -> Any:
        return upgrade(
            previous,
            {name: new},
            path,
            sample=budget.sample,
            seed=ctx.seed,
            preset=budget.preset,
            steps=budget.steps["router"],
            progress=False,
        )

    return ctx.runner.step(
        f"upgrades.{label}", f"upgrades/{label}", {**route_cfg, "replace": name}, [previous, new], build
    )


def _named(recipe: Recipe, domain: str) -> str:
    for name, spec in recipe.experts.items():
        if spec.domain == domain:
            return name
    from barkit.errors import ConfigError

    raise ConfigError(f"the recipe has no {domain} expert; the upgrade study needs one")


# ----------------------------------------------------------------------------- evaluation


def evaluate_seed(out: Path, seed: int, models: SeedModels, limit: int, log: Log) -> dict[str, Any]:
    """Scores of every model of one seed (cached per model fingerprint); raw, per role."""
    from barkit.report import eval_cached

    def score(label: str, path: Path, categories: Sequence[str]) -> dict[str, float]:
        start = time.perf_counter()
        data = eval_cached(
            path, out / "eval" / f"seed{seed}" / f"{label}.json", categories=list(categories), limit=limit
        )
        log(f"[eval] seed{seed} {label}: overall {data['overall']:.1f} ({time.perf_counter() - start:.0f} s)")
        return {**data["scores"], "overall": data["overall"]}

    every = list(CATEGORIES)
    result: dict[str, Any] = {"methods": {m: score(_slug(m), p, every) for m, p in models.methods.items()}}
    result["merged_no_routing"] = score("bar_merged", _must(models.bar.merged), every)
    result["experts_alone"] = {n: score(f"bar_expert_{n}", p, _own(p)) for n, p in models.bar.experts.items()}
    result["tool_frozen"] = {
        n: score(f"flex_expert_{n}", p, _own(p))
        for n, p in models.flex.experts.items()
        if _own(p) == ["tool_use"]
    }
    result["rl_frozen"] = {n: score(f"rl_frozen_{n}", p, _own(p)) for n, p in models.rl_frozen.items()}
    general = [*GENERAL]
    result["sft_mixed"] = {
        n: score(f"bar_sft_{n}", s["sft"], [*general, *_own(s["sft"])])
        for n, s in models.bar.stages.items()
        if "sft" in s
    }
    result["sft_domain_only"] = {
        n: score(f"sft_domain_only_{n}", p, [*general, *_own(p)]) for n, p in models.sft_domain_only.items()
    }
    result["top_k_minus_one"] = score("bar_top_k_minus_one", _must(models.top_k_minus_one), every)
    result["upgrades"] = {k: score(f"upgrade_{k}", p, every) for k, p in models.upgrades.items()}
    result["reward_curves"] = {
        "unfrozen": {n: reward_curve(s["rlvr"]) for n, s in models.bar.stages.items() if "rlvr" in s},
        "frozen": {n: reward_curve(p) for n, p in models.rl_frozen.items()},
    }
    return result


def _must(path: Path | None) -> Path:
    assert path is not None
    return path


def _own(path: Path) -> list[str]:
    from barkit.artifacts import read_manifest

    return [str(read_manifest(path)["domain"])]


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in label).strip("_").lower()


def reward_curve(stage_dir: Path) -> list[float]:
    """Mean reward per logged RL step, from the stage's manifest."""
    from barkit.artifacts import read_manifest

    return [float(v) for v in read_manifest(stage_dir).get("metrics", {}).get("reward_curve", [])]


# ----------------------------------------------------------------------------- inference cost


def inference_cost(out: Path, models: dict[str, Path], n_prompts: int, new_tokens: int) -> dict[str, Any]:
    """Parameters touched per token and greedy tokens/s of each model, cached by fingerprint."""
    from barkit.artifacts import atomic_write_text, read_manifest

    file = out / "inference_cost.json"
    cached = json.loads(file.read_text()) if file.is_file() else {}
    result: dict[str, Any] = {}
    for label, path in models.items():
        fp = read_manifest(path).get("fingerprint")
        entry = cached.get(label)
        if not entry or entry.get("fingerprint") != fp or entry.get("prompts") != n_prompts:
            entry = {"fingerprint": fp, "prompts": n_prompts, **_measure(path, n_prompts, new_tokens)}
        result[label] = entry
    atomic_write_text(file, json.dumps(result, indent=2) + "\n")
    return result


def _measure(path: Path, n_prompts: int, new_tokens: int) -> dict[str, Any]:
    import torch

    from barkit.baselines import moe_cost
    from barkit.loader import load_model
    from barkit.stitch import StitchedCausalLM, measure_tokens_per_second, stitched_cost

    model, tokenizer = load_model(path)
    cost = stitched_cost(model) if isinstance(model, StitchedCausalLM) else moe_cost(model)
    torch.manual_seed(0)
    speed = measure_tokens_per_second(model, tokenizer, n_prompts, new_tokens)
    return {
        "params_per_token": int(cost["params_per_token"]),
        "matmul_params_per_token": int(cost["matmul_params_per_token"]),
        "tokens_per_second": round(speed["tokens_per_second"], 1),
    }
