"""The one stage driver: any stage kind on any input kind (branch, dense, merged, stitched).

A stage runs in two steps. :func:`resolve_stage` turns (kind, input kind, domains, preset,
overrides) into a :class:`StagePlan`: the validated stage config, the GRPO settings and the
special tokens, with the input kind's default trainable set where the overrides name none. It
runs once per stage; a pipeline keys its step on the plan and hands the same plan to the run.
:func:`run_stage_on` checks the input (a folder, checked before any weights load, or a model
already in memory), adds the special tokens, builds the objective (the kind's own, or the
caller's ``data``, e.g. the router's stratified sample) and trains through the one loop. A plan
with ``data`` (a :class:`~barkit.train.file_data.UserData`) reads the user's files instead of
the suite; its content hashes and verifier are part of the resolved config, hence of every
fingerprint keyed on it.

:func:`run_stage_dir` is the folder-to-folder form every expert and dense stage uses; the
router stage (``barkit route``), the baselines' MoE tuning and the stitch training call
:func:`run_stage_on` and write their own manifests. The stage kinds themselves (data,
objective, defaults) live in :mod:`barkit.train.kinds`; the input kinds in
:mod:`barkit.train.inputs`.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from barkit.artifacts import config_fingerprint
from barkit.errors import BarkitError, ConfigError
from barkit.train.config import (
    GRPOConfig,
    StageConfig,
    StageKind,
    StageOverrides,
    default_stage,
    grpo_config,
    parse_overrides,
)
from barkit.train.stage_data import ObjectiveFactory, ObjectiveInput, default_special_tokens

if TYPE_CHECKING:
    from barkit.train.file_data import UserData
    from barkit.train.loop import StageResult


@dataclass(frozen=True)
class StagePlan:
    """A resolved stage: everything that decides what it computes, before anything loads."""

    kind: StageKind
    on: str
    domains: tuple[str, ...]
    preset: str
    cfg: StageConfig
    grpo: GRPOConfig | None
    special_tokens: list[str] = field(default_factory=list)
    #: the user's files the stage reads instead of the suite's data; ``domains`` then are labels
    data: UserData | None = None

    def to_json(self) -> dict[str, Any]:
        """The resolved config as written to the manifest (and keyed on by pipelines)."""
        resolved: dict[str, Any] = {
            **self.cfg.model_dump(mode="json"),
            "preset": self.preset,
            "add_special_tokens": self.special_tokens,
        }
        if self.grpo is not None:
            resolved["grpo"] = self.grpo.model_dump(mode="json")
        if self.data is not None:
            resolved["data"] = self.data.to_json()
        return resolved


def _check_domains(domains: Sequence[str], kind: StageKind, on: str) -> tuple[str, ...]:
    from barkit.suite import get_category
    from barkit.train.kinds import get_kind

    names = tuple(domains)
    if not names or len(set(names)) != len(names):
        raise ConfigError(f"a stage needs distinct domains, got {list(names)}")
    if on == "branch" and len(names) != 1:
        raise ConfigError(f"a branch is one expert: one domain, got {list(names)}")
    for name in names:
        category = get_category(name)  # an unknown domain fails here, naming the known ones
        if get_kind(kind).needs_text and not category.has_text:
            raise BarkitError(f"domain {name!r} has no raw text to {kind}; start it at a later stage")
    return names


def _check_labels(labels: Sequence[str], on: str) -> tuple[str, ...]:
    """Expert names of a stage on a user's data: distinct, one on a branch, any name."""
    names = tuple(labels)
    if not names or len(set(names)) != len(names) or not all(names):
        raise ConfigError(f"a stage needs distinct expert names, got {list(names)}")
    if on == "branch" and len(names) != 1:
        raise ConfigError(f"a branch is one expert: one name, got {list(names)}")
    return names


