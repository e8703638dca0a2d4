"""Policies for the shared tensors that branches let diverge, as one table.

Each policy says whether it reads the base's tensors, whether it takes one weight per input,
and how it turns the inputs' tensors into weighted sources; the writer computes
``sum(weight * source) / sum(weight)``. Adding a policy is one :data:`POLICIES` entry plus its
name in :data:`SharedPolicy` (checked at import). The recipe, the CLI and the planner all ask
this table, so the rules about the base and the weights live here and nowhere else.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

from barkit.errors import ConfigError
from barkit.merge.io import TensorInfo

SharedPolicy = Literal["mean", "weighted", "anchor", "sum"]
Weighted = list[tuple[TensorInfo, float]]
# (each input's tensor, the validated weights or None, the base's tensor or None) -> sources
Combine = Callable[[Sequence[TensorInfo], Sequence[float] | None, TensorInfo | None], Weighted]


@dataclass(frozen=True)
class Policy:
    """One way to combine a shared tensor of several branches."""

    name: SharedPolicy
    needs_base: bool
    takes_weights: bool
    combine: Combine
    help: str


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


POLICIES: dict[str, Policy] = {
    p.name: p
    for p in (
        Policy("mean", False, False, _mean, "the branches' mean"),
        Policy("weighted", False, True, _weighted, "the branches' mean with one weight per branch"),
        Policy("anchor", True, False, _anchor, "the base's tensor"),
        Policy("sum", True, False, _sum, "task arithmetic: the base plus every branch's change"),
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
