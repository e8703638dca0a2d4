"""Policies for the shared tensors that branches let diverge, as one table.

Each policy says whether it reads the base's tensors, whether it takes one weight per input,
and how it turns the inputs' tensors into weighted sources; the writer computes
``sum(weight * source) / sum(weight)``. Adding a policy is one :data:`POLICIES` entry plus its
name in :data:`SharedPolicy` (checked at import). The recipe, the CLI and the planner all ask
this table, so the rules about the base and the weights live here and nowhere else.

Two policies are not weighted means: ``ties`` and ``dare`` combine the branches' *changes* from
the base element by element (a :data:`Reduce`), and the writer hands them every source's chunk.
Both keep :data:`DENSITY` of each branch's change:

* ``ties`` (TIES-merging, Yadav et al. 2023): trim each branch's change to its largest-magnitude
  entries (per row, per chunk for 1-D tensors), elect each entry's sign by the sum of the trimmed
  changes, and average only the changes that agree with it;
* ``dare`` (DARE, Yu et al. 2024): drop each entry of each change at random, rescale the kept ones
  by ``1 / DENSITY`` and average; the draw is seeded by the tensor's name and rows, so a merge is
  reproducible.

Rows only some branches have (a token an expert added) have no base row: they take the mean.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, get_args

from barkit.errors import ConfigError
from barkit.merge.io import TensorInfo

if TYPE_CHECKING:
    import torch

SharedPolicy = Literal["mean", "weighted", "anchor", "sum", "ties", "dare"]
Weighted = list[tuple[TensorInfo, float]]
# (each input's tensor, the validated weights or None, the base's tensor or None) -> sources
Combine = Callable[[Sequence[TensorInfo], Sequence[float] | None, TensorInfo | None], Weighted]
# (branches' chunks stacked on dim 0, the base's chunk, a seed) -> the merged chunk
Reduce = Callable[["torch.Tensor", "torch.Tensor", int], "torch.Tensor"]
#: share of each branch's change that ties and dare keep
DENSITY = 0.5


@dataclass(frozen=True)
class Policy:
    """One way to combine a shared tensor of several branches."""

    name: SharedPolicy
    needs_base: bool
    takes_weights: bool
    combine: Combine
    help: str
    #: an elementwise rule over all sources (the branches then the base, last); None: weighted mean
    reduce: Reduce | None = None


def _mean(own: Sequence[TensorInfo], weights: Sequence[float] | None, base: TensorInfo | None) -> Weighted:
    return [(t, 1.0) for t in own]


def _weighted(
    own: Sequence[TensorInfo], weights: Sequence[float] | None, base: TensorInfo | None
) -> Weighted:
    assert weights is not None  # check_weights guarantees weights for a policy that takes them
    return list(zip(own, weights, strict=True))


def _anchor(own: Sequence[TensorInfo], weights: Sequence[float] | None, base: TensorInfo | None) -> Weighted:
    assert base is not None  # require_base guarantees the base for a policy that needs it
    return [(base, 1.0)]


def _sum(own: Sequence[TensorInfo], weights: Sequence[float] | None, base: TensorInfo | None) -> Weighted:
    # base + sum_i (branch_i - base): the branches at weight 1, the base at 1 - n. The weights
    # add up to 1, so the writer's division by their sum leaves the sum unchanged.
    assert base is not None
    return [*((t, 1.0) for t in own), (base, 1.0 - len(own))]


def _branches_then_base(
    own: Sequence[TensorInfo], weights: Sequence[float] | None, base: TensorInfo | None
) -> Weighted:
    assert base is not None
    return [*((t, 1.0) for t in own), (base, 1.0)]


def _flat_rows(x: torch.Tensor) -> torch.Tensor:
    """(branches, rows, ...) -> (branches, rows, row elements); a 1-D tensor's chunk is one row."""
    return x.reshape(x.shape[0], 1, -1) if x.dim() == 2 else x.reshape(x.shape[0], x.shape[1], -1)


def _ties(own: torch.Tensor, base: torch.Tensor, seed: int) -> torch.Tensor:
    import torch

    delta = _flat_rows(own - base.unsqueeze(0))
    keep = max(1, round(DENSITY * delta.shape[-1]))
    magnitude = delta.abs()
    # the keep-th largest magnitude of each branch's row is its threshold
    threshold = magnitude.kthvalue(delta.shape[-1] - keep + 1, dim=-1, keepdim=True).values
    trimmed = torch.where(magnitude >= threshold, delta, torch.zeros_like(delta))
    sign = torch.sign(trimmed.sum(0, keepdim=True))
    agree = (torch.sign(trimmed) == sign) & (trimmed != 0)
    count = agree.sum(0).clamp(min=1)
    merged = torch.where(agree, trimmed, torch.zeros_like(trimmed)).sum(0) / count
    return base + merged.reshape(base.shape)


