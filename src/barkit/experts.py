"""Experts by name: switching them off at inference time, and pruning them out of a checkpoint.

A barkit MoE lists its experts in ``barkit.json`` (``experts: ["anchor", "math", ...]``, in
expert-index order); a MoE without that list gets ``anchor``, ``expert1``, ``expert2``...

Switching experts off changes no weight: each router is given a forward that masks the other
experts' logits to -inf before the softmax (so the kept experts' weights are renormalised among
themselves) and picks at most as many experts as are kept. Pruning writes a smaller checkpoint
that computes the same thing natively.
"""

from __future__ import annotations

import contextlib
import copy
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F

from barkit.artifacts import content_fingerprint, read_manifest, require_model_dir
from barkit.errors import ArtifactError, BarkitError
from barkit.families import Family, family_of, is_moe, num_experts

if TYPE_CHECKING:
    from transformers import PreTrainedModel

ANCHOR = "anchor"


def default_expert_names(count: int) -> list[str]:
    """``anchor``, ``expert1``, ``expert2``... for a MoE without a names list."""
    return [ANCHOR] + [f"expert{i}" for i in range(1, count)]


def expert_names(manifest: dict[str, Any], count: int) -> list[str]:
    """Expert names from a manifest, checked against the model's expert count."""
    names = manifest.get("experts")
    if names is None:
        return default_expert_names(count)
    if not isinstance(names, list) or len(names) != count or len(set(map(str, names))) != count:
        raise ArtifactError(
            f"barkit.json lists experts {names!r}, but the model has {count} distinct experts"
        )
    return [str(n) for n in names]


def model_expert_names(model_dir: str | os.PathLike[str]) -> list[str]:
    """Expert names of the MoE checkpoint in ``model_dir`` (config and ``barkit.json``)."""
    from transformers import AutoConfig

    folder = require_model_dir(model_dir)
    config = AutoConfig.from_pretrained(folder)
    count = num_experts(config)
    if count == 0:
        raise BarkitError(f"{folder}: a dense {config.model_type} model has no experts")
    try:
        manifest = read_manifest(folder)
    except ArtifactError:
        manifest = {}
    return expert_names(manifest, count)


def resolve_experts(requested: Sequence[str], names: Sequence[str]) -> list[int]:
    """Indices of ``requested`` names (sorted, unique); an unknown name lists the known ones."""
    indices = set()
    for name in requested:
        if name not in names:
            raise BarkitError(f"unknown expert {name!r}; this model's experts: {', '.join(names)}")
        indices.add(list(names).index(name))
    if not indices:
        raise BarkitError(f"no experts given; this model's experts: {', '.join(names)}")
    return sorted(indices)


def parse_names(text: str) -> list[str]:
    """``"anchor, math"`` -> ``["anchor", "math"]``."""
    return [part.strip() for part in text.split(",") if part.strip()]


def _routers(model: PreTrainedModel) -> list[torch.nn.Module]:
    return [layer.mlp.gate for layer in model.model.layers]


def _check_keep(model: PreTrainedModel, keep: Sequence[int]) -> list[int]:
    count = num_experts(model)
    if count == 0:
        raise BarkitError(f"a dense {model.config.model_type} model has no experts to switch off")
    kept = sorted(set(keep))
    if not kept or kept[0] < 0 or kept[-1] >= count:
        raise BarkitError(f"experts to keep {list(keep)} must be a non-empty subset of 0..{count - 1}")
    return kept


