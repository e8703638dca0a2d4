"""``barkit run``: build a recipe's whole pipeline, skipping what is already built.

Every step writes one artifact folder under the run folder (DESIGN.md's layout). A step is
identified by a key: the fingerprint of its resolved configuration and of its inputs'
content fingerprints. A step whose folder already carries the same key is skipped, so
changing one expert's data or stages rebuilds only that expert, the merge and the router,
and an interrupted run resumes where it stopped. Each executed or skipped step appends a
line to ``ledger.jsonl`` (tokens processed and seconds).

Experts are independent of each other until the merge (BAR's point), so ``jobs`` > 1 builds
that many experts (and then runs that many evaluations) at once, each in its own process with
an equal share of the CPU threads (:mod:`barkit.jobs`). Torch results are bit-reproducible only
at the same thread count, so an expert built with ``jobs=2`` on a 2-core machine (one thread)
differs in its last bits from one built with ``jobs=1``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from barkit.artifacts import (
    MANIFEST,
    append_ledger,
    atomic_write_text,
    config_fingerprint,
    read_manifest,
    step_lock,
)
from barkit.errors import ConfigError
from barkit.recipe import ExpertSpec, Recipe
from barkit.suite import SUITE_VERSION

if TYPE_CHECKING:
    from barkit.train.stages import StagePlan

Log = Callable[[str], None]


def _print(msg: str) -> None:
    print(msg, flush=True)


@dataclass
class StepOutcome:
    name: str
    path: Path
    fingerprint: str
    ran: bool
    tokens: int = 0
    seconds: float = 0.0


@dataclass
class RunResult:
    out: Path
    base: Path
    experts: dict[str, Path] = field(default_factory=dict)
    merged: Path | None = None
    #: the recovered merge (recipe ``recover:``), which the router stage then starts from
    recovered: Path | None = None
    routed: Path | None = None
    steps: list[StepOutcome] = field(default_factory=list)
    scores: dict[str, dict[str, float]] = field(default_factory=dict)


class Runner:
    """Runs steps under ``out`` with fingerprint-based skipping and a ledger."""

    def __init__(self, out: Path, recipe: Recipe, log: Log = _print, *, jobs: int = 1) -> None:
        self.out, self.recipe, self.log = out, recipe, log
        #: independent jobs (experts, evaluations) run at once
        self.jobs = jobs
        self.outcomes: list[StepOutcome] = []

    def step(
        self, name: str, rel: str, config: Any, inputs: list[Path], build: Callable[[Path], Any]
    ) -> Path:
        """Build ``out/rel`` with ``build(path)`` unless it already holds this key."""
        path = self.out / rel
        keyed = {"config": config, "suite_version": SUITE_VERSION}
        key = config_fingerprint(keyed, [read_manifest(p).get("fingerprint") for p in inputs])
        with step_lock(path, lambda: self.log(f"[wait] {name}: another process is building {path}")):
            outcome = self._build_or_skip(name, path, key, build)
            append_ledger(
                self.out,
                {
                    "step": name,
                    "path": rel,
                    "ran": outcome.ran,
                    "key": key,
                    "fingerprint": outcome.fingerprint,
                    "tokens": outcome.tokens,
                    "seconds": round(outcome.seconds, 3),
                    "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                },
            )
        self.outcomes.append(outcome)
        return path

    def _build_or_skip(self, name: str, path: Path, key: str, build: Callable[[Path], Any]) -> StepOutcome:
        manifest = _manifest_or_none(path)
        if manifest is not None and manifest.get("recipe_key") == key:
            self.log(f"[skip] {name}: up to date ({path})")
            return StepOutcome(name, path, str(manifest.get("fingerprint")), ran=False)
        self.log(f"[run ] {name} -> {path}")
        start = time.perf_counter()
        build(path)
        seconds = time.perf_counter() - start
        manifest = read_manifest(path)
        manifest["recipe_key"] = key
        atomic_write_text(path / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n")
        tokens = int(manifest.get("tokens", 0) or 0)
        return StepOutcome(name, path, str(manifest.get("fingerprint")), True, tokens, seconds)


def _manifest_or_none(path: Path) -> dict[str, Any] | None:
    if not (path / MANIFEST).is_file():
        return None
    try:
        return read_manifest(path)
    except Exception:
        return None


def build_base(runner: Runner, *, progress: bool = True) -> Path:
    recipe = runner.recipe
    if recipe.base.path is not None:
        path = Path(recipe.base.path)
        read_manifest(path)  # an external base must carry barkit.json (run `barkit branch` to see why)
        return path
    from barkit.base import train_base
    from barkit.shipped import copy_shipped, expected_fingerprint, find_shipped

    arch, preset, seed = recipe.base.arch, recipe.preset, recipe.seed
    shipped = find_shipped(arch, preset, seed) if recipe.base.steps is None else None
    # The key is the base recipe's fingerprint, so the shipped copy and a rebuild share it.
    cfg: dict[str, Any] = {"arch": arch, "recipe_fingerprint": expected_fingerprint(arch, preset, seed)}
    cfg["steps"] = None
    if shipped is not None:
        return runner.step("base", "base", cfg, [], lambda p: copy_shipped(shipped, p))
    cfg["steps"] = recipe.base.steps
    if recipe.base.steps is None:
        runner.log(
            f"no shipped base matches the {preset} base recipe; building it first "
            f"(checkpointed: an interrupted run resumes), see `barkit base --help`"
        )
    return runner.step(
        "base",
        "base",
        cfg,
        [],
        lambda p: train_base(
            p, arch=arch, preset=preset, steps=recipe.base.steps, seed=seed, progress=progress
        ),
    )


def build_expert(runner: Runner, name: str, spec: ExpertSpec, base: Path, *, progress: bool = True) -> Path:
    """Branch from the base, then each stage in order; returns the last stage's folder."""
    from barkit.branch import branch
    from barkit.train.stages import run_stage_dir

    recipe = runner.recipe
    label = spec.label(name)  # the suite domain, or the name of an expert on the user's data
    cfg = {"router_init": recipe.router_init, "domain": spec.domain, "seed": recipe.seed}
    current = runner.step(
        f"experts.{name}.branch",
        f"experts/{name}/branch",
        cfg,
        [base],
        lambda p: branch(base, p, router_init=recipe.router_init, domain=spec.domain, seed=recipe.seed),
    )
    for stage in spec.stages:
        plan = stage.plan(label, recipe.preset, recipe.seed)
        # the resolved plan holds the data's content hash: an edited file rebuilds this expert
        stage_cfg = {"kind": stage.kind, "domain": label, "resolved": plan.to_json()}
        previous = current

        def build(p: Path, plan: StagePlan = plan, previous: Path = previous) -> Any:
            return run_stage_dir(previous, plan, p, resume=True, progress=progress)

        current = runner.step(
            f"experts.{name}.{stage.kind}", f"experts/{name}/{stage.kind}", stage_cfg, [previous], build
        )
    return current


