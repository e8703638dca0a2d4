"""Upgrade: replace one or more experts of a merged or routed model, re-merge, re-route.

Only the replaced experts are new work; the others are taken from the folders the model was
merged from (recorded in its manifests). A routed model's manifest also records how it was made
after the merge: the optional recovery (barkit's default recipe trains attention and router
there) and the router stage's config. Both are replayed as recorded, so the upgraded model is
built the way the original was; ``sample``, ``seed``, ``preset`` and ``steps`` override the
router's when given.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from barkit.artifacts import read_manifest
from barkit.errors import ArtifactError, ConfigError


def merge_inputs(model_dir: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The (path, domain) inputs a merged or routed model was merged from, and the merge config."""
    manifest = read_manifest(model_dir)
    if manifest.get("stage") == "route":
        return list(manifest["merge_inputs"]), dict(manifest.get("merge_config") or {})
    if manifest.get("stage") != "merge":
        raise ArtifactError(
            f"{model_dir}: not a merged or routed barkit model (stage {manifest.get('stage')!r})"
        )
    return list(manifest["inputs"]), dict(manifest.get("config") or {})


def parse_replacements(pairs: list[str]) -> dict[str, Path]:
    """``["code=DIR", ...]`` -> {"code": DIR}."""
    out: dict[str, Path] = {}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            raise ConfigError(f"--replace {pair!r}: expected NAME=EXPERT_DIR")
        out[name] = Path(path)
    return out


# Recorded stage-config fields that are not overrides (StageOverrides has every other field).
_NOT_OVERRIDES = ("kind", "seed", "preset", "add_special_tokens", "data", "grpo")


def _overrides(config: dict[str, Any]) -> dict[str, Any]:
    """A recorded stage config as overrides: resolving them again gives the same config."""
    return {k: v for k, v in config.items() if k not in _NOT_OVERRIDES}


def upgrade(
    model_dir: str | os.PathLike[str],
    replace: Mapping[str, str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    sample: float | None = None,
    seed: int | None = None,
    preset: str | None = None,
    steps: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Re-merge with ``replace`` (expert name -> new branch folder), replay the recorded recovery
    and retrain the router (its recorded config, or the preset's for a merged model)."""
    from barkit.merge import merge
    from barkit.recover import recover, recover_plan
    from barkit.route import route, route_plan
    from barkit.train.stage_data import ROUTER_SAMPLE

    source = read_manifest(Path(model_dir))
    inputs, config = merge_inputs(Path(model_dir))
    names = [str(i["domain"]) for i in inputs]
    unknown = sorted(set(replace) - set(names))
    if unknown:
        raise ConfigError(
            f"--replace {unknown[0]}: the model has no such expert; experts: {', '.join(names)}"
        )
    routed = source.get("stage") == "route"
    recorded: dict[str, Any] = dict(source.get("config") or {}) if routed else {}
    if "data" in recorded:
        raise ConfigError(
            f"{model_dir}: its router was trained on your SFT files; upgrade it by running its recipe "
            "again (barkit run), which rebuilds only the changed expert, the merge and the router"
        )
    preset = preset or str(recorded.get("preset") or "tiny")
    # the recorded router stage, unless another preset is asked for (then that preset's router)
    stage = dict(recorded.get("stage") or {}) if preset == recorded.get("preset") else {}
    seed = int(recorded.get("seed", 0)) if seed is None else seed
    sample = float(recorded.get("sample", ROUTER_SAMPLE)) if sample is None else sample
    domain_loss = float(recorded.get("domain_loss", 0.0))
    dirs = [Path(replace[n]) if n in replace else Path(i["path"]) for n, i in zip(names, inputs, strict=True)]
    out = Path(out_dir)
    merged = out.parent / f".{out.name}.merged"
    recovered = out.parent / f".{out.name}.recovered"
    merge(
        dirs,
        merged,
        shared=config.get("shared") or "mean",
        weights=config.get("weights"),
        base_dir=config.get("base"),
        overrides=config.get("overrides") or {},
        top_k=config.get("top_k"),
        progress=progress,
    )
    try:
        start = merged
        recovery = source.get("recover_config")
        if recovery:
            rc = dict(recovery["config"])
            plan = recover_plan(
                names,
                preset=str(rc["preset"]),
                steps=rc["steps"],
                seed=int(rc["seed"]),
                overrides=_overrides(rc),
            )
            share = float(recovery.get("sample") or ROUTER_SAMPLE)
            recover(merged, recovered, sample=share, plan=plan, progress=progress)
            start = recovered
        fields = _overrides(stage)
        recorded_steps = fields.pop("steps", None)
        count = recorded_steps if steps is None else steps
        router = route_plan(start, preset=preset, steps=count, seed=seed, overrides=fields)
        manifest = route(start, out, sample=sample, plan=router, domain_loss=domain_loss, progress=progress)
    finally:
        shutil.rmtree(merged, ignore_errors=True)
        shutil.rmtree(recovered, ignore_errors=True)
    return manifest
