"""Input kinds: what a stage can start from, each with its own check and default trainable set.

* ``branch``: a 2-expert barkit branch of one domain (or a previous stage's output); the stage
  kind's default trainable set applies (BAR's progressive unfreezing, anchor kept bit-exact);
* ``dense``: the dense base or a dense stage output; everything trains (no anchor to protect);
* ``merged``: a merged (or routed) MoE with its anchor and experts; the kind's default applies;
* ``stitched``: a Branch-Train-Stitch model, in memory; only its stitches train by default.

Checks read config and manifest alone, before any weights are loaded, and return the parent
manifest with ``base_fingerprint``, ``family`` and ``model_type`` filled in.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from barkit.artifacts import read_manifest, require_model_dir
from barkit.errors import ArtifactError, BarkitError, IncompatibleError

Check = Callable[[Path, Sequence[str]], dict[str, Any]]


@dataclass(frozen=True)
class InputKind:
    """One kind of stage input."""

    name: str
    #: folder, domains -> parent manifest; raises on anything that is not this kind
    check: Check
    #: trainable set replacing the stage kind's default; None keeps the kind's
    trainable: tuple[str, ...] | None
    #: manifest fields that say what the stage's output is, from the domains and the parent manifest
    describe: Callable[[Sequence[str], dict[str, Any]], dict[str, Any]]


def _config(path: Path) -> tuple[dict[str, Any], str]:
    config: dict[str, Any] = json.loads((path / "config.json").read_text())
    return config, str(config.get("model_type"))


def _family(path: Path, model_type: str, what: str) -> str:
    from barkit.families import family_of

    try:
        return family_of(model_type).name
    except BarkitError:
        raise ArtifactError(f"{path}: not a {what} (model type {model_type!r})") from None


def check_branch(folder: Path, domains: Sequence[str]) -> dict[str, Any]:
    """Refuse anything but a 2-expert barkit branch (or stage output) of the one domain."""
    from barkit.families import is_moe, num_experts
    from barkit.train.kinds import kind_names

    path = require_model_dir(folder)
    manifest = read_manifest(path)
    _, model_type = _config(path)
    family = _family(path, model_type, "barkit branch")
    if not is_moe(model_type) or manifest.get("stage") not in ("branch", *kind_names(runs_on="branch")):
        raise ArtifactError(f"{path}: not a barkit branch (stage {manifest.get('stage')!r}, {model_type})")
    from transformers import AutoConfig

    experts = num_experts(AutoConfig.from_pretrained(path))
    if experts != 2:
        raise ArtifactError(f"{path}: not a barkit branch ({experts} experts, a branch has 2)")
    if not manifest.get("base_fingerprint"):
        raise ArtifactError(f"{path}: not a barkit branch (barkit.json has no base_fingerprint)")
    grown_for = manifest.get("domain")
    if grown_for and grown_for != domains[0]:
        raise IncompatibleError(f"{path}: a {grown_for} expert cannot run a {domains[0]} stage")
    return {"family": family, "model_type": model_type, **manifest}


def check_dense(folder: Path, domains: Sequence[str]) -> dict[str, Any]:
    """Refuse anything but a dense barkit model (the base or a dense stage output); a base is
    its own base."""
    from barkit.families import is_moe
    from barkit.train.kinds import kind_names

    del domains
    path = require_model_dir(folder)
    manifest = read_manifest(path)
    _, model_type = _config(path)
    family = _family(path, model_type, "dense barkit model")
    if is_moe(model_type) or manifest.get("stage") not in ("base", *kind_names(runs_on="dense")):
        raise ArtifactError(
            f"{path}: not a dense barkit model (stage {manifest.get('stage')!r}, {model_type})"
        )
    base = manifest.get("base_fingerprint") or manifest.get("fingerprint")
    if not base:
        raise ArtifactError(f"{path}: barkit.json has no fingerprint")
    return {**manifest, "base_fingerprint": base, "family": family, "model_type": model_type}


def check_merged(folder: Path, domains: Sequence[str]) -> dict[str, Any]:
    """Refuse anything but a barkit MoE that names its experts (a merge, BTX merge or routed model)."""
    from barkit.families import is_moe

    del domains
    path = require_model_dir(folder)
    manifest = read_manifest(path)
    _, model_type = _config(path)
    family = _family(path, model_type, "merged barkit model")
    experts = manifest.get("experts")
    if not is_moe(model_type) or not isinstance(experts, list) or len(experts) < 2:
        raise ArtifactError(f"{path}: not a merged barkit model (barkit.json lists no experts)")
    return {"family": family, "model_type": model_type, **manifest}


def check_stitched(folder: Path, domains: Sequence[str]) -> dict[str, Any]:
    from barkit.stitch.store import is_stitched

    del domains
    path = require_model_dir(folder)
    if not is_stitched(path):
        raise ArtifactError(f"{path}: not a stitched barkit model (no stitch.json)")
    return read_manifest(path)


def _one_expert(domains: Sequence[str], parent: dict[str, Any]) -> dict[str, Any]:
    return {"domain": domains[0], "experts": ["anchor", domains[0]]}


def _dense(domains: Sequence[str], parent: dict[str, Any]) -> dict[str, Any]:
    return {"domain": "+".join(domains), "dense": True, "domains": list(domains)}


def _same_experts(domains: Sequence[str], parent: dict[str, Any]) -> dict[str, Any]:
    return {"experts": parent.get("experts"), "domains": list(domains)}


INPUTS: dict[str, InputKind] = {
    k.name: k
    for k in (
        InputKind("branch", check_branch, None, _one_expert),
        InputKind("dense", check_dense, ("*",), _dense),
        InputKind("merged", check_merged, None, _same_experts),
        InputKind("stitched", check_stitched, ("stitches.*",), _same_experts),
    )
}


def get_input(name: str) -> InputKind:
    if name not in INPUTS:
        raise BarkitError(f"unknown input kind {name!r}; known: {', '.join(INPUTS)}")
    return INPUTS[name]
