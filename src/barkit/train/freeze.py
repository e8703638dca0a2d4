"""What trains: the one place that sets ``requires_grad``, and the anchor guarantee.

``select_trainable`` turns group names (``expert``, ``router``, ...) and fnmatch globs into a
:class:`TrainPlan`, logging how many tensors and parameters each pattern selected and refusing a
pattern that selects nothing (a typo would otherwise silently freeze what the user meant to train).
``embeddings:new`` and ``lm_head:new`` train only the rows of the tokens the stage adds: the
tensor trains, and :class:`RowGuard` keeps every other row bit-identical. With tied embeddings
the LM head has no parameter of its own: ``lm_head`` then names the embedding tensor, which
trains once whichever of the two groups selected it.

The anchor (expert 0 and router row 0) is a *slice* of the fused expert tensors and routers,
which train as whole parameters. :class:`OptimizerTensors` hands the optimizer a view of the
other experts' rows instead, so AdamW keeps no moments for the anchor and never updates it
(its decoupled weight decay would move even a zero-gradient slice). ``AnchorGuard`` is the
guarantee on top: it zeroes the anchor's gradient and copies its snapshot back after every
optimizer step. ``RowGuard`` does the same for the pre-existing rows of a tensor selected by
``embeddings:new`` / ``lm_head:new`` (those tensors stay whole in the optimizer).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from barkit.errors import BarkitError

Log = Callable[[str], None]


def _quiet(_: str) -> None:
    return None


# Groups that train at the full learning rate in an MoE; every other (shared) tensor is scaled.
UNSCALED_GROUPS = ("expert", "router")
#: ``GROUP:new`` trains only the rows of the tokens the stage adds, for these groups
NEW_ROWS_SUFFIX = ":new"
ROW_GROUPS = ("embeddings", "lm_head")


@dataclass
class TrainPlan:
    """The outcome of :func:`select_trainable`: what trains, and each tensor's group."""

    trainable: list[str]
    frozen: list[str]
    #: pattern -> (tensor count, parameter count) it selected
    per_pattern: dict[str, tuple[int, int]] = field(default_factory=dict)
    #: tensor name -> its family group (``expert``, ``router``, ...); ``other`` for none
    groups: dict[str, str] = field(default_factory=dict)
    #: whether the model is an MoE (only an MoE has shared tensors to scale)
    moe: bool = False
    #: tensor name -> the only rows of it that train (``embeddings:new``, ``lm_head:new``)
    only_rows: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def parameter_count(self, model: nn.Module) -> tuple[int, int]:
        """(trainable, total) parameter counts; a row-limited tensor counts its trained rows."""
        params = dict(model.named_parameters())
        trained = sum(_trained_numel(params[n], self.only_rows.get(n)) for n in self.trainable)
        return trained, sum(p.numel() for p in params.values())

    def lr_scale(self, name: str, shared_lr_scale: float) -> float:
        """``shared_lr_scale`` for an MoE's shared tensors; 1 for its experts and routers and
        for every tensor of a dense model."""
        if not self.moe or self.groups.get(name) in UNSCALED_GROUPS:
            return 1.0
        return shared_lr_scale


