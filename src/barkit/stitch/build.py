"""Create a stitched model, add an expert to one, remove an expert from one.

Training goes through barkit's one training loop (:func:`barkit.train.loop.run_stage`) with a
``trainable`` set of globs that matches stitch parameters only, so the seed and the experts stay
bit-identical (they are not even in the optimizer). The data is the sample the BAR router gets:
a stratified share of the SFT pools of the experts' domains plus the general categories.

* create: every stitch trains (``stitches.*``);
* add: only the new expert's stitches train (``stitches.experts.<name>.*``), so removing it again
  gives back exactly the model from before the addition;
* remove: no training; the expert's stitch subtree is dropped.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from barkit.artifacts import config_fingerprint, read_manifest, require_model_dir
from barkit.errors import ArtifactError, BarkitError, ConfigError, IncompatibleError
from barkit.stitch.layers import StitchedCausalLM, stitch_points
from barkit.stitch.store import (
    Source,
    StitchSpec,
    check_compatible,
    check_tokenizer,
    is_stitched,
    load_stitched,
    reference,
    save_stitched,
)

STAGE = "stitch"
# Stitch training is the router stage kind on a stitched input: its preset numbers (a small
# sample, few steps, no decay), with the stitches as the trainable set.
STAGE_KIND = "router"


@dataclass
class TrainOptions:
    """How much stitch training to do (``steps=None``: the preset's router step count)."""

    sample: float = 0.05
    steps: int | None = None
    preset: str = "tiny"
    seed: int = 0
    progress: bool = True

    def check(self) -> None:
        from barkit.presets import get_preset

        get_preset(self.preset)  # an unknown preset fails before any model loads
        if not 0.0 < self.sample <= 1.0:
            raise ConfigError(f"--sample {self.sample}: must be in (0, 1]")


def expert_domain(folder: Path, given: str | None) -> str:
    """An expert's domain: ``given`` (``--domains``), else ``domain`` in its barkit.json; a suite category."""
    from barkit.suite import get_category

    domain = given
    if domain is None:
        try:
            domain = read_manifest(folder).get("domain")
        except ArtifactError:
            domain = None
    if not domain:
        raise ConfigError(f"{folder}: no domain in barkit.json; name it with --domains")
    get_category(str(domain))  # an unknown domain fails here, naming the known ones
    return str(domain)


def _domains(expert_dirs: Sequence[Path], domains: Sequence[str] | None) -> list[str]:
    if domains is not None and len(domains) != len(expert_dirs):
        raise ConfigError(f"--domains lists {len(domains)} domains for {len(expert_dirs)} experts")
    names = [expert_domain(d, domains[i] if domains else None) for i, d in enumerate(expert_dirs)]
    for name in names:
        if names.count(name) > 1:
            raise IncompatibleError(f"two experts have the domain {name!r}; stitch one expert per domain")
    return names


def _load_expert(folder: Path, hub: Any, hub_tokenizer: Any) -> Any:
    """Load one expert after checking that it is a plain dense model shaped like the seed."""
    from barkit.modeling import load_model

    if is_stitched(folder):
        raise IncompatibleError(f"{folder}: a stitched model cannot be an expert; give a dense model")
    model, tokenizer = load_model(require_model_dir(folder))
    check_compatible(hub.config, model.config, str(folder))
    check_tokenizer(hub_tokenizer, tokenizer, str(folder))
    return model


def train_stitches(
    model: StitchedCausalLM,
    tokenizer: Any,
    domains: Sequence[str],
    trainable: list[str],
    options: TrainOptions,
    work_dir: str | os.PathLike[str],
) -> tuple[Any, dict[str, Any]]:
    """Train the stitch parameters matched by ``trainable`` in place, on the router's stratified
    sample of ``domains`` + the general categories; returns the stage result and the resolved config.

    ``work_dir`` receives the loop's metrics and checkpoint (the whole model) and is removed
    afterwards: stitch training is short and not resumed.
    """
    from barkit.train.stage_data import routed_categories, router_sample
    from barkit.train.stages import resolve_stage, run_stage_on

    opts = options
    categories = routed_categories(domains)
    overrides = {"trainable": trainable}
    plan = resolve_stage(STAGE_KIND, categories, opts.preset, opts.steps, opts.seed, overrides, on="stitched")
    work = Path(work_dir)
    shutil.rmtree(work, ignore_errors=True)
    try:
        trained = run_stage_on(
            (model, tokenizer), plan, work, data=router_sample(opts.sample), progress=opts.progress
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    resolved = {
        "sample": opts.sample,
        "seed": opts.seed,
        "preset": opts.preset,
        "stage": plan.cfg.model_dump(mode="json"),
        "sample_sizes": trained.data["sample_sizes"],
    }
    return trained.result, resolved


def _manifest(
    operation: str,
    spec: StitchSpec,
    resolved: dict[str, Any],
    result: Any,
    start: float,
    inputs: list[Source],
) -> dict[str, Any]:
    from barkit.branch import base_fingerprint

    sources = [s.to_json() for s in inputs]
    return {
        "stage": STAGE,
        "operation": operation,
        "hub": spec.seed.to_json(),
        "stitched_experts": [e.name for e in spec.experts],
        "domains": {e.name: e.domain for e in spec.experts},
        "base_fingerprint": base_fingerprint(spec.seed.path),
        "inputs": sources,
        "config": resolved,
        "config_fingerprint": config_fingerprint(resolved, sources),
        "tokens": result.tokens if result is not None else 0,
        "wall_time_s": round(time.perf_counter() - start, 3),
        "metrics": result.summary if result is not None else {},
    }


def stitch_create(
    seed_dir: str | os.PathLike[str],
    expert_dirs: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    every: int = 2,
    domains: Sequence[str] | None = None,
    options: TrainOptions | None = None,
) -> dict[str, Any]:
    """Stitch frozen experts to a frozen seed and train the stitches; returns the manifest."""
    from barkit.modeling import load_model

    opts = options or TrainOptions()
    opts.check()
    start = time.perf_counter()
    if not expert_dirs:
        raise ConfigError("give at least one expert folder to stitch")
    seed_path, paths = require_model_dir(seed_dir), [Path(d) for d in expert_dirs]
    names = _domains(paths, domains)
    if is_stitched(seed_path):
        raise IncompatibleError(f"{seed_path}: a stitched model cannot be the seed; give the dense base")
    stitch_points(_num_layers(seed_path), every)  # a bad --every fails before any weights load
    hub, tokenizer = load_model(seed_path)
    experts = {n: _load_expert(p, hub, tokenizer) for n, p in zip(names, paths, strict=True)}
    model = StitchedCausalLM(hub, experts, every)
    spec = StitchSpec(
        every, reference(seed_path), [reference(p, n, n) for n, p in zip(names, paths, strict=True)]
    )
    out = Path(out_dir)
    result, resolved = train_stitches(model, tokenizer, names, ["stitches.*"], opts, _work_dir(out))
    resolved["every"] = every
    manifest = _manifest("create", spec, resolved, result, start, [spec.seed, *spec.experts])
    return save_stitched(model, tokenizer, spec, out, manifest)


def stitch_add(
    model_dir: str | os.PathLike[str],
    expert_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    domain: str | None = None,
    options: TrainOptions | None = None,
) -> dict[str, Any]:
    """Add one expert to a stitched model, training only its new stitches; returns the manifest."""
    opts = options or TrainOptions()
    opts.check()
    start = time.perf_counter()
    folder, expert_path = Path(model_dir), Path(expert_dir)
    name = expert_domain(expert_path, domain)
    spec = StitchSpec.read(folder)
    if name in [e.name for e in spec.experts]:
        raise IncompatibleError(f"{folder}: already has an expert for {name!r}; remove it first")
    model, tokenizer = load_stitched(folder)
    model.add_expert(name, _load_expert(expert_path, model.hub, tokenizer))
    spec.experts.append(reference(expert_path, name, name))
    out = Path(out_dir)
    domains = [e.name for e in spec.experts]
    trainable = [f"stitches.experts.{name}.*"]
    result, resolved = train_stitches(model, tokenizer, domains, trainable, opts, _work_dir(out))
    resolved.update(every=spec.every, added=name)
    manifest = _manifest("add", spec, resolved, result, start, [_self_reference(folder), spec.experts[-1]])
    return save_stitched(model, tokenizer, spec, out, manifest)


def stitch_remove(
    model_dir: str | os.PathLike[str], name: str, out_dir: str | os.PathLike[str]
) -> dict[str, Any]:
    """Remove expert ``name`` and its stitches from a stitched model (no training); returns the manifest."""
    start = time.perf_counter()
    folder = Path(model_dir)
    spec = StitchSpec.read(folder)
    known = [e.name for e in spec.experts]
    if name not in known:
        raise BarkitError(f"{folder}: unknown expert {name!r}; stitched experts: {', '.join(known)}")
    if len(known) == 1:
        raise IncompatibleError(f"{folder}: {name!r} is the only expert; without it the model is the seed")
    model, tokenizer = load_stitched(folder, without=[name])
    spec.experts = [e for e in spec.experts if e.name != name]
    resolved = {"every": spec.every, "removed": name}
    manifest = _manifest("remove", spec, resolved, None, start, [_self_reference(folder)])
    return save_stitched(model, tokenizer, spec, Path(out_dir), manifest)


def _self_reference(folder: Path) -> Source:
    return reference(folder, "stitched")


def _num_layers(folder: Path) -> int:
    from transformers import AutoConfig

    try:
        return int(AutoConfig.from_pretrained(folder).num_hidden_layers)
    except (OSError, ValueError, AttributeError) as e:
        raise ArtifactError(f"{folder}: unreadable model config ({type(e).__name__})") from None


def _work_dir(out: Path) -> Path:
    """Scratch folder beside the output: the loop's checkpoint holds the whole model, not wanted in it."""
    return out.parent / f".{out.name}.stitch-work"
