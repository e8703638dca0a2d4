"""Recover: a short low-rate training of a merged model's shared tensors and router.

An option between merge and route (off by default: BAR goes straight to the router stage).
Averaging the experts' embeddings, LM head and norms can leave tensors that fit none of the
experts' FFNs (measured: a safety expert at 48 alone scored 0 once merged with three others).
BTX trains the merged model briefly after merging; here the ``recover`` stage kind
(:mod:`barkit.train.kinds`) trains the shared tensors and the router at a low rate on the router
sample (all experts' SFT data plus general), with every expert frozen and the anchor's router
row kept bit-identical. Recipe: a top-level ``recover:`` block (:class:`barkit.recipe.RecoverSpec`);
command: ``barkit recover MERGED --out DIR``.

The output is a merged model again (same experts), so the router stage and ``barkit upgrade``
read it like a merge: its manifest carries the merge's inputs and config forward.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from barkit.artifacts import read_manifest
from barkit.route import expert_domains
from barkit.train.stage_data import ROUTER_SAMPLE, routed_categories

if TYPE_CHECKING:
    from barkit.train.config import StageOverrides
    from barkit.train.stages import StagePlan


def recover_plan(
    domains: list[str],
    *,
    preset: str = "tiny",
    steps: int | None = None,
    seed: int = 0,
    overrides: StageOverrides | dict[str, Any] | None = None,
) -> StagePlan:
    """The recover stage of a merge of experts over ``domains`` (ConfigError on a bad override)."""
    from barkit.train.stages import resolve_stage

    return resolve_stage("recover", routed_categories(domains), preset, steps, seed, overrides, on="merged")


def recover(
    merged_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    sample: float = ROUTER_SAMPLE,
    plan: StagePlan | None = None,
    preset: str = "tiny",
    steps: int | None = None,
    seed: int = 0,
    resume: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Recover the merged model in ``merged_dir`` into ``out_dir``; returns the manifest.

    ``plan`` (from :func:`recover_plan`) replaces ``preset``, ``steps`` and ``seed``.
    """
    from barkit.modeling import save_model
    from barkit.train.stage_data import router_sample
    from barkit.train.stages import run_stage_on, stage_manifest

    source, out = Path(merged_dir), Path(out_dir)
    merged = read_manifest(source)
    plan = plan or recover_plan(expert_domains(merged), preset=preset, steps=steps, seed=seed)
    work = out.parent / f".{out.name}.work"
    trained = run_stage_on(source, plan, work, data=router_sample(sample), resume=resume, progress=progress)
    manifest = stage_manifest(trained, source)
    manifest["merge_inputs"] = merged.get("merge_inputs", merged.get("inputs", []))
    manifest["merge_config"] = merged.get("merge_config", merged.get("config", {}))
    written = save_model(trained.result.model, trained.tokenizer, out, manifest)  # type: ignore[arg-type]
    trained.cleanup()
    return written