def _trained_numel(param: nn.Parameter, rows: tuple[int, ...] | None) -> int:
    if rows is None:
        return param.numel()
    return len(rows) * (param.numel() // max(param.shape[0], 1))


def _group_patterns(model: nn.Module) -> tuple[dict[str, tuple[str, ...]], bool]:
    from barkit.families import family_of, is_moe

    family, moe = family_of(model), is_moe(model)
    groups = dict(family.group_patterns if moe else family.dense_group_patterns)
    if tied_embeddings(model):
        # A tied LM head is no parameter of its own (named_parameters lists the shared tensor
        # once, as the embedding): the group names that tensor, which then trains once.
        groups["lm_head"] = (_vocab_tensor(model, "embeddings"),)
    return groups, moe


def tied_embeddings(model: nn.Module) -> bool:
    """Whether the LM head's weight is the input embedding's tensor (SmolLM2, Llama 3.2, ...)."""
    get_input = getattr(model, "get_input_embeddings", None)
    get_output = getattr(model, "get_output_embeddings", None)
    if get_input is None or get_output is None:
        return False
    head = get_output()
    return head is not None and getattr(head, "weight", None) is get_input().weight


def _expand(pattern: str, groups: dict[str, tuple[str, ...]]) -> tuple[str, ...]:
    """A group name becomes its globs; anything else is itself a glob."""
    return groups.get(pattern, (pattern,))


def _group_of(name: str, groups: dict[str, tuple[str, ...]]) -> str:
    for group, globs in groups.items():
        if any(fnmatch.fnmatchcase(name, g) for g in globs):
            return group
    return "other"


def _defaults_present(patterns: list[str], groups: dict[str, tuple[str, ...]], log: Log) -> list[str]:
    """Drop default groups this architecture does not have (a dense model has no router)."""
    kept = [p for p in patterns if p not in groups or groups[p]]
    for p in patterns:
        if p not in kept:
            log(f"default group {p!r} does not exist in this model; skipped")
    return kept


def _vocab_tensor(model: nn.Module, group: str) -> str:
    """The parameter name of the input embedding or the LM head, found by identity, so that a
    tied LM head resolves to the embedding tensor it is."""
    getter = "get_input_embeddings" if group == "embeddings" else "get_output_embeddings"
    weight = getattr(getattr(model, getter)(), "weight", None)
    for name, param in model.named_parameters():
        if param is weight:
            return name
    raise BarkitError(f"trainable pattern '{group}{NEW_ROWS_SUFFIX}': the model has no {group} tensor")


def _new_rows_hit(model: nn.Module, pattern: str, new_rows: Sequence[int]) -> list[str]:
    """The one tensor ``pattern`` (``embeddings:new`` / ``lm_head:new``) trains rows of."""
    group = pattern.removesuffix(NEW_ROWS_SUFFIX)
    if group not in ROW_GROUPS:
        raise BarkitError(f"trainable pattern {pattern!r}: only {', '.join(ROW_GROUPS)} have token rows")
    if not new_rows:
        raise BarkitError(f"trainable pattern {pattern!r}: the stage adds no token, so no row would train")
    return [_vocab_tensor(model, group)]


def _glob_hit(pattern: str, groups: dict[str, tuple[str, ...]], names: list[str]) -> list[str]:
    globs = _expand(pattern, groups)
    hit = [n for n in names if any(fnmatch.fnmatchcase(n, g) for g in globs)]
    if not hit:
        known = ", ".join(sorted(groups))
        raise BarkitError(f"trainable pattern {pattern!r} matches no parameter (groups: {known})")
    return hit


def select_trainable(
    model: nn.Module,
    patterns: list[str],
    *,
    strict: bool = True,
    log: Log = _quiet,
    new_rows: Sequence[int] = (),
) -> TrainPlan:
    """Make exactly the parameters matched by ``patterns`` trainable; freeze the rest.

    The one place that decides what trains. ``patterns`` holds group names of the model's
    family (``expert``, ``router``, ``embeddings``, ``lm_head``, ``attention``, ``norms``)
    and/or fnmatch globs over parameter names. Raises BarkitError naming the first pattern that
    matches no parameter. ``strict=False`` is for a stage kind's *default* set: it first drops
    groups the architecture lacks; explicit patterns stay strict. The plan records each
    tensor's group, which the optimizer's learning-rate scaling reads.

    ``embeddings:new`` and ``lm_head:new`` select the embedding / LM head tensor but train only
    the rows ``new_rows`` (the ids of the tokens this stage adds); a tensor that another pattern
    selects whole trains whole. On a tied model both name the one shared tensor.
    """
    groups, moe = _group_patterns(model)
    if tied_embeddings(model):
        log(f"lm_head is tied to the embeddings: both groups name {groups['lm_head'][0]}")
    if not strict:
        patterns = _defaults_present(patterns, groups, log)
    if not patterns:
        raise BarkitError("trainable set is empty: name at least one group or pattern")
    params = dict(model.named_parameters())
    names = list(params)
    chosen: set[str] = set()
    whole: set[str] = set()
    plan = TrainPlan(trainable=[], frozen=[], groups={n: _group_of(n, groups) for n in names}, moe=moe)
    rows = tuple(sorted(set(new_rows)))
    for pattern in patterns:
        by_rows = pattern.endswith(NEW_ROWS_SUFFIX)
        hit = _new_rows_hit(model, pattern, rows) if by_rows else _glob_hit(pattern, groups, names)
        if by_rows:
            plan.only_rows.update(dict.fromkeys(hit, rows))
        (chosen if by_rows else whole).update(hit)
        size = sum(_trained_numel(params[n], rows if by_rows else None) for n in hit)
        plan.per_pattern[pattern] = (len(hit), size)
        log(f"trainable {pattern}: {len(hit)} tensors, {size:,} parameters")
    chosen |= whole
    for name in whole:  # selected whole by another pattern: the row limit does not apply
        plan.only_rows.pop(name, None)
    for name, param in model.named_parameters():
        param.requires_grad_(name in chosen)
        (plan.trainable if name in chosen else plan.frozen).append(name)
    trained, total = plan.parameter_count(model)
    log(f"trainable total: {len(plan.trainable)} tensors, {trained:,} of {total:,} parameters")
    return plan


class SliceGuard:
    """Views of trainable parameters kept bit-identical: their gradient is zeroed before
    clipping and the snapshot copied back after every optimizer step."""

    def __init__(self, model: nn.Module, slices: Sequence[tuple[str, torch.Tensor]]) -> None:
        self._slices: list[tuple[str, torch.Tensor, torch.Tensor, nn.Parameter]] = []
        owners = {p.untyped_storage().data_ptr(): p for p in model.parameters()}
        for name, view in slices:
            owner = owners.get(view.untyped_storage().data_ptr())
            if owner is None:
                raise BarkitError(f"guarded slice {name!r} is not a view of a model parameter")
            self._slices.append((name, view, view.detach().clone(), owner))

    def __len__(self) -> int:
        return len(self._slices)

    @staticmethod
    def _grad_view(view: torch.Tensor, owner: nn.Parameter) -> torch.Tensor | None:
        """The part of ``owner.grad`` that lies under ``view`` (same offset and strides)."""
        grad = owner.grad
        if grad is None:
            return None
        if grad.stride() != owner.stride():
            raise BarkitError("gradient layout differs from its parameter; cannot mask a guarded slice")
        offset = grad.storage_offset() + view.storage_offset() - owner.storage_offset()
        return grad.as_strided(view.shape, view.stride(), offset)

    @torch.no_grad()
    def zero_grads(self) -> None:
        """Zero the guarded gradient so it neither moves nor counts in gradient clipping."""
        for _, view, _, owner in self._slices:
            if owner.requires_grad:
                g = self._grad_view(view, owner)
                if g is not None:
                    g.zero_()

    @torch.no_grad()
    def restore(self) -> None:
        """Copy the snapshot back (undoing weight decay and momentum on the guarded slices)."""
        for _, view, saved, owner in self._slices:
            if owner.requires_grad:
                view.copy_(saved)

    def check(self) -> list[str]:
        """Names of guarded slices that differ from the snapshot (empty when intact)."""
        return [name for name, view, saved, _ in self._slices if not torch.equal(view, saved)]


class AnchorGuard(SliceGuard):
    """Snapshot of the anchor slices (expert 0 and router row 0), restored after every step."""

    def __init__(self, model: nn.Module) -> None:
        from barkit.families import family_of

        super().__init__(model, family_of(model).anchor_slices(model))


def kept_row_ranges(rows: int, trained: Sequence[int]) -> list[tuple[int, int]]:
    """The contiguous ``[start, stop)`` row ranges of ``rows`` that are not in ``trained``."""
    ranges: list[tuple[int, int]] = []
    start = 0
    for row in sorted(set(trained)):
        if row > start:
            ranges.append((start, row))
        start = row + 1
    if start < rows:
        ranges.append((start, rows))
    return ranges


class RowGuard(SliceGuard):
    """The pre-existing rows of a ``:new`` tensor (every row but the added tokens'), kept
    bit-identical: the tensor is one parameter, so AdamW would otherwise move all its rows."""

    def __init__(self, model: nn.Module, plan: TrainPlan) -> None:
        slices = []
        for name, trained in plan.only_rows.items():
            param = model.get_parameter(name)
            for start, stop in kept_row_ranges(param.shape[0], trained):
                slices.append((f"{name}[{start}:{stop}]", param[start:stop]))
        super().__init__(model, slices)


@dataclass(frozen=True)
class OptimTensor:
    """One tensor the optimizer updates: a trainable parameter, or, for a parameter that holds
    the anchor, a leaf view of its other experts' rows (``owner`` is then that parameter)."""

    name: str
    param: nn.Parameter
    owner: nn.Parameter | None = None
    #: the model parameter's name (lr scaling and weight decay follow the parameter)
    parameter: str = ""


class OptimizerTensors:
    """What the optimizer holds: the trainable parameters, with the anchor left out.

    The fused expert tensors ``[E, ...]`` and routers ``[E, H]`` hold the anchor in row 0 and
    train as one parameter. Handing AdamW the whole tensor would keep moment buffers for the
    anchor (half the expert state of a branch) and update it each step, only for the guard to
    copy it back. Instead the optimizer gets a leaf parameter that shares storage with rows
    ``1:`` (the other experts): it updates them in place and never sees the anchor. Autograd
    still fills the whole parameter's gradient; :meth:`sync_grads` hands the view its part.
    """

    def __init__(self, model: nn.Module, plan: TrainPlan) -> None:
        from barkit.families import family_of

        anchored = dict(family_of(model).per_expert_parameters(model)) if plan.moe else {}
        self.tensors: list[OptimTensor] = []
        for name, param in model.named_parameters():
            if not param.requires_grad:
                continue
            if name in anchored and param.shape[0] > 1:
                view = nn.Parameter(param.detach()[1:])
                self.tensors.append(OptimTensor(f"{name}[1:]", view, param, name))
            else:
                self.tensors.append(OptimTensor(name, param, None, name))

    @property
    def params(self) -> list[nn.Parameter]:
        return [t.param for t in self.tensors]

    def state_numel(self) -> tuple[int, int]:
        """(elements the optimizer updates, elements of the trainable parameters they come from)."""
        held = sum(t.param.numel() for t in self.tensors)
        whole = sum((t.owner if t.owner is not None else t.param).numel() for t in self.tensors)
        return held, whole

    @torch.no_grad()
    def sync_grads(self) -> None:
        """Point each view's gradient at its rows of the parameter's gradient (no copy)."""
        for t in self.tensors:
            if t.owner is None:
                continue
            grad = t.owner.grad
            if grad is not None and grad.stride() != t.owner.stride():
                raise BarkitError(f"{t.parameter}: gradient layout differs from its parameter")
            t.param.grad = None if grad is None else grad[1:]

    def clear_grads(self) -> None:
        """Drop the parameters' gradients that the optimizer's ``zero_grad`` does not reach."""
        for t in self.tensors:
            if t.owner is not None:
                t.owner.grad = None
