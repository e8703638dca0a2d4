"""BTX merge: N dense models -> one N-expert MoE; FFNs become experts, the rest is averaged."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal, get_args

from barkit.errors import ConfigError
from barkit.families import Family, family_of
from barkit.merge.inputs import Input, check_alike, check_dense, check_no_duplicate_experts, load_inputs
from barkit.merge.io import InputFiles, torch_dtype
from barkit.merge.plan import (
    DEFAULT_MAX_SHARD_SIZE,
    SHARED_GROUPS,
    ExpertEntry,
    MergePlan,
    OutTensor,
    copied,
    natural_key,
    resolve_top_k,
    shared_names,
    shared_tensor,
    vocab_rows,
)
from barkit.merge.vocab import vocab_union

if TYPE_CHECKING:
    import torch

RouterInit = Literal["random", "zeros"]


def _router(name: str, experts: int, hidden: int, dtype: str, init: str, seed: int, std: float) -> OutTensor:
    """A fresh router: seeded normal rows (or zeros), generated when written, not when planned."""

    def generate() -> torch.Tensor:
        import torch

        if init == "zeros":
            return torch.zeros(experts, hidden, dtype=torch_dtype(dtype))
        gen = torch.Generator().manual_seed(seed)
        rows = torch.randn(experts, hidden, generator=gen, dtype=torch.float32) * std
        return rows.to(torch_dtype(dtype))

    return OutTensor(name, dtype, (experts, hidden), "router", init, generate=generate)


def plan_dense_btx(
    dense_dirs: Sequence[str | os.PathLike[str]],
    *,
    top_k: int | None = None,
    router_init: RouterInit = "random",
    seed: int = 0,
    max_shard_size: int = DEFAULT_MAX_SHARD_SIZE,
) -> MergePlan:
    """Plan a BTX merge: dense FFNs become experts, everything else is averaged, no anchor."""
    if router_init not in get_args(RouterInit):
        raise ConfigError(f"router_init {router_init!r}: not one of {', '.join(get_args(RouterInit))}")
    inputs = load_inputs(dense_dirs, need_manifest=False, what="dense model folder")
    family = family_of(str(inputs[0].config.get("model_type")))
    for inp in inputs:
        check_dense(inp, family)
    check_alike(inputs, family)
    layers = int(inputs[0].config["num_hidden_layers"])
    mlp = [n for layer in range(layers) for n in family.dense_mlp_tensor_names(layer)]
    with InputFiles() as files:
        check_no_duplicate_experts(files, inputs, mlp, "FFN")
    return _assemble(inputs, family, layers, router_init, seed, top_k, max_shard_size)


def _assemble(
    inputs: Sequence[Input],
    family: Family,
    layers: int,
    router_init: str,
    seed: int,
    top_k: int | None,
    max_shard_size: int,
) -> MergePlan:
    first = inputs[0]
    vocab = vocab_union(inputs, vocab_rows(inputs, family))
    tensors = [
        shared_tensor(n, g, "mean", inputs, None, None, vocab)
        for n, g in shared_names(inputs, family).items()
    ]
    hidden = int(first.config["hidden_size"])
    std = float(first.config.get("initializer_range", 0.02))
    dtype = first.tensors[family.embedding_tensor].dtype
    for layer in range(layers):
        router = family.router_tensor_name(layer)
        tensors.append(_router(router, len(inputs), hidden, dtype, router_init, seed + layer, std))
        for k, inp in enumerate(inputs):
            pairs = zip(
                family.expert_tensor_names(layer, k), family.dense_mlp_tensor_names(layer), strict=True
            )
            tensors += [copied(dst, inp.tensors[src], src, "expert", f"expert {k}") for dst, src in pairs]
    tensors.sort(key=lambda t: natural_key(t.name))
    return MergePlan(
        kind="btx",
        family=family,
        experts=[ExpertEntry(k, inp.name, inp.path, inp.manifest) for k, inp in enumerate(inputs)],
        tensors=tensors,
        config_source=first.path,
        vocab_size=vocab.size,
        added_tokens=vocab.added_tokens([inp.name for inp in inputs]),
        top_k=resolve_top_k(top_k, len(inputs)),
        policies={g: "mean" for g in SHARED_GROUPS} | {"expert": "FFN copied", "router": router_init},
        overrides={},
        max_shard_size=max_shard_size,
        inputs=[inp.path for inp in inputs],
        specials=set().union(*(inp.special for inp in inputs)),
    )


def merge_dense_btx(
    dense_dirs: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    top_k: int | None = None,
    router_init: RouterInit = "random",
    seed: int = 0,
    max_shard_size: int = DEFAULT_MAX_SHARD_SIZE,
    progress: bool = True,
) -> MergePlan:
    """BTX merge of N dense models into one N-expert MoE (Mixtral for Llama, FlexOlmo for OLMo-2).

    Expert k is dense model k's FFN; attention, norms, embeddings and LM head are averaged;
    the router is fresh (seeded normal rows, or zeros) and meant to be trained afterwards.
    """
    import time

    from barkit.merge.write import execute

    start = time.perf_counter()
    plan = plan_dense_btx(
        dense_dirs, top_k=top_k, router_init=router_init, seed=seed, max_shard_size=max_shard_size
    )
    execute(plan, out_dir, progress=progress, start=start)
    return plan