def _dare(own: torch.Tensor, base: torch.Tensor, seed: int) -> torch.Tensor:
    import torch

    delta = own - base.unsqueeze(0)
    gen = torch.Generator().manual_seed(seed)
    kept = torch.rand(delta.shape, generator=gen, dtype=torch.float32) < DENSITY
    return base + (delta * kept).sum(0) / (DENSITY * delta.shape[0])


POLICIES: dict[str, Policy] = {
    p.name: p
    for p in (
        Policy("mean", False, False, _mean, "the branches' mean"),
        Policy("weighted", False, True, _weighted, "the branches' mean with one weight per branch"),
        Policy("anchor", True, False, _anchor, "the base's tensor"),
        Policy("sum", True, False, _sum, "task arithmetic: the base plus every branch's change"),
        Policy(
            "ties",
            True,
            False,
            _branches_then_base,
            f"TIES: the base plus the sign-agreeing mean of each branch's top {DENSITY:.0%} of changes",
            _ties,
        ),
        Policy(
            "dare",
            True,
            False,
            _branches_then_base,
            f"DARE: the base plus the mean of changes with {1 - DENSITY:.0%} dropped at random, rescaled",
            _dare,
        ),
    )
}
if set(POLICIES) != set(get_args(SharedPolicy)):  # the Literal types recipes and signatures
    raise ImportError(f"SharedPolicy {get_args(SharedPolicy)} and POLICIES {tuple(POLICIES)} differ")


def get_policy(name: str, where: str = "--shared") -> Policy:
    """The table entry of a policy name; ConfigError naming ``where`` for an unknown one."""
    if name not in POLICIES:
        raise ConfigError(f"{where} {name!r}: not one of {', '.join(POLICIES)}")
    return POLICIES[name]


def in_use(shared: str, overrides: Mapping[str, str] | None = None) -> list[Policy]:
    """The policies a merge uses: the default one, then each override's."""
    used = [get_policy(shared)]
    used += [get_policy(p, f"override {pat!r}: policy") for pat, p in (overrides or {}).items()]
    return used


def needs_base(shared: str, overrides: Mapping[str, str] | None = None) -> bool:
    """Whether a merge with this policy (and these per-tensor overrides) reads the base's tensors."""
    return any(p.needs_base for p in in_use(shared, overrides))


def require_base(shared: str, overrides: Mapping[str, str] | None, has_base: bool) -> None:
    """Refuse a merge whose policies read the base when no base was given."""
    missing = [p.name for p in in_use(shared, overrides) if p.needs_base and not has_base]
    if missing:
        raise ConfigError(f"shared policy {missing[0]!r} needs --base DIR (the branches' base)")


def check_weights(
    shared: str,
    overrides: Mapping[str, str] | None,
    weights: Iterable[float] | None,
    count: int | None = None,
    field: str = "--weights",
) -> list[float] | None:
    """The one weights rule: weights are given exactly when a policy in use takes them.

    There is one weight per input (``count``, when known), none negative, with a positive sum.
    ``field`` names the weights in messages (the CLI option or the recipe field).
    """
    takers = [p.name for p in in_use(shared, overrides) if p.takes_weights]
    if weights is None:
        if takers:
            raise ConfigError(f"{field}: policy {takers[0]!r} needs one weight per input (e.g. 0.5,0.3,0.2)")
        return None
    values = [float(w) for w in weights]
    if not takers:
        raise ConfigError(
            f"{field} {values}: no policy in use takes weights; use 'weighted' (shared or an override)"
        )
    if count is not None and len(values) != count:
        raise ConfigError(f"{field}: {len(values)} weights for {count} inputs")
    if any(w < 0 or not math.isfinite(w) for w in values) or sum(values) <= 0:
        raise ConfigError(f"{field} {values}: must be non-negative with a positive sum")
    return values


def policy_for(name: str, default: str, overrides: Mapping[str, str]) -> str:
    """The policy of one tensor: the first override whose glob matches it, else the default."""
    for pattern, policy in overrides.items():
        if fnmatch.fnmatchcase(name, pattern):
            return policy
    return default


def check_overrides_match(overrides: Mapping[str, str], shared_names: Sequence[str]) -> None:
    """Every override must match a shared tensor: a typo must not silently merge by the default."""
    for pattern in overrides:
        if not any(fnmatch.fnmatchcase(n, pattern) for n in shared_names):
            raise ConfigError(
                f"override {pattern!r} matches no shared tensor (experts and routers are not averaged)"
            )
