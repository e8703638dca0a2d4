"""BAR merge: N branches of one base -> one MoE with the anchor plus each branch's expert 1."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from barkit.errors import ConfigError
from barkit.merge.inputs import (
    Input,
    check_alike,
    check_anchors,
    check_base,
    check_branch,
    check_no_duplicate_experts,
    check_same_base,
    expert_names,
    load_input,
    load_inputs,
)
from barkit.merge.io import InputFiles
from barkit.merge.plan import (
    DEFAULT_MAX_SHARD_SIZE,
    SHARED_GROUPS,
    ExpertEntry,
    MergePlan,
    OutTensor,
    Segment,
    Source,
    copied,
    natural_key,
    resolve_top_k,
    shared_names,
    shared_tensor,
    vocab_rows,
)
from barkit.merge.policies import (
    SharedPolicy,
    check_overrides_match,
    check_weights,
    policy_for,
    require_base,
)
from barkit.merge.vocab import vocab_union

if TYPE_CHECKING:
    from barkit.families import Family


def plan_merge(
    branch_dirs: Sequence[str | os.PathLike[str]],
    *,
    shared: SharedPolicy = "mean",
    weights: Sequence[float] | None = None,
    base_dir: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, SharedPolicy] | None = None,
    top_k: int | None = None,
    max_shard_size: int = DEFAULT_MAX_SHARD_SIZE,
) -> MergePlan:
    """Check the branches and decide every output tensor (BAR merge). Writes nothing.

    Raises ArtifactError / IncompatibleError / ConfigError naming the offending input.
    """
    chosen: dict[str, str] = dict(overrides or {})
    require_base(shared, chosen, base_dir is not None)
    inputs = load_inputs(branch_dirs, need_manifest=True, what="branch folder")
    family = check_branch(inputs[0])
    for inp in inputs[1:]:
        check_branch(inp)
        check_same_base(inputs[0], inp)
    check_alike(inputs, family)
    checked = check_weights(shared, chosen, weights, len(inputs))
    base = load_input(base_dir, need_manifest=False) if base_dir is not None else None
    if base is not None:
        check_base(base, str(inputs[0].manifest["base_fingerprint"]))
    layers = int(inputs[0].config["num_hidden_layers"])
    with InputFiles() as files:
        check_anchors(files, inputs, family, layers)
        check_no_duplicate_experts(files, inputs, expert_names(family, layers, 1), "expert 1")
    return _assemble(inputs, family, layers, shared, checked, base, chosen, top_k, max_shard_size)


def _assemble(
    inputs: Sequence[Input],
    family: Family,
    layers: int,
    shared: str,
    weights: list[float] | None,
    base: Input | None,
    overrides: dict[str, str],
    top_k: int | None,
    max_shard_size: int,
) -> MergePlan:
    first = inputs[0]
    groups = shared_names(inputs, family)
    check_overrides_match(overrides, list(groups))
    vocab = vocab_union(inputs, vocab_rows(inputs, family))
    tensors = [
        shared_tensor(n, g, policy_for(n, shared, overrides), inputs, weights, base, vocab)
        for n, g in groups.items()
    ]
    tensors += [_router_tensor(family.router_tensor_name(layer), inputs) for layer in range(layers)]
    tensors += _expert_tensors(inputs, family, layers)
    tensors.sort(key=lambda t: natural_key(t.name))
    experts = [ExpertEntry(0, "anchor", first.path, first.manifest)]
    experts += [ExpertEntry(k, inp.name, inp.path, inp.manifest) for k, inp in enumerate(inputs, start=1)]
    return MergePlan(
        kind="bar",
        family=family,
        experts=experts,
        tensors=tensors,
        config_source=first.path,
        vocab_size=vocab.size,
        added_tokens=vocab.added_tokens([inp.name for inp in inputs]),
        top_k=resolve_top_k(top_k, len(experts)),
        policies={g: shared for g in SHARED_GROUPS} | {"expert": "copied", "router": "rows copied"},
        overrides=overrides,
        max_shard_size=max_shard_size,
        inputs=[inp.path for inp in inputs],
        base=base.path if base is not None else None,
        shared_weights=weights,
        specials=set().union(*(inp.special for inp in inputs)),
    )


def _router_tensor(name: str, inputs: Sequence[Input]) -> OutTensor:
    """Row 0 (the anchor's) from the first branch, then each branch's row 1."""
    info = inputs[0].tensors[name]
    rows = [Segment(1, (Source(info, name, row=0),))]
    rows += [Segment(1, (Source(inp.tensors[name], name, row=1),)) for inp in inputs]
    return OutTensor(name, info.dtype, (len(rows), *info.shape[1:]), "router", "rows", rows)


def _expert_tensors(inputs: Sequence[Input], family: Family, layers: int) -> list[OutTensor]:
    """The anchor from the first branch, then each branch's expert 1 as expert k."""
    out: list[OutTensor] = []
    for layer in range(layers):
        anchor = family.expert_tensor_names(layer, 0)
        out += [copied(n, inputs[0].tensors[n], n, "expert", "anchor") for n in anchor]
        for k, inp in enumerate(inputs, start=1):
            for dst, src in zip(
                family.expert_tensor_names(layer, k), family.expert_tensor_names(layer, 1), strict=True
            ):
                out.append(copied(dst, inp.tensors[src], src, "expert", f"expert {k}"))
    return out


def merge(
    branch_dirs: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str] | None,
    *,
    shared: SharedPolicy = "mean",
    weights: Sequence[float] | None = None,
    base_dir: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, SharedPolicy] | None = None,
    top_k: int | None = None,
    max_shard_size: int = DEFAULT_MAX_SHARD_SIZE,
    dry_run: bool = False,
    progress: bool = True,
) -> MergePlan:
    """BAR merge of branch folders into ``out_dir``; with ``dry_run`` only plan and check."""
    from barkit.merge.write import execute

    plan = plan_merge(
        branch_dirs,
        shared=shared,
        weights=weights,
        base_dir=base_dir,
        overrides=overrides,
        top_k=top_k,
        max_shard_size=max_shard_size,
    )
    if not dry_run:
        if out_dir is None:
            raise ConfigError("merge needs --out DIR (or --dry-run)")
        execute(plan, out_dir, progress=progress)
    return plan
