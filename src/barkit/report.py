"""Evaluation of a run's models and the run's report (``report.md``, plots, raw JSON).

Evaluations are cached like pipeline steps: ``OUT/eval/<label>.json`` records the model's
fingerprint and the evaluation settings, and is reused while both are unchanged.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from barkit.artifacts import append_ledger, atomic_write_text, read_manifest
from barkit.suite import CATEGORIES

if TYPE_CHECKING:
    from barkit.pipeline import Runner, RunResult

Scores = dict[str, float]


def eval_cached(
    model_dir: Path, out_file: Path, *, categories: Sequence[str], limit: int, seed: int = 0
) -> dict[str, Any]:
    """Evaluate ``model_dir`` into ``out_file`` unless a matching result is already there."""
    fingerprint = read_manifest(model_dir).get("fingerprint")
    settings = {"categories": list(categories), "limit": limit, "seed": seed}
    if out_file.is_file():
        try:
            cached = json.loads(out_file.read_text())
        except json.JSONDecodeError:
            cached = {}
        if cached.get("model_fingerprint") == fingerprint and cached.get("settings") == settings:
            return dict(cached)
    from barkit.evaluate import evaluate
    from barkit.loader import load_model

    start = time.perf_counter()
    model, tokenizer = load_model(model_dir)
    result = evaluate(model, tokenizer, categories=list(categories), limit=limit, seed=seed).to_dict()
    result.update(
        model=str(model_dir),
        model_fingerprint=fingerprint,
        settings=settings,
        wall_time_s=round(time.perf_counter() - start, 3),
    )
    atomic_write_text(out_file, json.dumps(result, indent=2) + "\n")
    return result


def evaluate_run(runner: Runner, result: RunResult) -> dict[str, Scores]:
    """Evaluate the base, each expert, the merged and the routed model; write the report.

    With ``runner.jobs`` > 1 the evaluations (these models and each expert's earlier stages)
    run that many at once, in their own processes; the report then reads their cached files.
    """
    recipe = runner.recipe
    categories = recipe.eval.categories or list(CATEGORIES)
    models: dict[str, Path] = {"base": result.base}
    models.update({f"expert:{name}": path for name, path in result.experts.items()})
    if result.merged is not None:
        models["merged (no routing)"] = result.merged
    if result.recovered is not None:
        models["merged + recovered"] = result.recovered
    if result.routed is not None:
        models["BAR (routed)"] = result.routed
    tasks = [
        (path, runner.out / "eval" / f"{_slug(label)}.json", categories) for label, path in models.items()
    ]
    tasks += [(folder, file, [domain]) for _, _, domain, folder, file in _stage_folders(runner)]
    computed = _evaluate_at_once(runner, tasks) if runner.jobs > 1 else {}
    table: dict[str, Scores] = {}
    for (label, path), (_, file, _) in zip(models.items(), tasks[: len(models)], strict=True):
        start = time.perf_counter()
        data = eval_cached(path, file, categories=categories, limit=recipe.eval.limit, seed=recipe.seed)
        table[label] = {**data["scores"], "overall": data["overall"]}
        seconds = computed.get(file, time.perf_counter() - start)
        append_ledger(
            runner.out,
            {"step": f"eval.{_slug(label)}", "seconds": round(seconds, 3), "tokens": 0, "ran": True},
        )
    stages = stage_scores(runner, table)
    write_report(runner.out, table, result, title=f"barkit run: {recipe.name}", stages=stages)
    return table


def _eval_job(model_dir: Path, file: Path, categories: list[str], limit: int, seed: int) -> float:
    """Evaluate into ``file`` (in a worker, a cached result counting as done); seconds taken."""
    start = time.perf_counter()
    eval_cached(model_dir, file, categories=categories, limit=limit, seed=seed)
    return time.perf_counter() - start


def _evaluate_at_once(runner: Runner, tasks: list[tuple[Path, Path, list[str]]]) -> dict[Path, float]:
    """Run the evaluations ``runner.jobs`` at a time; the seconds each took."""
    from barkit.jobs import run_at_once

    recipe = runner.recipe
    calls = [(path, file, list(cats), recipe.eval.limit, recipe.seed) for path, file, cats in tasks]
    seconds = run_at_once(_eval_job, calls, runner.jobs, desc="evaluations")
    return {file: s for (_, file, _), s in zip(tasks, seconds, strict=True)}


def _stage_folders(runner: Runner) -> list[tuple[str, str, str, Path, Path]]:
    """(expert, stage kind, domain, folder, eval file) of each built stage of a suite expert."""
    found = []
    for name, spec in runner.recipe.experts.items():
        if spec.domain is None:
            continue  # an expert on the user's data has no suite category to score it on
        for stage in spec.stages:
            folder = runner.out / "experts" / name / stage.kind
            if (folder / "barkit.json").is_file():
                file = runner.out / "eval" / "stages" / f"{name}_{stage.kind}.json"
                found.append((name, stage.kind, spec.domain, folder, file))
    return found


def stage_scores(runner: Runner, table: Mapping[str, Scores]) -> dict[str, dict[str, float]]:
    """Each expert's in-domain score after each of its stages (the base's score first)."""
    recipe = runner.recipe
    rows: dict[str, dict[str, float]] = {}
    for name, spec in recipe.experts.items():
        if spec.domain is not None:
            rows[name] = {"base": table["base"][spec.domain]} if spec.domain in table.get("base", {}) else {}
    for name, kind, domain, folder, file in _stage_folders(runner):
        data = eval_cached(folder, file, categories=[domain], limit=recipe.eval.limit, seed=recipe.seed)
        rows[name][kind] = data["scores"][domain]
    return rows


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in label).strip("_").lower()


def markdown_table(table: Mapping[str, Mapping[str, float]], columns: Sequence[str]) -> str:
    head = "| model | " + " | ".join(columns) + " |"
    rule = "|---|" + "---:|" * len(columns)
    rows = [
        f"| {label} | " + " | ".join(_fmt(scores.get(c)) for c in columns) + " |"
        for label, scores in table.items()
    ]
    return "\n".join([head, rule, *rows])


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def plot_scores(table: Mapping[str, Scores], columns: Sequence[str], path: Path) -> None:
    """Grouped bars: one group per category, one bar per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(table)
    width = 0.8 / max(len(labels), 1)
    rows = -(-len(labels) // 2)  # legend rows, below the bars so that it hides none of them
    fig, ax = plt.subplots(figsize=(max(7.0, 1.3 * len(columns)), 4.2 + 0.2 * rows))
    for i, label in enumerate(labels):
        xs = [j + (i - (len(labels) - 1) / 2) * width for j in range(len(columns))]
        ax.bar(xs, [table[label].get(c, 0.0) for c in columns], width, label=label)
    ax.set_xticks(range(len(columns)), labels=list(columns))
    ax.set_ylabel("score (0-100)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.08), frameon=False)
    ax.set_title("Micro-suite scores per category")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_rewards(
    curves: Mapping[str, Sequence[float]],
    path: Path,
    *,
    title: str = "RLVR reward",
    xlabel: str = "RL step",
    styles: Mapping[str, str] | None = None,
) -> None:
    """RL reward per step, one line per label (``styles`` gives a line style per label)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for name, values in curves.items():
        style = (styles or {}).get(name, "-")
        ax.plot(range(1, len(values) + 1), values, style, marker=".", label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("mean reward")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def reward_curves(out: Path) -> dict[str, list[float]]:
    """Reward curves of every expert's rlvr stage in a run folder (from its manifest)."""
    curves: dict[str, list[float]] = {}
    for manifest in sorted(out.glob("experts/*/rlvr/barkit.json")):
        values = json.loads(manifest.read_text()).get("metrics", {}).get("reward_curve") or []
        if values:
            curves[manifest.parent.parent.name] = [float(v) for v in values]
    return curves


def ledger_summary(out: Path) -> list[dict[str, Any]]:
    path = out / "ledger.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_report(
    out: Path,
    table: Mapping[str, Scores],
    result: RunResult,
    *,
    title: str,
    stages: Mapping[str, Mapping[str, float]] | None = None,
) -> Path:
    """``report.md`` with the score table, the ledger's cost lines and the plots."""
    columns = [c for c in CATEGORIES if any(c in s for s in table.values())] + ["overall"]
    plots = out / "plots"
    plot_scores(table, columns, plots / "scores.png")
    lines = [
        f"# {title}",
        "",
        "Scores (0-100) on the micro-suite's test split.",
        "",
        markdown_table(table, columns),
        "",
    ]
    lines += ["![scores per category](plots/scores.png)", ""]
    if stages:
        from barkit.train.kinds import recipe_kinds

        kinds = ["base", *recipe_kinds()]
        lines += [
            "## Each expert after each stage",
            "",
            "In-domain score (0-100) on the expert's own category.",
            "",
        ]
        lines += [markdown_table(stages, kinds), ""]
    if result.routed is not None and (result.routed / "routing.png").is_file():
        shutil.copy(result.routed / "routing.png", plots / "routing.png")
        lines += [
            "## Routing",
            "",
            "Share of each category's tokens sent to each expert after router training.",
            "",
        ]
        lines += ["![routing heatmap](plots/routing.png)", ""]
    curves = reward_curves(out)
    if curves:
        plot_rewards(curves, plots / "rewards.png")
        lines += ["## RLVR reward", "", "![reward curves](plots/rewards.png)", ""]
    ran = [e for e in ledger_summary(out) if e.get("ran") and not str(e.get("step", "")).startswith("eval.")]
    if ran:
        lines += ["## What ran (ledger)", "", "| step | tokens | seconds |", "|---|---:|---:|"]
        lines += [f"| {e['step']} | {e.get('tokens', 0):,} | {e.get('seconds', 0):.1f} |" for e in ran]
        lines.append("")
    path = out / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path