def resolve_stage(
    stage: StageKind,
    domains: str | Sequence[str],
    preset: str,
    steps: int | None = None,
    seed: int = 0,
    overrides: StageOverrides | dict[str, Any] | None = None,
    *,
    on: str = "branch",
    data: UserData | None = None,
) -> StagePlan:
    """Resolve one stage of ``stage`` on an ``on`` input over ``domains`` (ConfigError if it
    cannot run there or an override is bad).

    With ``data`` the stage reads the user's files and ``domains`` only name the expert(s);
    general data is mixed in only when ``data`` brings some, and no special tokens are added
    unless the overrides name them."""
    from barkit.train.inputs import get_input
    from barkit.train.kinds import get_kind

    spec, source = get_kind(stage), get_input(on)
    if on not in spec.inputs:
        runs_on = ", ".join(sorted(spec.inputs)) or "none (barkit builds it itself)"
        raise ConfigError(f"stage {stage!r} does not run on a {on} model; it runs on: {runs_on}")
    listed = [domains] if isinstance(domains, str) else domains
    names = _check_domains(listed, stage, on) if data is None else _check_labels(listed, on)
    extra = parse_overrides(overrides)
    if extra.grpo is not None and not spec.rl:
        raise ConfigError(f"stage override 'grpo' only applies to rlvr, not {stage}")
    for added in ("synthetic", "augment"):
        if getattr(extra, added) and spec.data_kind != "sft":
            raise ConfigError(
                f"stage override {added!r} adds conversations: it applies to SFT stages, not {stage}"
            )
    fields = extra.model_dump(exclude={"add_special_tokens", "grpo"})
    if "trainable" not in fields and source.trainable is not None:
        fields["trainable"] = list(source.trainable)
    if data is not None:
        data.check_kind(spec)
        fields["general_mix"] = data.general_mix(fields.get("general_mix"))
    cfg = default_stage(stage, preset, **{**fields, "steps": steps, "seed": seed})
    grpo = grpo_config(preset, extra.grpo) if spec.rl else None
    tokens = extra.add_special_tokens
    if tokens is None and data is None:
        tokens = list(dict.fromkeys(t for d in names for t in default_special_tokens(d, stage)))
    _check_new_rows(cfg, tokens or ())
    return StagePlan(stage, on, names, preset, cfg, grpo, list(tokens or ()), data)


def _check_new_rows(cfg: StageConfig, tokens: Sequence[str]) -> None:
    """``embeddings:new`` / ``lm_head:new`` train the rows of the tokens this stage adds; with
    none to add they would train nothing, which is refused when the stage is resolved."""
    from barkit.train.freeze import NEW_ROWS_SUFFIX

    by_rows = [p for p in cfg.trainable_patterns() if p.endswith(NEW_ROWS_SUFFIX)]
    if by_rows and not tokens:
        raise ConfigError(
            f"trainable {by_rows[0]!r} needs tokens to add (add_special_tokens); this stage adds none"
        )


# ----------------------------------------------------------------------------- running


@dataclass
class Trained:
    """A finished stage's model and bookkeeping, until its caller saves it."""

    plan: StagePlan
    result: StageResult
    tokenizer: Any
    parent: dict[str, Any]
    data: dict[str, Any]
    added: dict[str, int]
    work: Path
    started: float

    def cleanup(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)


def _load(source: Path | tuple[Any, Any], plan: StagePlan) -> tuple[Any, Any, dict[str, Any]]:
    """(model, tokenizer, parent manifest): a folder is checked by its input kind before loading."""
    from barkit.train.inputs import get_input

    if not isinstance(source, Path):
        model, tokenizer = source
        return model, tokenizer, {}
    parent = get_input(plan.on).check(source, plan.domains)
    import torch

    from barkit.loader import load_model

    # loaded in the stage's dtype, not cast after: a model that fits only in bf16 never exists in fp32
    model, tokenizer = load_model(source, dtype=getattr(torch, plan.cfg.dtype))
    return model, tokenizer, parent


def run_stage_on(
    source: str | os.PathLike[str] | tuple[Any, Any],
    plan: StagePlan,
    work: str | os.PathLike[str],
    *,
    data: ObjectiveFactory | None = None,
    resume: bool = False,
    progress: bool = True,
) -> Trained:
    """Run ``plan`` on ``source`` (a model folder, or ``(model, tokenizer)`` in memory).

    ``data`` replaces the kind's objective factory. ``work`` receives the loop's metrics and
    resumable checkpoint; it is kept after a failure that left a checkpoint to resume from and
    removed by :meth:`Trained.cleanup` once the caller has saved.
    """
    from barkit.train.kinds import get_kind, sft_pool_size
    from barkit.train.loop import run_stage
    from barkit.vocab import add_special_tokens

    started = time.perf_counter()
    model, tokenizer, parent = _load(source if isinstance(source, tuple) else Path(source), plan)
    tokens = plan.special_tokens
    before = set(tokenizer.get_vocab())
    added = dict(zip(tokens, add_special_tokens(model, tokenizer, tokens), strict=True)) if tokens else {}
    # rows of tokens that did not exist before this stage: what `embeddings:new` may train
    new_rows = sorted(i for t, i in added.items() if t not in before)
    factory = data or _objective(plan)
    sizes = get_kind(plan.cfg.kind).at(plan.preset)
    inp = ObjectiveInput(
        model, tokenizer, plan.cfg, plan.grpo, plan.domains, plan.preset, sizes, sft_pool_size(plan.preset)
    )
    objective, summary = factory(inp)
    folder = Path(work)
    try:
        result = run_stage(
            model, tokenizer, plan.cfg, objective, folder, resume=resume, progress=progress, new_rows=new_rows
        )
    except BaseException:
        if not (folder / "checkpoint").exists():
            shutil.rmtree(folder, ignore_errors=True)
        raise
    return Trained(plan, result, tokenizer, parent, summary, added, folder, started)