def build_merge(runner: Runner, experts: dict[str, Path], base: Path, *, progress: bool = True) -> Path:
    from barkit.merge import needs_base

    spec = runner.recipe.merge
    cfg = spec.model_dump(mode="json")
    dirs = list(experts.values())
    base_dir = base if needs_base(spec.shared, spec.overrides) else None
    inputs = [*dirs, base] if base_dir is not None else dirs

    def build(p: Path) -> None:
        from barkit.merge import merge

        merge(
            dirs,
            p,
            shared=spec.shared,
            weights=spec.weights,
            base_dir=base_dir,
            overrides=dict(spec.overrides),
            top_k=spec.top_k,
            progress=progress,
        )

    return runner.step("merge", "merged", cfg, inputs, build)


def build_recover(runner: Runner, merged: Path, *, progress: bool = True) -> Path:
    """The optional recovery of the merged model (recipe ``recover:``), keyed on its plan."""
    from barkit.recover import recover

    recipe = runner.recipe
    spec = recipe.recover
    if spec is None:
        raise ConfigError("the recipe has no recover step")
    plan = spec.plan(recipe.domains(), recipe.preset, recipe.seed)
    cfg = {"sample": spec.sample, "resolved": plan.to_json()}
    return runner.step(
        "recover",
        "recovered",
        cfg,
        [merged],
        lambda p: recover(merged, p, sample=spec.sample, plan=plan, resume=True, progress=progress),
    )


def build_route(runner: Runner, merged: Path, *, progress: bool = True) -> Path:
    """The router stage on the merged model, keyed on the plan it then runs."""
    from barkit.route import route, route_plan

    recipe = runner.recipe
    spec = recipe.route
    files = recipe.route_files()
    data = None
    if files is not None:
        from barkit.train.file_data import user_data

        data = user_data(files)
    plan = route_plan(merged, preset=recipe.preset, steps=spec.steps, seed=recipe.seed, data=data, lr=spec.lr)
    cfg = {"sample": spec.sample, "preset": recipe.preset, "stage": plan.cfg.model_dump(mode="json")}
    if spec.domain_loss:  # only when set: routers built without it keep their keys
        cfg["domain_loss"] = spec.domain_loss
    if data is not None:
        cfg["data"] = data.to_json()
    return runner.step(
        "route",
        "routed",
        cfg,
        [merged],
        lambda p: route(
            merged,
            p,
            sample=spec.sample,
            plan=plan,
            domain_loss=spec.domain_loss,
            resume=True,
            progress=progress,
        ),
    )


