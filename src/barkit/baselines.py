"""The methods BAR is compared with, each a composition of barkit's existing pieces.

Every training step goes through :meth:`barkit.pipeline.Runner.step`, so a rerun skips what is
already built and every run appears in the ledger. The methods share one :class:`Budget`: a
domain stage of kind K trains ``budget.steps[K]`` steps per domain whichever method runs it, so
each domain sees the same number of tokens in every method (a stage over k domains at once
trains k times the steps).

* dense experts: each domain's stages on a dense copy of the base, everything trainable
  (the experts BTX, BTS and weight averaging start from);
* monolithic retraining: all domains' data through one dense pipeline, with or without mid-training;
* sequential continual training: the domains one after another on one dense model;
* dense weight averaging: the mean of independently trained dense experts;
* BTX: dense experts' FFNs become MoE experts (the base's FFN first), the rest averaged, then the
  MoE fine-tuned on the sample the BAR router gets;
* BTS: the base as hub, the dense experts stitched, stitches trained on the same sample;
* BAR and FlexOlmo-style: the recipe pipeline (``barkit.pipeline``) with its own trainable sets.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from barkit.artifacts import atomic_dir, read_manifest, write_manifest
from barkit.errors import ConfigError, IncompatibleError
from barkit.families import expert_count
from barkit.pipeline import Runner

if TYPE_CHECKING:
    from barkit.recipe import Recipe
    from barkit.train.config import StageKind

#: domain -> its stages in order (BAR: math and code mid-train, SFT, RLVR; tool use and safety SFT)
DomainPlan = dict[str, tuple["StageKind", ...]]


@dataclass(frozen=True)
class Budget:
    """Training and evaluation sizes shared by every method of a reproduction run."""

    preset: str
    #: optimizer steps per domain for each stage kind (``router`` = router / stitch / BTX tuning)
    steps: Mapping[str, int]
    eval_limit: int
    base_steps: int | None = None
    sample: float = 0.05

    def __post_init__(self) -> None:
        from barkit.train.kinds import branch_kinds

        missing = [k for k in branch_kinds() if k not in self.steps]
        if missing:
            raise ConfigError(f"budget: no step count for stage kind(s) {', '.join(missing)}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "preset": self.preset,
            "steps": dict(self.steps),
            "eval_limit": self.eval_limit,
            "base_steps": self.base_steps,
            "sample": self.sample,
        }


def domain_plan(recipe: Recipe) -> DomainPlan:
    """Each expert's domain and stage kinds, from a recipe (the same plan for every method)."""
    return {spec.suite_domain(): tuple(s.kind for s in spec.stages) for spec in recipe.experts.values()}


class ScopedRunner(Runner):
    """A view of a runner whose steps live under ``prefix/`` and are named ``prefix.``.

    Steps run through the parent, so one ledger records the whole reproduction and a scoped
    runner can itself be scoped (``seed1/bar/...``). ``recipe`` replaces the parent's for the
    pipeline builders (BAR and its FlexOlmo-style variant are two recipes).
    """

    def __init__(self, parent: Runner, prefix: str, recipe: Recipe | None = None) -> None:
        super().__init__(parent.out, recipe or parent.recipe, parent.log, jobs=parent.jobs)
        self.parent, self.prefix = parent, prefix.strip("/")
        self.outcomes = parent.outcomes

    def step(
        self, name: str, rel: str, config: Any, inputs: list[Path], build: Callable[[Path], Any]
    ) -> Path:
        label = self.prefix.replace("/", ".")
        return self.parent.step(f"{label}.{name}", f"{self.prefix}/{rel}", config, inputs, build)


def artifact_path(runner: Runner, rel: str) -> Path:
    """Where ``runner.step(..., rel, ...)`` puts its folder (through any scoping)."""
    if isinstance(runner, ScopedRunner):
        return artifact_path(runner.parent, f"{runner.prefix}/{rel}")
    return runner.out / rel


@dataclass
class Context:
    """What every method builder needs: where to build, from which base, with what budget."""

    runner: Runner
    base: Path
    budget: Budget
    seed: int
    plan: DomainPlan
    progress: bool = True

    def scoped(self, prefix: str, recipe: Recipe | None = None) -> Context:
        return Context(
            ScopedRunner(self.runner, prefix, recipe),
            self.base,
            self.budget,
            self.seed,
            self.plan,
            self.progress,
        )


# ----------------------------------------------------------------------------- dense stages


