"""Turn per-seed scores and the ledger into the reproduction report: tables, plots, findings.

Every number in the report is computed here from the evaluation files and the ledger; the
findings section compares those numbers with BAR's published findings and says plainly where
the micro-suite does not reproduce one.
"""

from __future__ import annotations

import math
import shutil
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from barkit.baselines import Budget, DomainPlan
from barkit.reproduce.run import (
    AVG_MID,
    AVG_POST,
    BAR,
    BAR_SUM,
    BTS,
    BTX,
    FLEXOLMO,
    MONO_MID,
    MONO_POST,
)
from barkit.suite import CATEGORIES, DOMAINS, GENERAL
from barkit.train.kinds import recipe_kinds

COLUMNS = [*CATEGORIES, "overall"]
MERGING = (AVG_POST, AVG_MID, BTX, BTS, BAR)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single seed)."""
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) if len(values) > 1 else 0.0


def aggregate(
    per_seed: Sequence[Mapping[str, Mapping[str, float]]],
) -> dict[str, dict[str, tuple[float, float]]]:
    """{row: {column: (mean, std)}} over seeds, for rows and columns present in every seed."""
    rows = [r for r in per_seed[0] if all(r in s for s in per_seed)]
    table: dict[str, dict[str, tuple[float, float]]] = {}
    for row in rows:
        cols = [c for c in per_seed[0][row] if all(c in s[row] for s in per_seed)]
        table[row] = {c: mean_std([float(s[row][c]) for s in per_seed]) for c in cols}
    return table


def _cell(value: tuple[float, float] | None, seeds: int) -> str:
    if value is None:
        return "—"
    mean, std = value
    return f"{mean:.1f} ± {std:.1f}" if seeds > 1 else f"{mean:.1f}"


def stat_table(
    table: Mapping[str, Mapping[str, tuple[float, float]]], columns: Sequence[str], seeds: int, head: str
) -> str:
    lines = [f"| {head} | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for row, cells in table.items():
        lines.append(f"| {row} | " + " | ".join(_cell(cells.get(c), seeds) for c in columns) + " |")
    return "\n".join(lines)


def means(table: Mapping[str, Mapping[str, tuple[float, float]]]) -> dict[str, dict[str, float]]:
    return {row: {c: v[0] for c, v in cells.items()} for row, cells in table.items()}


# ----------------------------------------------------------------------------- cost scaling


def ledger_tokens(ledger: Sequence[Mapping[str, Any]], prefix: str) -> dict[str, int]:
    """Tokens of each step under ``prefix`` that actually ran (its latest run in the ledger)."""
    tokens: dict[str, int] = {}
    for entry in ledger:
        step = str(entry.get("step", ""))
        if entry.get("ran") and step.startswith(prefix):
            tokens[step[len(prefix) :]] = int(entry.get("tokens", 0) or 0)
    return tokens


def cost_scaling(
    ledger: Sequence[Mapping[str, Any]], plan: DomainPlan, budget: Budget, names: Mapping[str, str]
) -> dict[str, Any]:
    """Tokens per model update as domains are added one at a time (plan order), from the ledger.

    BAR: adding domain k costs expert k's stages plus one router stage. Monolithic retraining
    (with mid-training, like BAR's experts) reprocesses all k domains: for each stage kind, the
    tokens per step measured in the N-domain monolithic run times the steps k domains need.
    ``names``: domain -> expert name in the BAR pipeline.
    """
    bar = ledger_tokens(ledger, "seed0.bar.")
    mono = ledger_tokens(ledger, "seed0.monolithic_mid.")
    router = bar.get("route", 0)
    per_step = {}
    for kind in recipe_kinds():
        users = sum(kind in kinds for kinds in plan.values())
        if users and kind in mono:
            per_step[kind] = mono[kind] / (budget.steps[kind] * users)
    domains = list(plan)
    bar_updates, mono_updates = [], []
    for k, domain in enumerate(domains, start=1):
        expert = sum(v for s, v in bar.items() if s.startswith(f"experts.{names[domain]}."))
        bar_updates.append(expert + router)
        first = domains[:k]
        mono_updates.append(
            round(
                sum(
                    per_step.get(kind, 0.0) * budget.steps[kind] * sum(kind in plan[d] for d in first)
                    for kind in per_step
                )
            )
        )
    return {"domains": domains, "bar": bar_updates, "monolithic": mono_updates, "router_tokens": router}


def plot_cost(cost: Mapping[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = list(range(1, len(cost["domains"]) + 1))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, cumulative in zip(axes, (False, True), strict=True):
        for key, label in (("bar", "BAR (expert + router)"), ("monolithic", "monolithic retraining")):
            values = [float(v) for v in cost[key]]
            if cumulative:
                values = [sum(values[:i]) for i in ks]
            ax.plot(ks, values, marker="o", label=label)
        ax.set_xticks(ks, labels=[f"{k}\n{d}" for k, d in zip(ks, cost["domains"], strict=True)])
        ax.set_xlabel("domains (added in this order)")
        ax.set_ylabel("tokens processed" + (" (cumulative)" if cumulative else " per update"))
        ax.legend(fontsize=8)
    fig.suptitle("Training tokens per domain update")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_reward_ablation(curves: Mapping[str, Mapping[str, Sequence[float]]], path: Path) -> None:
    """Reward per RL step, unfrozen (BAR) against frozen shared parameters, seed 0."""
    from barkit.report import plot_rewards

    lines: dict[str, Sequence[float]] = {}
    styles: dict[str, str] = {}
    for setting, style in (("unfrozen", "-"), ("frozen", "--")):
        for name, values in curves.get(setting, {}).items():
            label = f"{name}, shared {setting}"
            lines[label], styles[label] = values, style
    plot_rewards(
        lines,
        path,
        title="RLVR reward: all parameters vs shared parameters frozen",
        xlabel="logged RL step",
        styles=styles,
    )


# ----------------------------------------------------------------------------- findings


def _gap(m: Mapping[str, Mapping[str, float]], a: str, b: str, col: str = "overall") -> float:
    return m[a][col] - m[b][col]


def _verdict(
    gap: float, noise: float, claim: str, numbers: str, reason: str, *, measured: bool = False
) -> str:
    """``gap`` > 0 means the finding holds; within ``noise`` of 0 the run cannot tell.

    ``measured``: ``reason`` is read off this run's own tables, not a candidate.
    """
    why = "Measured cause, from this run's tables" if measured else "Candidate reason, not tested by this run"
    if abs(gap) <= noise:
        return f"- **Inconclusive** (difference within seed noise): {claim} ({numbers}). {why}: {reason}"
    if gap > 0:
        return f"- **Reproduced**: {claim} ({numbers})."
    return f"- **Not reproduced**: {claim} ({numbers}). {why}: {reason}"


def findings(
    m: Mapping[str, Mapping[str, float]], rl: Mapping[str, Any], seeds: int, noise_levels: Noise
) -> list[str]:
    """One line per BAR finding, decided by the numbers in ``m`` (method -> column -> mean)."""
    noise = noise_levels.overall
    lines = [
        f"Overall scores closer than {noise:.1f} points (twice the largest std over seeds in the "
        f"overall column) and general-category means closer than {noise_levels.general:.1f} (the "
        f"largest std in those columns) are within seed noise"
        f"{' (one seed: no estimate of noise)' if seeds < 2 else ''}.",
        "",
    ]
    d = _gap(m, BAR, MONO_POST)
    lines.append(
        _verdict(
            d,
            noise,
            "BAR scores above monolithic post-training retraining overall",
            f"{m[BAR]['overall']:.1f} vs {m[MONO_POST]['overall']:.1f}",
            "at this scale one dense model has spare capacity for all four domains, and it trains attention "
            "at SFT where BAR's experts keep it frozen and must rely on the base's attention; the shared-"
            "tensor changes BAR's experts do make are then averaged away in the merge (docs/results/README.md).",
        )
    )
    collapse = min(_gap(m, AVG_POST, AVG_MID), _gap(m, BAR, AVG_MID))
    lines.append(
        _verdict(
            collapse,
            noise,
            "dense weight averaging fails after mid-training (below averaging without it, and below BAR)",
            f"{m[AVG_MID]['overall']:.1f} with mid-training, {m[AVG_POST]['overall']:.1f} without, BAR {m[BAR]['overall']:.1f}",
            "mid-training here is a few hundred thousand tokens per domain, far too little to move the "
            "dense experts apart the way 7B-scale mid-training does, so their average stays functional.",
        )
    )
    lines.append(
        _verdict(
            _gap(m, BAR, BTX),
            noise,
            "BTX scores below BAR",
            f"{m[BTX]['overall']:.1f} vs {m[BAR]['overall']:.1f}",
            "BTX here fine-tunes all parameters on the router sample (BAR trains only the router on it), "
            "which at this scale repairs much of the divergence from averaging attention and embeddings.",
        )
    )
    general = {r: sum(m[r][c] for c in GENERAL) / len(GENERAL) for r in MERGING}
    bts_lead = general[BTS] - max(v for r, v in general.items() if r != BTS)
    lines.append(
        _verdict(
            bts_lead,
            noise_levels.general,
            "BTS is the best generalist (knowledge, reasoning, chat) among the merging approaches",
            ", ".join(f"{r}: {v:.1f}" for r, v in general.items()),
            "the stitches train for the router's small step budget only; with so few steps they stay near "
            "their initialisation and the hub's general skills dominate less than at BTS's scale.",
        )
    )
    lines.append(
        _verdict(
            _gap(m, MONO_MID, BAR),
            noise,
            "monolithic retraining with mid-training is the ceiling (at or above BAR)",
            f"{m[MONO_MID]['overall']:.1f} vs {m[BAR]['overall']:.1f}",
            "seed noise and the short budget; the ceiling is the setting with the most shared capacity per domain.",
        )
    )
    lines.append(_rl_line(rl, noise / 100.0))
    lines.append(
        _verdict(
            _gap(m, BAR, FLEXOLMO),
            noise,
            "FlexOlmo-style training (shared parameters frozen in every stage) scores below BAR",
            f"{m[FLEXOLMO]['overall']:.1f} vs {m[BAR]['overall']:.1f}",
            "at this scale the experts' changes to shared tensors do not survive averaging (docs/results/README.md), "
            "so what BAR gains by unfreezing them is lost in the merge, while FlexOlmo-style experts merge intact.",
        )
    )
    if BAR_SUM in m:
        gap = _gap(m, BAR_SUM, BAR)
        judged = "within seed noise of" if abs(gap) <= noise else ("above" if gap > 0 else "below")
        lines.append(
            f"- Not one of BAR's findings, barkit's own choice: the same BAR experts merged with barkit's default "
            f"(shared tensors summed, then recovered with the router, router lr 2e-2) score {m[BAR_SUM]['overall']:.1f} overall, {judged} BAR's "
            f"published merge ({m[BAR]['overall']:.1f}). In the expert domains: "
            + ", ".join(f"{d} {m[BAR_SUM][d]:.1f} vs {m[BAR][d]:.1f}" for d in DOMAINS if d in m[BAR])
            + ". Its recovery and router run the router budget's steps here, not the demo's 160."
        )
    return lines


def _within(gap: float, noise: float, claim: str, numbers: str, reason: str) -> str:
    """A finding that claims *no* difference: it holds when ``gap`` lies within ``noise``."""
    if abs(gap) <= noise:
        return f"- **Reproduced**: {claim} ({numbers})."
    return f"- **Not reproduced**: {claim} ({numbers}). Candidate reason, not tested by this run: {reason}"


def ablation_findings(
    per_seed: Sequence[Mapping[str, Any]], noise_levels: Noise, cost: Mapping[str, Any] | None
) -> list[str]:
    """Verdicts on the findings the ablation, upgrade and cost sections measure.

    A domain score's noise is twice the larger std over seeds of the two cells compared (at
    least one item's worth at the eval size is not assumed: equal cells are a tie).
    """
    lines: list[str] = []
    first = per_seed[0]
    for name in first.get("tool_frozen", {}):
        unfrozen = mean_std([s["experts_alone"][name]["tool_use"] for s in per_seed])
        frozen = mean_std([s["tool_frozen"][name]["tool_use"] for s in per_seed])
        lines.append(
            _verdict(
                unfrozen[0] - frozen[0],
                2 * max(unfrozen[1], frozen[1]),
                "the tool expert needs its embeddings and LM head trainable (unfrozen above frozen)",
                f"{unfrozen[0]:.1f} vs {frozen[0]:.1f}",
                "neither tool expert learns the task at this size (both at the floor), so the ablation has "
                "nothing to separate; docs/results/README.md has the tool-use measurements.",
            )
        )
    names = list(first.get("sft_domain_only", {}))
    if names:

        def general(s: Mapping[str, Any], key: str) -> float:
            return statistics.fmean(s[key][n][c] for n in names for c in GENERAL)

        mixed = mean_std([general(s, "sft_mixed") for s in per_seed])
        only = mean_std([general(s, "sft_domain_only") for s in per_seed])
        lines.append(
            _verdict(
                mixed[0] - only[0],
                noise_levels.general,
                "mixing general data into an expert's SFT keeps its general skills (domain-only SFT loses them)",
                f"general mean over experts {mixed[0]:.1f} mixed vs {only[0]:.1f} domain only",
                "the general share of the mix is too small at this budget to protect them.",
            )
        )
    if "top_k_minus_one" in first:
        full = mean_std([s["methods"][BAR]["overall"] for s in per_seed])
        fewer = mean_std([s["top_k_minus_one"]["overall"] for s in per_seed])
        lines.append(
            _within(
                full[0] - fewer[0],
                noise_levels.overall,
                "routing each token to one expert fewer costs little",
                f"overall {fewer[0]:.1f} with one fewer vs {full[0]:.1f} with all",
                "with weights not renormalised after top-k, the dropped expert's share is lost on every token.",
            )
        )
    upgrades = first.get("upgrades", {})
    for label, before, domain, what in (
        ("code_v2", "start", "code", "replacing code v1 with code v2"),
        ("math_rl", "code_v2", "math", "adding RL to the math expert"),
    ):
        if label not in upgrades or before not in upgrades:
            continue
        change = {
            c: mean_std([s["upgrades"][label][c] - s["upgrades"][before][c] for s in per_seed])
            for c in COLUMNS[:-1]
        }
        own = change[domain]
        moved = max(abs(v[0]) for c, v in change.items() if c != domain)
        alone = [
            statistics.fmean(float(s["experts_alone"][n][domain]) for s in per_seed)
            for n, v in first["experts_alone"].items()
            if domain in v
        ]
        solo = alone[0] if alone else math.nan
        kept = statistics.fmean(float(s["upgrades"][label][domain]) for s in per_seed)
        lost_in_merge = solo >= 10 and kept < 0.5 * solo
        if lost_in_merge:
            reason = (
                f"the upgraded {domain} expert scores {solo:.1f} alone, but the upgraded routed model "
                f"scores {kept:.1f} in {domain}: BAR's merge and router lose most of the expert's skill "
                "(the merging-costs table), so the upgrade has little to carry into the merged model."
            )
        else:
            reason = (
                f"the upgraded {domain} expert scores {solo:.1f} alone at this budget, so there is little or "
                "no gain to carry into the merged model; the upgrade table shows the other domains."
            )
        lines.append(
            _verdict(
                own[0],
                2 * own[1],
                f"{what} raises {domain} in the merged model while the other domains stay put",
                f"{domain} {own[0]:+.1f}; largest change elsewhere {moved:.1f}",
                reason,
                measured=lost_in_merge,
            )
        )
    if cost and cost.get("bar") and cost.get("monolithic"):
        bar, mono = [float(v) for v in cost["bar"]], [float(v) for v in cost["monolithic"]]
        k = len(bar)
        lines.append(
            _verdict(
                sum(mono) - sum(bar),
                0.0,
                "update cost grows linearly with the domains touched: one BAR update costs one expert plus the "
                "router, whatever the number of domains, while monolithic retraining reprocesses every domain",
                f"tokens per update, domain 1 to {k}: BAR {bar[0]:,.0f} to {bar[-1]:,.0f}, monolithic "
                f"{mono[0]:,.0f} to {mono[-1]:,.0f}; cumulative {sum(bar):,.0f} vs {sum(mono):,.0f}",
                "the experts' stages here are long relative to a monolithic step over few domains.",
            )
        )
    return lines


def _slope(values: Sequence[float]) -> float:
    """Late minus early mean reward (halves of the curve)."""
    if len(values) < 2:
        return 0.0
    half = len(values) // 2
    return statistics.fmean(values[half:]) - statistics.fmean(values[:half])


def _rl_line(curves: Mapping[str, Any], noise: float) -> str:
    frozen, unfrozen = curves.get("frozen", {}), curves.get("unfrozen", {})
    if not frozen or not unfrozen:
        return "- RLVR ablation: no reward curves (no RL stage in the plan)."
    f = statistics.fmean(_slope(v) for v in frozen.values())
    u = statistics.fmean(_slope(v) for v in unfrozen.values())
    # holds when the unfrozen curve rises more than the frozen one (rewards are in [0, 1])
    return _verdict(
        u - f,
        noise,
        "with shared parameters frozen the RLVR reward stays flat, while it rises with all parameters trainable",
        f"reward change late minus early half: frozen {f:+.3f}, unfrozen {u:+.3f}",
        "the RL stage is a handful of steps at a small learning rate, and a group whose samples all score "
        "0 gives no gradient: where the SFT start never solves a prompt, neither curve can move.",
    )


def noise_level(
    table: Mapping[str, Mapping[str, tuple[float, float]]], columns: Sequence[str] | None = None
) -> float:
    """The largest std over seeds in ``columns`` (all columns when None): the seed noise of a cell."""
    stds = [v[1] for cells in table.values() for c, v in cells.items() if columns is None or c in columns]
    return max(stds) if stds else math.nan


@dataclass(frozen=True)
class Noise:
    """How far apart two means must be before a finding is decided.

    ``overall``: twice the largest std over seeds in the overall column (the findings that
    compare overall scores); ``general``: the largest std in the general categories' columns
    (the generalist comparison, a mean of three of them).
    """

    overall: float
    general: float

    @classmethod
    def of(cls, table: Mapping[str, Mapping[str, tuple[float, float]]]) -> Noise:
        return cls(2.0 * noise_level(table, ["overall"]), noise_level(table, GENERAL))


def copy_routing(routed: Path, plots: Path) -> bool:
    source = routed / "routing.png"
    if source.is_file():
        plots.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, plots / "routing.png")
        return True
    return False
