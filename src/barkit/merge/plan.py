"""The merge plan: every output tensor and the input rows that produce it, before any write.

The checks run on the plan, ``--dry-run`` prints it, and :mod:`barkit.merge.write` executes it.
The tensor builders here are shared by the BAR and the BTX planners.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from barkit.errors import ConfigError, IncompatibleError
from barkit.families import Family
from barkit.merge.inputs import VOCAB_GROUPS, Input
from barkit.merge.io import DTYPE_BYTES, TensorInfo
from barkit.merge.policies import get_policy
from barkit.merge.vocab import VocabUnion

if TYPE_CHECKING:
    import torch

SHARED_GROUPS = ("embeddings", "lm_head", "attention", "norms")
DEFAULT_MAX_SHARD_SIZE = 2_000_000_000


@dataclass(frozen=True)
class Source:
    """A run of rows of one input tensor, with its weight in the combination."""

    info: TensorInfo
    name: str
    row: int = 0
    weight: float = 1.0


@dataclass(frozen=True)
class Segment:
    """Consecutive output rows produced by combining the same rows of several sources."""

    rows: int
    sources: tuple[Source, ...]
    #: the policy whose elementwise rule combines the sources (the base last); None: weighted mean
    reduce: str | None = None


@dataclass
class OutTensor:
    """One output tensor: name, dtype, shape, group, and either segments or generated data."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    group: str
    policy: str
    segments: list[Segment] = field(default_factory=list)
    generate: Callable[[], torch.Tensor] | None = None  # small generated tensors (a fresh BTX router)

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * DTYPE_BYTES[self.dtype]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass
class ExpertEntry:
    """One expert of the output, for the plan's description, the manifest and the card."""

    index: int
    name: str
    source: Path
    manifest: dict[str, Any]


@dataclass
class MergePlan:
    """Everything a merge will write, decided and checked before writing anything."""

    kind: Literal["bar", "btx"]
    family: Family
    experts: list[ExpertEntry]
    tensors: list[OutTensor]
    config_source: Path
    vocab_size: int
    added_tokens: list[tuple[int, str, list[str]]]  # (new id, token, experts that have it)
    top_k: int
    policies: dict[str, str]  # group -> policy (before overrides)
    overrides: dict[str, str]
    max_shard_size: int
    inputs: list[Path]
    base: Path | None = None
    shared_weights: list[float] | None = None
    specials: set[str] = field(default_factory=set)  # tokens any input marks special

    def shards(self) -> list[list[OutTensor]]:
        """Output tensors split into files of at most ``max_shard_size`` bytes, in order."""
        shards: list[list[OutTensor]] = [[]]
        size = 0
        for t in self.tensors:
            if shards[-1] and size + t.nbytes > self.max_shard_size:
                shards.append([])
                size = 0
            shards[-1].append(t)
            size += t.nbytes
        return shards

    def parameter_counts(self) -> tuple[int, int]:
        """(total, active per token): active counts top_k of the experts in every layer."""
        total = sum(t.numel for t in self.tensors)
        experts = sum(t.numel for t in self.tensors if t.group == "expert")
        active = total - experts + experts * self.top_k // len(self.experts)
        return total, active

    def describe(self) -> str:
        """The human-readable plan that ``--dry-run`` prints."""
        total, active = self.parameter_counts()
        cfg = json.loads((self.config_source / "config.json").read_text())
        lines = [
            f"{self.kind.upper()} merge -> {self.family.moe_model_type} with {len(self.experts)} experts, "
            f"top-{self.top_k} routing",
            f"shapes: hidden {cfg.get('hidden_size')}, layers {cfg.get('num_hidden_layers')}, "
            f"expert intermediate {cfg.get('intermediate_size')}, vocab {self.vocab_size}",
            f"parameters: {total:,} total, {active:,} active per token",
            "experts:",
        ]
        lines += [f"  {e.index}: {e.name:<12} from {e.source}" for e in self.experts]
        lines.append("shared tensors: " + ", ".join(f"{g} {p}" for g, p in self.policies.items()))
        if self.shared_weights:
            lines.append("weights: " + ", ".join(f"{w:g}" for w in self.shared_weights))
        lines += [f"  override {pat}: {pol}" for pat, pol in self.overrides.items()]
        lines.append(self._describe_vocab())
        size = sum(t.nbytes for t in self.tensors)
        lines.append(f"output: {len(self.shards())} safetensors file(s), {size / 1e9:.3f} GB")
        return "\n".join(lines)

    def _describe_vocab(self) -> str:
        if not self.added_tokens:
            return "vocabulary: unchanged"
        added = (f"+{tok!r} id {i} from {', '.join(owners)}" for i, tok, owners in self.added_tokens)
        return "vocabulary: " + "; ".join(added)