def stage_step(
    ctx: Context,
    name: str,
    previous: Path,
    kind: StageKind,
    domains: Sequence[str],
    *,
    on: str = "dense",
    steps: int | None = None,
    overrides: dict[str, Any] | None = None,
) -> Path:
    """One stage over ``domains`` on the ``on`` model in ``previous``, as a runner step.

    ``steps`` defaults to the per-domain budget times the number of domains, so each domain
    sees the same tokens in every method.
    """
    from barkit.train.stages import resolve_stage, run_stage_dir

    steps = steps or ctx.budget.steps[kind] * len(domains)
    plan = resolve_stage(kind, domains, ctx.budget.preset, steps, ctx.seed, overrides, on=on)
    cfg = {"on": on, "domains": list(domains), "resolved": plan.to_json()}

    def build(path: Path) -> Any:
        return run_stage_dir(previous, plan, path, resume=True, progress=ctx.progress)

    return ctx.runner.step(name.replace("/", "."), name, cfg, [previous], build)


def dense_expert(ctx: Context, domain: str, kinds: Sequence[StageKind]) -> Path:
    """A dense expert: ``kinds`` in order from the base, everything trainable.

    Folders are named by the chain of stages so far (``dense/math/sft-rlvr``), so the variants
    with and without mid-training share nothing by accident and share tool/safety experts on purpose.
    """
    current = ctx.base
    for i, kind in enumerate(kinds):
        current = stage_step(ctx, f"dense/{domain}/{'-'.join(kinds[: i + 1])}", current, kind, [domain])
    return current


def dense_experts(ctx: Context, *, midtrain: bool) -> dict[str, Path]:
    """One dense expert per domain of the plan, with or without the mid-training stage."""
    experts: dict[str, Path] = {}
    for domain, kinds in ctx.plan.items():
        chain = kinds if midtrain else tuple(k for k in kinds if k != "midtrain")
        experts[domain] = dense_expert(ctx, domain, chain)
    return experts


def monolithic(ctx: Context, *, midtrain: bool) -> Path:
    """Retraining from the base: each stage kind over all domains that use it, in stage order."""
    from barkit.train.kinds import recipe_kinds

    rel = "monolithic_mid" if midtrain else "monolithic_post"
    current = ctx.base
    for kind in recipe_kinds():
        domains = [d for d, ks in ctx.plan.items() if kind in ks]
        if domains and (midtrain or kind != "midtrain"):
            current = stage_step(ctx, f"{rel}/{kind}", current, kind, domains)
    return current


def sequential(ctx: Context) -> Path:
    """Continual training: each domain's stages on the model the previous domain left."""
    current, index = ctx.base, 0
    for domain, kinds in ctx.plan.items():
        for kind in kinds:
            index += 1
            current = stage_step(ctx, f"sequential/{index:02d}_{domain}_{kind}", current, kind, [domain])
    return current


# ----------------------------------------------------------------------------- weight averaging


def _weights(folder: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    tensors: dict[str, Any] = {}
    for file in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(str(file)))
    return tensors


def _check_vocab_prefix(wide: Any, narrow: Any, what: Path) -> None:
    """Token ids of the narrower tokenizer must mean the same in the wider one."""
    theirs = wide.get_vocab()
    for token, index in narrow.get_vocab().items():
        if theirs.get(token) != index:
            raise IncompatibleError(
                f"{what}: token {token!r} has id {index} there, {theirs.get(token)} elsewhere"
            )


def _row_mean(tensors: Sequence[Any]) -> Any:
    """Mean over inputs, row by row over the inputs that have the row (vocabulary grown by one
    expert keeps that expert's rows instead of averaging them with zeros)."""
    import torch

    rows = max(int(t.shape[0]) for t in tensors)
    total = torch.zeros((rows, *tensors[0].shape[1:]), dtype=torch.float32)
    count = torch.zeros(rows, dtype=torch.float32)
    for t in tensors:
        total[: t.shape[0]] += t.float()
        count[: t.shape[0]] += 1
    shape = (rows,) + (1,) * (total.dim() - 1)
    return (total / count.view(shape)).to(tensors[0].dtype)


