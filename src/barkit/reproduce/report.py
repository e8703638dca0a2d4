"""``report.md`` of a reproduction run: budgets, main table, findings, ablations, upgrades, cost."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from barkit.artifacts import atomic_write_text
from barkit.baselines import Budget, domain_plan
from barkit.recipe import Recipe
from barkit.reproduce.run import SeedModels
from barkit.reproduce.summary import (
    COLUMNS,
    Noise,
    ablation_findings,
    aggregate,
    copy_routing,
    cost_scaling,
    findings,
    means,
    plot_cost,
    plot_reward_ablation,
    stat_table,
)
from barkit.suite import GENERAL

PerSeed = Sequence[Mapping[str, Any]]


def _table(
    per_seed: PerSeed,
    rows: Callable[[Mapping[str, Any]], Mapping[str, Mapping[str, float]]],
    columns: Sequence[str],
    seeds: int,
    head: str,
) -> str:
    return stat_table(aggregate([rows(s) for s in per_seed]), columns, seeds, head)


def _budget_section(budget: Budget, results: Mapping[str, Any]) -> list[str]:
    from barkit.train.config import default_stage

    lines = [
        "## Budgets",
        "",
        f"Model preset `{budget.preset}`; one base ({_base_line(budget, results)}) shared by all seeds "
        "(BAR starts from a given post-trained model; seeds vary everything after it). Every method trains each domain "
        "with the same per-domain step counts; a stage over k domains at once (monolithic) trains k times the steps. "
        "The router, BTX's MoE fine-tuning and BTS's stitches all train for the router budget on the same stratified "
        f"{budget.sample:.0%} sample of SFT data.",
        "",
        "| stage | steps per domain | sequences x tokens per step |",
        "|---|---:|---:|",
    ]
    for kind, steps in budget.steps.items():
        cfg = default_stage(kind, budget.preset)  # type: ignore[arg-type]
        lines.append(f"| {kind} | {steps} | {cfg.batch_size * cfg.grad_accum} x {cfg.seq_len} |")
    lines += [
        "",
        f"Evaluation: {budget.eval_limit} test items per category, greedy decoding. Seeds: {results['seeds']}. "
        f"{_time_line(results)}",
        "",
    ]
    plan = ", ".join(f"{d}: {' -> '.join(k)}" for d, k in results["plan"].items())
    lines += [f"Stages per domain (all methods): {plan}.", ""]
    return lines


def _base_line(budget: Budget, results: Mapping[str, Any]) -> str:
    base = results.get("base") or {}
    what = f"trained for {budget.base_steps} steps" if budget.base_steps else "the preset's base recipe"
    if base.get("tokens"):
        what += f", {base['tokens'] / 1e6:.1f}M pre- and post-training tokens"
    if base.get("fingerprint"):
        what += f", fingerprint `{base['fingerprint']}`"
    return what


def _time_line(results: Mapping[str, Any]) -> str:
    """Compute per seed from the ledger (where each step ran), then this invocation's wall time."""
    spent = results.get("stage_seconds") or {}
    per_seed = [v for k, v in spent.items() if k.startswith("seed")]
    line = ""
    if per_seed:
        line = (
            f"Training and evaluation time, from the ledger: {sum(per_seed) / 60:.0f} min over the seeds "
            f"({', '.join(f'{v / 60:.0f}' for v in per_seed)} min per seed) plus {spent.get('shared', 0) / 60:.0f} min "
            "shared. "
        )
    return (
        line + f"Wall time of the invocation that wrote this report: {results['wall_time_s'] / 60:.1f} min."
    )


def _main_section(
    per_seed: PerSeed, seeds: int, out: Path
) -> tuple[list[str], dict[str, dict[str, float]], Noise]:
    from barkit.report import plot_scores

    table = aggregate([s["methods"] for s in per_seed])
    plot_scores(means(table), COLUMNS[:-1], out / "plots" / "scores.png")
    lines = [
        "## Main table",
        "",
        "Scores (0-100) on the micro-suite's test split, mean ± std over seeds.",
        "",
    ]
    lines += [stat_table(table, COLUMNS, seeds, "method"), "", "![scores per category](plots/scores.png)", ""]
    return lines, means(table), Noise.of(table)