def natural_key(name: str) -> tuple[Any, ...]:
    """Sort ``layers.10`` after ``layers.9``: numbers compare as numbers."""
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))


def shared_sources(
    name: str, policy: str, inputs: Sequence[Input], weights: Sequence[float] | None, base: Input | None
) -> tuple[Source, ...]:
    """The weighted sources of one shared tensor under a policy of the table."""
    entry = get_policy(policy)
    base_info = None
    if entry.needs_base:
        assert base is not None  # require_base ran before planning
        if name not in base.tensors:
            raise IncompatibleError(f"{base.path}: base has no tensor {name}")
        base_info = base.tensors[name]
    own = [inp.tensors[name] for inp in inputs]
    return tuple(Source(info, name, weight=w) for info, w in entry.combine(own, weights, base_info))


def shared_tensor(
    name: str,
    group: str,
    policy: str,
    inputs: Sequence[Input],
    weights: Sequence[float] | None,
    base: Input | None,
    vocab: VocabUnion,
) -> OutTensor:
    """A shared tensor combined by its policy; a vocabulary tensor grows by the added tokens."""
    first = inputs[0].tensors[name]
    sources = shared_sources(name, policy, inputs, weights, base)
    reduce = policy if get_policy(policy).reduce is not None else None
    if group not in VOCAB_GROUPS:
        for s in sources:
            if (s.info.dtype, s.info.shape) != (first.dtype, first.shape):
                raise IncompatibleError(
                    f"{s.info.file.parent}: tensor {name} is {s.info.dtype}{list(s.info.shape)}, "
                    f"expected {first.dtype}{list(first.shape)}"
                )
        return OutTensor(
            name, first.dtype, first.shape, group, policy, [Segment(first.rows, sources, reduce)]
        )
    if any(s.info.rows < vocab.prefix or s.info.shape[1:] != first.shape[1:] for s in sources):
        raise IncompatibleError(f"tensor {name}: a source has fewer than {vocab.prefix} vocabulary rows")
    segments = [Segment(vocab.prefix, sources, reduce)] if vocab.prefix else []
    for _token, owners in vocab.added:
        # A new token's row comes only from the experts that have it: no zero padding.
        segments.append(Segment(1, tuple(Source(inputs[i].tensors[name], name, row=k) for i, k in owners)))
    return OutTensor(name, first.dtype, (vocab.size, *first.shape[1:]), group, policy, segments)


def copied(name: str, info: TensorInfo, source_name: str, group: str, policy: str) -> OutTensor:
    """An output tensor that is one input tensor, byte for byte."""
    return OutTensor(
        name, info.dtype, info.shape, group, policy, [Segment(info.rows, (Source(info, source_name),))]
    )


def resolve_top_k(top_k: int | None, experts: int) -> int:
    top_k = experts if top_k is None else top_k
    if not 1 <= top_k <= experts:
        raise ConfigError(f"--top-k {top_k}: must be between 1 and the number of experts ({experts})")
    return top_k


def shared_names(inputs: Sequence[Input], family: Family) -> dict[str, str]:
    """Shared tensor name -> group, in natural order.

    With tied embeddings the LM head is the embedding tensor: it is merged once, as the
    embedding. A stray ``lm_head`` tensor in a tied checkpoint (some exporters write both) is
    left out, since the loader would tie over it anyway and the output must hold one tensor.
    """
    tied = bool(inputs[0].config.get("tie_word_embeddings", False))
    groups = {name: family.tensor_group(name) for name in inputs[0].tensors}
    names = sorted(
        (n for n, g in groups.items() if g in SHARED_GROUPS and not (tied and g == "lm_head")),
        key=natural_key,
    )
    return {n: groups[n] for n in names}


def vocab_rows(inputs: Sequence[Input], family: Family) -> list[int]:
    """Each input's number of embedding rows (its vocabulary size on disk)."""
    return [inp.tensors[family.embedding_tensor].rows for inp in inputs]


def parse_size(text: str | int) -> int:
    """``2GB`` -> 2_000_000_000, ``512MiB`` -> 536_870_912, a plain number is bytes."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]i?B|B)?\s*", text, re.IGNORECASE)
    if not m:
        raise ConfigError(f"--max-shard-size {text!r}: expected a size like 2GB, 500MB or 1GiB")
    unit = (m.group(2) or "B").upper()
    scale = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
    scale |= {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
    size = int(float(m.group(1)) * scale[unit])
    if size <= 0:
        raise ConfigError(f"--max-shard-size {text!r}: must be positive")
    return size