def _restricted_forward(router: torch.nn.Module, family: Family, config: Any, kept: list[int]) -> Any:
    """A router forward that routes only among ``kept``; otherwise the router's own arithmetic.

    Mirrors transformers' routers step by step (softmax in float32, top-k on the probabilities,
    the family's renormalisation and dtype) so that keeping every expert is bit-identical.
    """
    weight = cast(torch.Tensor, router.weight)
    dropped = torch.ones(weight.shape[0], dtype=torch.bool, device=weight.device)
    dropped[kept] = False
    top_k = min(int(cast(int, router.top_k)), len(kept))
    renorm = family.renormalises_topk(config)

    def forward(hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        hidden_states = hidden_states.reshape(-1, weight.shape[1])
        logits = F.linear(hidden_states, weight).masked_fill(dropped, float("-inf"))
        probs = torch.softmax(logits.float(), dim=-1)
        # -1 below any probability: a kept expert whose probability underflows to 0 still wins
        # over a dropped one, so a dropped expert is never computed.
        _, indices = torch.topk(probs.masked_fill(dropped, -1.0), top_k, dim=-1)
        scores = probs.gather(-1, indices)
        if renorm:
            scores = scores / scores.sum(dim=-1, keepdim=True)
        if family.scores_in_logit_dtype:
            scores = scores.to(logits.dtype)
        return logits, scores, indices

    return forward


@contextlib.contextmanager
def restrict_experts(model: PreTrainedModel, keep: Sequence[int]) -> Iterator[PreTrainedModel]:
    """Within the block, every MoE layer of ``model`` routes only among the experts in ``keep``.

    No weight changes; the routers' own forwards are restored on exit, exception or not.
    """
    kept = _check_keep(model, keep)
    family = family_of(model)
    routers = _routers(model)
    for router in routers:
        # An instance attribute shadows the class's forward; deleting it restores the original.
        router.forward = _restricted_forward(router, family, model.config, kept)
    try:
        yield model
    finally:
        for router in routers:
            if "forward" in vars(router):
                del router.forward


def prune_model(model: PreTrainedModel, keep: Sequence[int]) -> PreTrainedModel:
    """A new, smaller MoE with only the experts in ``keep`` (their FFN slices and router rows)."""
    from transformers import AutoModelForCausalLM

    kept = _check_keep(model, keep)
    if kept[0] != 0:
        raise BarkitError("the anchor (expert 0) cannot be dropped")
    config = copy.deepcopy(model.config)
    config.num_experts = len(kept)
    config.num_experts_per_tok = min(int(config.num_experts_per_tok), len(kept))
    with torch.random.fork_rng(devices=[]):  # the fresh init is overwritten; keep the caller's RNG
        pruned = AutoModelForCausalLM.from_config(config, dtype=model.dtype)
    # Same experts kernel as the source, so that the two compute with the same arithmetic.
    pruned.set_experts_implementation(model.config._experts_implementation)
    index = torch.tensor(kept)
    state = {}
    for name, tensor in model.state_dict().items():
        expert_dim = name.endswith(("mlp.experts.gate_up_proj", "mlp.experts.down_proj", "mlp.gate.weight"))
        state[name] = tensor.index_select(0, index).clone() if expert_dim else tensor
    pruned.load_state_dict(state, strict=True)
    pruned.generation_config = copy.deepcopy(model.generation_config)
    pruned.train(model.training)
    return pruned


def prune(
    model_dir: str | os.PathLike[str], drop: Sequence[str], out_dir: str | os.PathLike[str]
) -> dict[str, Any]:
    """Write the MoE in ``model_dir`` without the experts named in ``drop``; returns the manifest."""
    from barkit.modeling import load_model, save_model

    start = time.perf_counter()
    folder = require_model_dir(model_dir)
    names = model_expert_names(folder)
    dropped = resolve_experts(drop, names)
    if 0 in dropped:
        raise BarkitError(f"the anchor ({names[0]!r}) cannot be dropped")
    keep = [i for i in range(len(names)) if i not in dropped]
    model, tokenizer = load_model(folder)
    if not is_moe(model):
        raise BarkitError(f"{folder}: a dense model has no experts to drop")
    pruned = prune_model(model, keep)
    return save_model(pruned, tokenizer, out_dir, _prune_manifest(folder, names, keep, start))


def _prune_manifest(folder: Path, names: list[str], keep: list[int], start: float) -> dict[str, Any]:
    try:
        parent = read_manifest(folder)
    except ArtifactError:
        parent = {}
    kept_names = [names[i] for i in keep]
    fingerprint = parent.get("fingerprint") or content_fingerprint(folder)
    # Provenance of the surviving experts, where the parent recorded it (merge inputs by domain).
    expert_inputs = [
        entry
        for entry in parent.get("inputs", [])
        if isinstance(entry, dict) and entry.get("domain") in kept_names
    ]
    return {
        "stage": "prune",
        "experts": kept_names,
        "dropped": [n for n in names if n not in kept_names],
        "config": {"drop": [n for n in names if n not in kept_names]},
        "inputs": [{"path": str(folder.resolve()), "fingerprint": fingerprint, "stage": parent.get("stage")}],
        "expert_inputs": expert_inputs,
        "base_fingerprint": parent.get("base_fingerprint"),
        "tokens": 0,
        "wall_time_s": round(time.perf_counter() - start, 3),
    }