def average_dense(
    model_dirs: Sequence[str | os.PathLike[str]], out_dir: str | os.PathLike[str]
) -> dict[str, Any]:
    """Dense weight averaging: every tensor is the mean of the inputs' tensors.

    Inputs must be dense barkit models from the same base with the same tensors; vocabularies
    may differ only by tokens appended after the base's (the tool markers). Returns the manifest.
    """
    from barkit.modeling import load_model, save_model

    start = time.perf_counter()
    dirs = [Path(d) for d in model_dirs]
    if len(dirs) < 2:
        raise ConfigError("averaging needs at least two models")
    manifests = [read_manifest(d) for d in dirs]
    bases = {str(m.get("base_fingerprint") or m.get("fingerprint")) for m in manifests}
    if len(bases) != 1:
        raise IncompatibleError(
            f"{dirs[0]}: averaged models come from different bases ({', '.join(sorted(bases))})"
        )
    loaded = [load_model(d) for d in dirs]
    widest = max(range(len(dirs)), key=lambda i: len(loaded[i][1]))
    for i, (_, tok) in enumerate(loaded):
        _check_vocab_prefix(loaded[widest][1], tok, dirs[i])
    states = [_weights(d) for d in dirs]
    names = set(states[0])
    for d, state in zip(dirs[1:], states[1:], strict=True):
        if set(state) != names:
            raise IncompatibleError(f"{d}: tensor names differ from {dirs[0]}'s")
    model, tokenizer = loaded[widest]
    averaged = {n: _row_mean([s[n] for s in states]) for n in names}
    loaded_keys = model.load_state_dict(averaged, strict=False)
    if loaded_keys.missing_keys or loaded_keys.unexpected_keys:
        # a silently skipped tensor would leave one input's weights in the "average"
        odd = [*loaded_keys.missing_keys, *loaded_keys.unexpected_keys]
        raise IncompatibleError(
            f"{dirs[widest]}: averaged tensors do not match the model ({', '.join(odd[:3])})"
        )
    manifest = {
        "stage": "average",
        "method": "dense weight averaging",
        "domain": None,
        "base_fingerprint": bases.pop(),
        "inputs": [
            {"path": str(d), "fingerprint": m.get("fingerprint")}
            for d, m in zip(dirs, manifests, strict=True)
        ],
        "tokens": 0,
        "seconds": round(time.perf_counter() - start, 2),
    }
    return save_model(model, tokenizer, out_dir, manifest)


def averaged(ctx: Context, name: str, experts: Mapping[str, Path]) -> Path:
    dirs = list(experts.values())
    cfg = {"method": "mean", "experts": list(experts)}
    return ctx.runner.step(name.replace("/", "."), name, cfg, dirs, lambda p: average_dense(dirs, p))


# ----------------------------------------------------------------------------- MoE fine-tuning


def finetune_on_router_sample(
    model_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    domains: Sequence[str],
    *,
    trainable: list[str],
    budget: Budget,
    seed: int,
    progress: bool = True,
) -> dict[str, Any]:
    """Train ``trainable`` of an MoE on the stratified sample BAR's router stage gets.

    barkit's loop always keeps expert 0 and its router row bit-identical (the anchor guard);
    for BTX that expert is the base's FFN, which then plays the anchor's part.
    """
    from barkit.modeling import save_model
    from barkit.train.stage_data import routed_categories, router_sample
    from barkit.train.stages import resolve_stage, run_stage_on

    source, out = Path(model_dir), Path(out_dir)
    steps, overrides = budget.steps["router"], {"trainable": trainable}
    plan = resolve_stage(
        "router", routed_categories(domains), budget.preset, steps, seed, overrides, on="merged"
    )
    work = out.parent / f".{out.name}.work"
    trained = run_stage_on(
        source, plan, work, data=router_sample(budget.sample), resume=True, progress=progress
    )
    parent, result = trained.parent, trained.result
    manifest = {
        **{k: parent.get(k) for k in ("experts", "base_fingerprint", "family", "model_type")},
        "stage": "finetune",
        "inputs": [{"path": str(source), "fingerprint": parent.get("fingerprint")}],
        "config": {"sample": budget.sample, "stage": plan.cfg.model_dump(mode="json")},
        "sample_sizes": trained.data["sample_sizes"],
        "tokens": result.tokens,
        "metrics": result.summary,
    }
    written = save_model(result.model, trained.tokenizer, out, manifest)  # type: ignore[arg-type]
    trained.cleanup()
    return written


def btx(ctx: Context, experts: Mapping[str, Path]) -> Path:
    """BTX: the base's and the dense experts' FFNs become experts, the rest averaged; then
    every parameter (but expert 0, see :func:`finetune_on_router_sample`) tunes on the router sample."""
    from barkit.merge import merge_dense_btx

    dirs = [ctx.base, *experts.values()]
    merged = ctx.runner.step(
        "btx.merge",
        "btx/merged",
        {"method": "btx", "router_init": "random", "seed": ctx.seed},
        dirs,
        lambda p: merge_dense_btx(dirs, p, router_init="random", seed=ctx.seed, progress=False),
    )
    cfg = {"trainable": ["*"], "budget": ctx.budget.to_dict(), "seed": ctx.seed, "domains": list(experts)}
    return ctx.runner.step(
        "btx.finetune",
        "btx/tuned",
        cfg,
        [merged],
        lambda p: finetune_on_router_sample(
            merged, p, list(experts), trainable=["*"], budget=ctx.budget, seed=ctx.seed, progress=ctx.progress
        ),
    )