def _ablation_section(per_seed: PerSeed, seeds: int, out: Path) -> list[str]:
    lines = ["## Ablations", ""]

    def tool(s: Mapping[str, Any]) -> dict[str, dict[str, float]]:
        bar = {
            f"{n} (embeddings + LM head trainable, BAR)": v
            for n, v in s["experts_alone"].items()
            if n in s["tool_frozen"]
        }
        return {**bar, **{f"{n} (shared frozen)": v for n, v in s["tool_frozen"].items()}}

    lines += ["### Tool expert with and without embeddings/LM head trainable at SFT", ""]
    lines += [
        "BAR saw 20.3 (frozen) vs 46.4 (unfrozen) on BFCL.",
        "",
        _table(per_seed, tool, ["tool_use"], seeds, "expert"),
        "",
    ]

    def rl(s: Mapping[str, Any]) -> dict[str, dict[str, float]]:
        rows = {}
        for name, scores in s["rl_frozen"].items():
            rows[f"{name} RLVR, all trainable (BAR)"] = s["experts_alone"][name]
            rows[f"{name} RLVR, shared frozen"] = scores
        return rows

    curves = per_seed[0]["reward_curves"]
    plot_reward_ablation(curves, out / "plots" / "rewards.png")
    own = sorted({c for s in per_seed for v in s["rl_frozen"].values() for c in v if c != "overall"})
    lines += ["### RLVR with shared parameters frozen", "", _table(per_seed, rl, own, seeds, "expert"), ""]
    lines += ["![reward curves, frozen vs unfrozen](plots/rewards.png)", ""]

    def sft(s: Mapping[str, Any]) -> dict[str, dict[str, float]]:
        rows = {}
        for name in s["sft_domain_only"]:
            for label, key in (("mixed", "sft_mixed"), ("domain only", "sft_domain_only")):
                scores = dict(s[key][name])
                scores["general mean"] = sum(scores[c] for c in GENERAL) / len(GENERAL)
                scores["own domain"] = next(
                    v for c, v in scores.items() if c not in (*GENERAL, "overall", "general mean")
                )
                rows[f"{name} SFT, {label}"] = scores
        return rows

    cols = [*GENERAL, "general mean", "own domain"]
    lines += [
        "### Domain-only versus mixed SFT (expert after its SFT stage)",
        "",
        _table(per_seed, sft, cols, seeds, "expert"),
        "",
    ]

    def top_k(s: Mapping[str, Any]) -> dict[str, dict[str, float]]:
        return {
            "BAR, all experts per token": s["methods"]["BAR"],
            "BAR, one expert fewer per token": s["top_k_minus_one"],
        }

    lines += ["### Top-k of the merged model", "", _table(per_seed, top_k, COLUMNS, seeds, "model"), ""]

    def averaging(s: Mapping[str, Any]) -> dict[str, dict[str, float]]:
        rows = {}
        for name, scores in s["experts_alone"].items():
            domain = next(c for c in scores if c != "overall")
            rows[name] = {
                "expert alone": scores[domain],
                "merged, no router training": s["merged_no_routing"][domain],
                "BAR (routed)": s["methods"]["BAR"][domain],
            }
        return rows

    cols = ["expert alone", "merged, no router training", "BAR (routed)"]
    lines += [
        "### What merging costs (each expert's own domain)",
        "",
        _table(per_seed, averaging, cols, seeds, "expert"),
        "",
    ]
    return lines


def _upgrade_section(per_seed: PerSeed, seeds: int) -> list[str]:
    def rows(s: Mapping[str, Any]) -> dict[str, dict[str, float]]:
        up = s["upgrades"]
        return {
            "start (code v1 = half SFT; math SFT only)": up["start"],
            "after code v1 -> v2 (mid-training + SFT + RL)": up["code_v2"],
            "after math SFT -> SFT+RL": up["math_rl"],
            "delta: code upgrade": {c: up["code_v2"][c] - up["start"][c] for c in up["start"]},
            "delta: math upgrade": {c: up["math_rl"][c] - up["code_v2"][c] for c in up["start"]},
        }

    lines = ["## Upgrades (re-merge + router only, `barkit.upgrade.upgrade`)", ""]
    lines += [
        "Each upgrade replaces one expert and retrains the router; the other domains' change is shown beside.",
        "",
    ]
    return [*lines, _table(per_seed, rows, COLUMNS, seeds, "model"), ""]