def run_recipe(
    recipe: Recipe,
    out: str | Path,
    *,
    only: str | None = None,
    evaluate: bool = True,
    log: Log = _print,
    jobs: int = 1,
) -> RunResult:
    """Build ``recipe`` under ``out``. ``only="experts.NAME"`` builds that expert's pipeline alone;
    ``jobs`` experts are built at once (see the module docstring)."""
    if jobs < 1:
        raise ConfigError(f"jobs must be at least 1, got {jobs}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "recipe.yaml", _recipe_yaml(recipe))
    runner = Runner(out, recipe, log, jobs=jobs)
    selected = _select(recipe, only)
    base = build_base(runner)
    result = RunResult(out=out, base=base)
    if jobs > 1 and len(selected) > 1:
        result.experts = _build_experts_at_once(runner, selected, base, jobs)
    for name in selected:
        if name not in result.experts:
            result.experts[name] = build_expert(runner, name, recipe.experts[name], base)
    if only is None:
        result.merged = build_merge(runner, result.experts, base)
        if recipe.recover is not None:
            result.recovered = build_recover(runner, result.merged)
        result.routed = build_route(runner, result.recovered or result.merged)
        if evaluate:
            from barkit.report import evaluate_run

            result.scores = evaluate_run(runner, result)
    result.steps = runner.outcomes
    return result


def _expert_job(recipe: Recipe, out: str, name: str, base: str) -> tuple[Path, list[StepOutcome]]:
    """One expert's whole pipeline in a worker process; its log lines carry the expert's name."""
    runner = Runner(Path(out), recipe, lambda msg: _print(f"[{name}] {msg}"))
    path = build_expert(runner, name, recipe.experts[name], Path(base), progress=False)
    return path, runner.outcomes


def _build_experts_at_once(runner: Runner, names: list[str], base: Path, jobs: int) -> dict[str, Path]:
    """Each expert's pipeline in its own process, ``jobs`` at a time (:mod:`barkit.jobs`).

    The longest experts start first (estimated from their stages' token counts), so a long
    one does not start last and leave the other workers idle; each expert's result does not
    depend on the order.
    """
    from barkit.jobs import run_at_once, threads_per_job

    jobs = min(jobs, len(names))
    runner.log(f"building {len(names)} experts, {jobs} at once, {threads_per_job(jobs)} torch thread(s) each")
    order = sorted(names, key=lambda name: -_expert_cost(runner.recipe, name))
    calls = [(runner.recipe, str(runner.out), name, str(base)) for name in order]
    done = dict(zip(order, run_at_once(_expert_job, calls, jobs, desc="experts"), strict=True))
    paths: dict[str, Path] = {}
    for name in names:  # in recipe order, whatever order they ran and finished in
        paths[name], outcomes = done[name]
        runner.outcomes.extend(outcomes)
    return paths


# An RL step samples completions before it trains: per token it costs a few SFT steps' worth.
_RL_COST = 4.0


def _expert_cost(recipe: Recipe, name: str) -> float:
    """Tokens an expert's stages train on (RL weighted by :data:`_RL_COST`): a scheduling estimate."""
    spec = recipe.experts[name]
    total = 0.0
    for stage in spec.stages:
        cfg = stage.plan(spec.label(name), recipe.preset, recipe.seed).cfg
        tokens = float(cfg.steps * cfg.batch_size * cfg.grad_accum * cfg.seq_len)
        total += tokens * (_RL_COST if stage.kind == "rlvr" else 1.0)
    return total


def _select(recipe: Recipe, only: str | None) -> list[str]:
    if only is None:
        return list(recipe.experts)
    prefix, _, name = only.partition(".")
    if prefix != "experts" or name not in recipe.experts:
        known = ", ".join(f"experts.{n}" for n in recipe.experts)
        raise ConfigError(f"--only {only!r}: expected one of {known}")
    return [name]


def _recipe_yaml(recipe: Recipe) -> str:
    from barkit.recipe import to_yaml

    return to_yaml(recipe)