def bts(ctx: Context, experts: Mapping[str, Path], every: int = 2) -> Path:
    """BTS: the base as hub, the dense experts stitched; stitches train on the router sample."""
    from barkit.stitch import TrainOptions, stitch_create

    dirs = list(experts.values())
    opts = TrainOptions(
        sample=ctx.budget.sample,
        steps=ctx.budget.steps["router"],
        preset=ctx.budget.preset,
        seed=ctx.seed,
        progress=ctx.progress,
    )
    cfg = {"every": every, "budget": ctx.budget.to_dict(), "seed": ctx.seed, "domains": list(experts)}
    return ctx.runner.step(
        "bts.stitch",
        "bts/stitched",
        cfg,
        [ctx.base, *dirs],
        lambda p: stitch_create(ctx.base, dirs, p, every=every, domains=list(experts), options=opts),
    )


# ----------------------------------------------------------------------------- BAR and variants


@dataclass
class BarRun:
    """The artifacts of one BAR-style pipeline: each expert's stage outputs, merged, routed."""

    stages: dict[str, dict[str, Path]] = field(default_factory=dict)
    merged: Path | None = None
    routed: Path | None = None

    @property
    def experts(self) -> dict[str, Path]:
        """Each expert's last stage."""
        return {name: list(stages.values())[-1] for name, stages in self.stages.items()}


def budget_recipe(recipe: Recipe, budget: Budget, seed: int, trainable: list[str] | None = None) -> Recipe:
    """``recipe`` with the budget's preset, step counts and seed; ``trainable`` for every stage."""
    experts = {}
    for name, spec in recipe.experts.items():
        stages = [
            s.model_copy(
                update={"steps": budget.steps[s.kind], **({"trainable": trainable} if trainable else {})}
            )
            for s in spec.stages
        ]
        experts[name] = spec.model_copy(update={"stages": stages})
    route = recipe.route.model_copy(update={"steps": budget.steps["router"], "sample": budget.sample})
    return recipe.model_copy(
        update={"preset": budget.preset, "seed": seed, "experts": experts, "route": route}
    )


def bar_pipeline(ctx: Context, recipe: Recipe, prefix: str) -> BarRun:
    """Branch, adapt, merge and route ``recipe``'s experts from ``ctx.base`` under ``prefix/``."""
    from barkit.pipeline import build_expert, build_merge, build_route

    scoped = ScopedRunner(ctx.runner, prefix, recipe)
    run = BarRun()
    for name, spec in recipe.experts.items():
        build_expert(scoped, name, spec, ctx.base, progress=ctx.progress)
        folder = artifact_path(scoped, f"experts/{name}")
        run.stages[name] = {s.kind: folder / s.kind for s in spec.stages}
    run.merged = build_merge(scoped, run.experts, ctx.base, progress=ctx.progress)
    run.routed = build_route(scoped, run.merged, progress=ctx.progress)
    return run


# ----------------------------------------------------------------------------- derived models and cost


def with_top_k(
    model_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str], top_k: int
) -> dict[str, Any]:
    """A copy of an MoE folder that routes each token to ``top_k`` experts (no weight changes)."""
    source = Path(model_dir)
    config = json.loads((source / "config.json").read_text())
    experts = expert_count(config)
    if not 1 <= top_k <= experts:
        raise ConfigError(f"top_k={top_k}: must be between 1 and the model's {experts} experts")
    parent = read_manifest(source)
    with atomic_dir(out_dir) as tmp:
        for item in source.iterdir():
            if item.is_file() and item.name != "barkit.json":
                shutil.copy2(item, tmp / item.name)
        (tmp / "config.json").write_text(
            json.dumps({**config, "num_experts_per_tok": top_k}, indent=2) + "\n"
        )
        manifest = {k: v for k, v in parent.items() if k not in ("fingerprint", "recipe_key", "created")}
        manifest.update(
            top_k=top_k,
            tokens=0,
            derived_from={"path": str(source), "fingerprint": parent.get("fingerprint")},
        )
        return write_manifest(tmp, manifest)


def moe_cost(model: Any) -> dict[str, Any]:
    """Parameters an MoE (or dense) model touches per token: all but the unselected experts' FFNs."""
    total = sum(p.numel() for p in model.parameters())
    expert = sum(p.numel() for n, p in model.named_parameters() if ".experts." in n)
    n = expert_count(model) or 1
    k = int(getattr(model.config, "num_experts_per_tok", n) or n)
    used = total - expert + expert * k // n
    embedding = model.get_input_embeddings().weight.numel()
    return {
        "params": total,
        "params_per_token": used,
        "matmul_params_per_token": used - embedding,
        "top_k": k,
    }