def _cost(out: Path, recipe: Recipe, budget: Budget) -> dict[str, Any]:
    from barkit.report import ledger_summary

    names = {spec.suite_domain(): name for name, spec in recipe.experts.items()}
    return cost_scaling(ledger_summary(out), domain_plan(recipe), budget, names)


def _cost_section(out: Path, cost: Mapping[str, Any], inference: Mapping[str, Any]) -> list[str]:
    from barkit.report import ledger_summary

    plot_cost(cost, out / "plots" / "cost_scaling.png")
    lines = ["## Cost of domain updates (tokens, from the ledger, seed 0)", ""]
    lines += [
        "BAR: adding or updating domain k costs that expert's stages plus one router stage. Monolithic retraining "
        "with mid-training reprocesses all k domains; for k < N its tokens are the N-domain monolithic run's "
        "measured tokens per step times the steps k domains need (it was not rerun for each k).",
        "",
        "| k | domain | BAR update | monolithic update | BAR cumulative | monolithic cumulative |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for k, domain in enumerate(cost["domains"]):
        b, m = cost["bar"], cost["monolithic"]
        lines.append(
            f"| {k + 1} | {domain} | {b[k]:,} | {m[k]:,} | {sum(b[: k + 1]):,} | {sum(m[: k + 1]):,} |"
        )
    lines += ["", "![cost scaling](plots/cost_scaling.png)", ""]
    lines += _spent(ledger_summary(out))
    lines += [
        "## Inference cost (seed 0)",
        "",
        "| model | params touched per token | matmul params per token | tokens/s (greedy, CPU) |",
    ]
    lines.append("|---|---:|---:|---:|")
    for label, entry in inference.items():
        lines.append(
            f"| {label} | {entry['params_per_token']:,} | {entry['matmul_params_per_token']:,} | {entry['tokens_per_second']:.0f} |"
        )
    lines += [
        "",
        "Tokens/s is measured on a shared CPU and varies with load; compare the rows, not the absolute values.",
        "",
    ]
    return lines


def _spent(ledger: Sequence[Mapping[str, Any]]) -> list[str]:
    """Tokens and seconds each method's training steps took (seed 0, steps that ran)."""
    totals: dict[str, list[float]] = {}
    for entry in ledger:
        parts = str(entry.get("step", "")).split(".")
        if entry.get("ran") and len(parts) > 1 and parts[0] == "seed0":
            total = totals.setdefault(parts[1], [0.0, 0.0])
            total[0] += float(entry.get("tokens", 0) or 0)
            total[1] += float(entry.get("seconds", 0) or 0)
    lines = [
        "### Training spent per method (seed 0, from the ledger)",
        "",
        "| steps under | tokens | seconds |",
    ]
    lines.append("|---|---:|---:|")
    lines += [f"| {k} | {int(t):,} | {sec:.0f} |" for k, (t, sec) in totals.items()]
    return [*lines, ""]


def write_report(
    out: Path, results: dict[str, Any], recipe: Recipe, budget: Budget, first: SeedModels
) -> Path:
    """Write ``report.md`` and the plots; returns the report's path."""
    per_seed, seeds = results["per_seed"], results["seeds"]
    lines = ["# barkit reproduce: BAR against the alternatives on the micro-suite", ""]
    lines += _budget_section(budget, results)
    main, mean_table, noise = _main_section(per_seed, seeds, out)
    cost = _cost(out, recipe, budget)
    lines += main
    lines += [
        "## What the numbers say",
        "",
        *findings(mean_table, per_seed[0]["reward_curves"], seeds, noise),
        *ablation_findings(per_seed, noise, cost),
        "",
    ]
    if first.bar.routed is not None and copy_routing(first.bar.routed, out / "plots"):
        lines += ["## Routing (BAR, seed 0)", "", "![routing heatmap](plots/routing.png)", ""]
    lines += _ablation_section(per_seed, seeds, out)
    lines += _upgrade_section(per_seed, seeds)
    lines += _cost_section(out, cost, results["inference_cost"])
    lines += ["Raw numbers: `results.json`; every step's tokens and seconds: `ledger.jsonl`.", ""]
    path = out / "report.md"
    atomic_write_text(path, "\n".join(lines))
    results["cost_scaling_plot"] = "plots/cost_scaling.png"
    json.dumps(results)  # fail here, not after the report, if something is not JSON-able
    return path