def _objective(plan: StagePlan) -> ObjectiveFactory:
    """The plan's own objective factory: its kind's over the suite, or over the user's files."""
    from barkit.train.kinds import get_kind

    if plan.data is None:
        return get_kind(plan.kind).objective
    from barkit.train.file_data import user_objective

    return user_objective(plan.data)


def run_stage_dir(
    source: str | os.PathLike[str],
    plan: StagePlan,
    out_dir: str | os.PathLike[str],
    *,
    resume: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Run ``plan`` on the model folder ``source`` and write ``out_dir``; returns its manifest.

    The manifest carries the base fingerprint of the input forward, so a merge can check that
    experts grew from the same base.
    """
    from barkit.modeling import save_model

    out = Path(out_dir)
    trained = run_stage_on(source, plan, out.parent / f".{out.name}.work", resume=resume, progress=progress)
    manifest = stage_manifest(trained, Path(source))
    written = save_model(trained.result.model, trained.tokenizer, out, manifest)  # type: ignore[arg-type]
    trained.cleanup()
    return written


def run_domain_stage(
    branch_dir: str | os.PathLike[str],
    *,
    stage: StageKind,
    domain: str,
    out_dir: str | os.PathLike[str],
    preset: str = "tiny",
    steps: int | None = None,
    seed: int = 0,
    overrides: StageOverrides | dict[str, Any] | None = None,
    resume: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """One ``stage`` of ``domain`` on the branch (or previous stage output) in ``branch_dir``.

    ``overrides`` holds StageConfig fields (``general_mix``, ``trainable``, ``optim``, ...) plus
    ``add_special_tokens`` (default: the tool markers at tool_use sft) and ``grpo`` (rlvr only).
    """
    plan = resolve_stage(stage, domain, preset, steps, seed, overrides)
    return run_stage_dir(branch_dir, plan, out_dir, resume=resume, progress=progress)


def stage_manifest(trained: Trained, source: Path) -> dict[str, Any]:
    """The manifest of a folder-to-folder stage."""
    from barkit.artifacts import content_fingerprint
    from barkit.train.inputs import get_input

    plan, result, parent = trained.plan, trained.result, trained.parent
    resolved = plan.to_json()
    input_fp = str(parent.get("fingerprint") or content_fingerprint(source))
    return {
        "stage": plan.kind,
        "family": parent.get("family"),
        "model_type": parent.get("model_type"),
        **get_input(plan.on).describe(plan.domains, parent),
        "config": resolved,
        "config_fingerprint": config_fingerprint(resolved, input_fp),
        "inputs": [{"path": str(source.resolve()), "fingerprint": input_fp, "stage": parent.get("stage")}],
        "base_fingerprint": parent["base_fingerprint"],
        "data": trained.data,
        "added_tokens": trained.added,
        "trainable": {k: list(v) for k, v in result.plan.per_pattern.items()},
        "tokens": result.tokens,
        "seconds": round(time.perf_counter() - trained.started, 2),
        "train_seconds": round(result.seconds, 2),
        "metrics": stage_metrics(result),
    }


def stage_metrics(result: StageResult) -> dict[str, Any]:
    """Summary figures: final loss, mean per-expert token fractions, and the rlvr reward curve."""
    summary: dict[str, Any] = dict(result.summary)
    for prefix, key in (("mean_expert_frac/", "expert_fractions"), ("mean_expert_weight/", "expert_weights")):
        per_expert = sorted((int(k.rsplit("/", 1)[1]), v) for k, v in summary.items() if k.startswith(prefix))
        summary[key] = [v for _, v in per_expert]
    curve = [h["reward_mean"] for h in result.history if "reward_mean" in h]
    if curve:
        summary["reward_curve"] = curve
    summary["history"] = result.history
    return summary
