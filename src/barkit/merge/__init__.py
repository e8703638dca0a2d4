"""Merge: compose branch experts into one native transformers MoE, streaming.

A BAR merge (:mod:`~barkit.merge.bar`) takes N branch folders (2-expert MoEs grown from one
base) and writes one MoE with 1+N experts: expert 0 is the anchor, expert k is branch k's
expert 1, and router rows are taken the same way. Shared tensors (embeddings, LM head,
attention, norms) that the branches let diverge are combined by a policy of
:mod:`~barkit.merge.policies`, per tensor through glob overrides. Special tokens that experts
added are unioned into one vocabulary (:mod:`~barkit.merge.vocab`); a new token's rows come
only from the experts that have it. A BTX merge (:mod:`~barkit.merge.btx`) makes dense
models' FFNs the experts of a fresh MoE.

Everything is planned before anything is written (:mod:`~barkit.merge.plan`): the plan lists,
for every output tensor, which row ranges of which input tensors produce it. The checks
(:mod:`~barkit.merge.inputs`) run before it is made, ``--dry-run`` prints it, and one writer
(:mod:`~barkit.merge.write`) executes BAR and BTX plans alike over the streaming I/O of
:mod:`~barkit.merge.io`.
"""

from __future__ import annotations

from barkit.merge.bar import merge, plan_merge
from barkit.merge.btx import RouterInit, merge_dense_btx, plan_dense_btx
from barkit.merge.io import InputFiles, ShardWriter, TensorInfo, iter_chunks, read_header, tensor_index
from barkit.merge.plan import DEFAULT_MAX_SHARD_SIZE, MergePlan, OutTensor, parse_size
from barkit.merge.policies import POLICIES, SharedPolicy, check_weights, needs_base
from barkit.merge.write import execute

__all__ = [
    "DEFAULT_MAX_SHARD_SIZE",
    "POLICIES",
    "InputFiles",
    "MergePlan",
    "OutTensor",
    "RouterInit",
    "SharedPolicy",
    "ShardWriter",
    "TensorInfo",
    "check_weights",
    "execute",
    "iter_chunks",
    "merge",
    "merge_dense_btx",
    "needs_base",
    "parse_size",
    "plan_dense_btx",
    "plan_merge",
    "read_header",
    "tensor_index",
]
