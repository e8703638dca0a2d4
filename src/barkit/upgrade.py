"""Upgrade: replace one or more experts of a merged or routed model, re-merge, re-route.

Only the replaced experts are new work; the others are taken from the folders the model was
merged from (recorded in its manifests), and then only the router trains again.
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


def upgrade(
    model_dir: str | os.PathLike[str],
    replace: Mapping[str, str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    sample: float = 0.05,
    seed: int = 0,
    preset: str = "tiny",
    steps: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Re-merge with ``replace`` (expert name -> new branch folder) and retrain the router."""
    from barkit.merge import merge
    from barkit.route import route

    inputs, config = merge_inputs(Path(model_dir))
    names = [str(i["domain"]) for i in inputs]
    unknown = sorted(set(replace) - set(names))
    if unknown:
        raise ConfigError(
            f"--replace {unknown[0]}: the model has no such expert; experts: {', '.join(names)}"
        )
    dirs = [Path(replace[n]) if n in replace else Path(i["path"]) for n, i in zip(names, inputs, strict=True)]
    out = Path(out_dir)
    merged = out.parent / f".{out.name}.merged"
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
        manifest = route(merged, out, sample=sample, seed=seed, preset=preset, steps=steps, progress=progress)
    finally:
        shutil.rmtree(merged, ignore_errors=True)
    return manifest
