"""Merge: compose branch experts into one native transformers MoE, streaming.

A BAR merge takes N branch folders (2-expert MoEs grown from one base) and writes one MoE
with 1+N experts: expert 0 is the anchor, expert k is branch k's expert 1, and router rows
are taken the same way. Shared tensors (embeddings, LM head, attention, norms) that the
branches let diverge are combined by a policy (``mean``, ``weighted``, ``anchor``, ``sum``),
per tensor through glob overrides. ``sum`` is task arithmetic: the base plus every branch's
change to the base, so no branch's change is divided by the number of branches. Special
tokens that experts added are unioned into one vocabulary; a new token's rows come only from
the experts that have it.

Everything is planned before anything is written: the plan lists, for every output tensor,
which row ranges of which input tensors produce it. The checks (same base, bit-identical
anchors, matching shapes, no expert twice) run on that plan, ``--dry-run`` prints it, and the
writer executes it. The writer knows every output tensor's name, dtype and shape up front, so
it writes each safetensors header first, which fixes every tensor's file offset. Then two
threads fill the files at their own offsets: the main thread copies single-source byte ranges
(experts, router rows, a token only one expert added) from input file to output file with
``copy_file_range`` (in the kernel, never decoded, bit for bit), while a helper thread writes
tokenizer and config files and averages the shared tensors in small chunks. Inputs are read
with ``pread`` at offsets from their headers, never mmapped: peak memory is a few chunks plus
the imports, not a shard and never the sum of the models.

Numerics: a combination of several sources is summed and divided once, then rounded once to
the storage dtype. For fp32/fp64 storage the sum is in float64, exact for a few values, so the
merged tensor is bit-identical to ``stack(sources).double().mean(0).to(dtype)`` whatever the
order. For bf16/fp16 storage the sum is in float32 (half the memory traffic, measured about 2x
faster): 24 significant bits against the inputs' 8 or 11, so the result equals that float64
reference except where the final rounding meets a tie, where it is one unit in the last
place off (with --weights, each weight multiplies in that accumulator too). Copies are exact
by construction.
"""

from __future__ import annotations

import errno
import fnmatch
import hashlib
import json
import math
import os
import re
import struct
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast, get_args

from barkit.artifacts import (
    atomic_dir,
    atomic_write_text,
    config_fingerprint,
    content_fingerprint,
    read_manifest,
    require_model_dir,
    write_manifest,
)
from barkit.errors import ArtifactError, ConfigError, IncompatibleError
from barkit.families import Family, family_of

if TYPE_CHECKING:
    import torch

SharedPolicy = Literal["mean", "weighted", "anchor", "sum"]
RouterInit = Literal["random", "zeros"]
POLICIES: tuple[str, ...] = get_args(SharedPolicy)
SHARED_GROUPS = ("embeddings", "lm_head", "attention", "norms")
VOCAB_GROUPS = ("embeddings", "lm_head")
DEFAULT_MAX_SHARD_SIZE = 2_000_000_000
# Elements per averaged chunk: small enough that the accumulator and the pieces being added
# stay in the CPU's cache (measured here: ~3x faster than 8M-element chunks), large enough
# that Python's per-chunk overhead is noise.
CHUNK_ELEMENTS = 1 << 18
COMPARE_CHUNK_BYTES = 16 << 20  # pieces compared by the checks (two of them in memory)
COPY_PIECE_BYTES = 256 << 20  # one kernel copy call; bounds how long a failure goes unseen
WEIGHTS_INDEX = "model.safetensors.index.json"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
)

# Config keys that may legitimately differ between branches of one base: training switches
# and file metadata. Everything else defines the computation and must agree.
_CONFIG_KEYS_FREE = frozenset(
    {
        "vocab_size",
        "transformers_version",
        "_name_or_path",
        "output_router_logits",
        "router_aux_loss_coef",
        "use_cache",
        "num_experts_per_tok",
        "dtype",
        "torch_dtype",
    }
)

_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1}


# ---------------------------------------------------------------------------- safetensors I/O
@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives on disk and what it is."""

    file: Path
    dtype: str  # safetensors dtype string, e.g. "BF16"
    shape: tuple[int, ...]
    offset: int = 0  # absolute file offset of the tensor's first byte

    @property
    def row_elements(self) -> int:
        return math.prod(self.shape[1:]) if self.shape else 1

    @property
    def rows(self) -> int:
        return self.shape[0] if self.shape else 1

    @property
    def row_bytes(self) -> int:
        return self.row_elements * _DTYPE_BYTES[self.dtype]

    @property
    def nbytes(self) -> int:
        return self.rows * self.row_bytes


def read_header(path: Path) -> dict[str, TensorInfo]:
    """Tensor names, dtypes, shapes and file offsets of one safetensors file, from its header.

    Also checks that the data the header promises is all there and matches the shapes, so
    that a truncated file is refused before anything is written rather than halfway through.
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if length > size - 8:
                raise ValueError("header longer than the file")
            header = json.loads(f.read(length))
    except (OSError, ValueError, struct.error) as e:
        raise ArtifactError(f"{path}: corrupt safetensors file ({e})") from None
    header.pop("__metadata__", None)
    out: dict[str, TensorInfo] = {}
    end = 0
    for name, entry in header.items():
        if entry.get("dtype") not in _DTYPE_BYTES:
            raise ArtifactError(f"{path}: tensor {name} has unsupported dtype {entry.get('dtype')!r}")
        begin, stop = (int(x) for x in entry["data_offsets"])
        info = TensorInfo(path, entry["dtype"], tuple(entry["shape"]), 8 + length + begin)
        if stop - begin != info.nbytes:
            raise ArtifactError(f"{path}: corrupt safetensors file (tensor {name} has {stop - begin} bytes)")
        out[name] = info
        end = max(end, stop)
    if 8 + length + end > size:
        raise ArtifactError(
            f"{path}: corrupt safetensors file (truncated: {size} of {8 + length + end} bytes)"
        )
    return out


def tensor_index(folder: Path) -> dict[str, TensorInfo]:
    """All tensors of a checkpoint folder, single file or sharded with an index."""
    index_path = folder / WEIGHTS_INDEX
    if index_path.is_file():
        try:
            files = sorted(set(json.loads(index_path.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError) as e:
            raise ArtifactError(f"{index_path}: corrupt index ({e})") from None
    else:
        files = sorted(p.name for p in folder.glob("*.safetensors"))
    out: dict[str, TensorInfo] = {}
    for name in files:
        out.update(read_header(folder / name))
    if not out:
        raise ArtifactError(f"{folder}: no tensors in its safetensors files")
    return out


class _InputFiles:
    """Read-only descriptors of input files, opened once and shared by the threads of a merge.

    Reads go through ``pread`` at offsets known from the headers: no mmap, so nothing of an
    input stays mapped into the process (its pages live in the kernel's page cache only).
    """

    def __init__(self) -> None:
        self._fds: dict[Path, int] = {}
        self._lock = threading.Lock()

    def fd(self, path: Path) -> int:
        with self._lock:
            if path not in self._fds:
                try:
                    self._fds[path] = os.open(path, os.O_RDONLY)
                except OSError as e:
                    raise ArtifactError(f"{path}: cannot open ({e.strerror})") from None
            return self._fds[path]

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()


_FILES = _InputFiles()


def read_bytes(info: TensorInfo, start: int, nbytes: int) -> bytearray:
    """``nbytes`` raw bytes of a tensor's data from byte ``start`` (relative to the tensor)."""
    buf = bytearray(nbytes)
    view, fd, done = memoryview(buf), _FILES.fd(info.file), 0
    try:
        while done < nbytes:
            got = os.preadv(fd, [view[done:]], info.offset + start + done)
            if got == 0:
                raise OSError("unexpected end of file")
            done += got
    except OSError as e:
        raise ArtifactError(f"{info.file}: cannot read ({e})") from None
    return buf


def read_rows(info: TensorInfo, name: str, start: int, stop: int) -> torch.Tensor:
    """Rows ``start:stop`` of one tensor (``name`` is for messages), as a tensor over fresh memory."""
    import torch

    raw = read_bytes(info, start * info.row_bytes, (stop - start) * info.row_bytes)
    shape = (stop - start, *info.shape[1:]) if info.shape else ()
    if not raw:
        return torch.empty(shape, dtype=_storage_dtype(info.dtype))
    return torch.frombuffer(raw, dtype=_storage_dtype(info.dtype)).reshape(shape)


def iter_chunks(
    info: TensorInfo, name: str, start: int = 0, rows: int | None = None
) -> Iterator[torch.Tensor]:
    """A tensor (or ``rows`` rows of it from ``start``) in chunks of about CHUNK_ELEMENTS."""
    rows = info.rows - start if rows is None else rows
    step = max(1, CHUNK_ELEMENTS // max(1, info.row_elements))
    for a in range(0, rows, step):
        yield read_rows(info, name, start + a, start + min(rows, a + step))


def iter_raw(info: TensorInfo, chunk: int = COMPARE_CHUNK_BYTES) -> Iterator[bytearray]:
    """A tensor's raw bytes in pieces of at most ``chunk`` bytes."""
    for a in range(0, info.nbytes, chunk):
        yield read_bytes(info, a, min(chunk, info.nbytes - a))


def _raw(t: torch.Tensor) -> torch.Tensor:
    """The bytes of a tensor as a flat uint8 tensor (bit identity, not value equality)."""
    import torch

    return t.contiguous().reshape(-1).view(torch.uint8)


def tensors_identical(a: TensorInfo, b: TensorInfo, name_a: str, name_b: str | None = None) -> bool:
    """Whether two stored tensors are bit-identical, compared byte range by byte range."""
    return _first_mismatch([a, b]) is None


def _first_mismatch(infos: Sequence[TensorInfo]) -> int | None:
    """Index of the first tensor not bit-identical to ``infos[0]``; None when all are.

    The first tensor is read once per piece and compared with every other (memcmp of bytes).
    """
    first = infos[0]
    for i, other in enumerate(infos[1:], start=1):
        if (other.dtype, other.shape) != (first.dtype, first.shape):
            return i
    for a in range(0, first.nbytes, COMPARE_CHUNK_BYTES):
        n = min(COMPARE_CHUNK_BYTES, first.nbytes - a)
        piece = read_bytes(first, a, n)
        for i, other in enumerate(infos[1:], start=1):
            if read_bytes(other, a, n) != piece:
                return i
    return None


def _copy_range(src: TensorInfo, src_start: int, dst_fd: int, dst_offset: int, nbytes: int) -> None:
    """Copy bytes from an input file to the output file inside the kernel where it can.

    ``copy_file_range`` moves page-cache pages without a round trip through user space (and
    lets file systems that can share extents do so); where it is missing or refused, large
    ``pread``/``pwrite`` pieces do the same job.
    """
    src_fd, src_offset, done = _FILES.fd(src.file), src.offset + src_start, 0
    use_kernel = hasattr(os, "copy_file_range")
    try:
        while done < nbytes:
            n = min(nbytes - done, COPY_PIECE_BYTES)
            if use_kernel:
                try:
                    got = os.copy_file_range(src_fd, dst_fd, n, src_offset + done, dst_offset + done)
                except OSError as e:
                    if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                        raise
                    use_kernel = False
                    continue
            else:
                data = os.pread(src_fd, n, src_offset + done)
                got = os.pwrite(dst_fd, data, dst_offset + done) if data else 0
            if got == 0:
                raise OSError("unexpected end of file")
            done += got
    except OSError as e:
        raise ArtifactError(f"{src.file}: cannot copy tensor bytes ({e})") from None


class ShardWriter:
    """Writes one safetensors file whose tensors are all known before the first byte.

    The header (names, dtypes, shapes, offsets) goes first. Every tensor's place in the file is
    then fixed, so its bytes can be written in any order and from several threads (``pwrite``,
    ``copy_file_range`` at explicit offsets); ``write`` appends in header order for callers
    that produce tensors one after another.
    """

    def __init__(self, path: Path, tensors: Sequence[tuple[str, str, tuple[int, ...]]]) -> None:
        header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
        offset = 0
        self.offsets: dict[str, int] = {}
        for name, dtype, shape in tensors:
            nbytes = math.prod(shape) * _DTYPE_BYTES[dtype]
            header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            self.offsets[name] = offset
            offset += nbytes
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)  # data must start 8-byte aligned
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(self.fd, struct.pack("<Q", len(blob)) + blob)
        self._start = 8 + len(blob)
        self.offsets = {k: v + self._start for k, v in self.offsets.items()}
        self._path = path
        self._written = 0
        self._next = self._start  # where ``write`` appends
        self._total = offset
        self._lock = threading.Lock()

    def write(self, data: torch.Tensor) -> None:
        """Append a tensor's bytes after the previous ``write``."""
        nbytes = data.numel() * data.element_size()
        self.write_at(self._next, _raw(data).numpy())
        self._next += nbytes

    def write_at(self, offset: int, data: Any) -> None:
        """Write a bytes-like object at an absolute file offset."""
        view, done = memoryview(data).cast("B"), 0
        while done < len(view):
            done += os.pwrite(self.fd, view[done:], offset + done)
        self.count(done)

    def count(self, nbytes: int) -> None:
        """Record bytes written to this file by someone else (``_copy_range``)."""
        with self._lock:
            self._written += nbytes

    def close(self, *, complete: bool = True) -> None:
        """Close the file; when ``complete``, check that every promised byte was written."""
        os.close(self.fd)
        if complete and self._written != self._total:
            raise ArtifactError(f"{self._path}: wrote {self._written} of {self._total} bytes")


# ---------------------------------------------------------------------------- the plan
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
        return math.prod(self.shape) * _DTYPE_BYTES[self.dtype]

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
        for e in self.experts:
            lines.append(f"  {e.index}: {e.name:<12} from {e.source}")
        lines.append("shared tensors: " + ", ".join(f"{g} {p}" for g, p in self.policies.items()))
        if self.shared_weights:
            lines.append("weights: " + ", ".join(f"{w:g}" for w in self.shared_weights))
        lines += [f"  override {pat}: {pol}" for pat, pol in self.overrides.items()]
        if self.added_tokens:
            lines.append(
                "vocabulary: "
                + "; ".join(
                    f"+{tok!r} id {i} from {', '.join(owners)}" for i, tok, owners in self.added_tokens
                )
            )
        else:
            lines.append("vocabulary: unchanged")
        size = sum(t.nbytes for t in self.tensors)
        lines.append(f"output: {len(self.shards())} safetensors file(s), {size / 1e9:.3f} GB")
        return "\n".join(lines)


# ---------------------------------------------------------------------------- inputs
@dataclass
class _Input:
    """One input folder, read just enough to plan: config, manifest, tensors, vocabulary."""

    path: Path
    config: dict[str, Any]
    manifest: dict[str, Any]
    tensors: dict[str, TensorInfo]
    vocab: list[str | None] | None  # id -> token; None when the folder has no tokenizer
    special: set[str] = field(default_factory=set)

    @property
    def name(self) -> str:
        return str(self.manifest.get("domain") or self.path.name)


def _read_vocab(folder: Path) -> tuple[list[str | None] | None, set[str]]:
    """id -> token from ``tokenizer.json`` (model vocabulary plus added tokens), and the specials."""
    path = folder / "tokenizer.json"
    if not path.is_file():
        return None, set()
    try:
        data = json.loads(path.read_text())
        model_vocab = data["model"].get("vocab") or {}
        pairs = (
            [(t, i) for i, (t, _score) in enumerate(model_vocab)]
            if isinstance(model_vocab, list)
            else list(model_vocab.items())
        )
        pairs += [(a["content"], a["id"]) for a in data.get("added_tokens", [])]
        special = {a["content"] for a in data.get("added_tokens", []) if a.get("special")}
    except (ValueError, KeyError, TypeError) as e:
        raise ArtifactError(f"{path}: corrupt tokenizer ({e})") from None
    vocab: list[str | None] = [None] * (max((i for _, i in pairs), default=-1) + 1)
    for token, i in pairs:
        vocab[int(i)] = token
    return vocab, special


def _load_input(folder: str | os.PathLike[str], *, need_manifest: bool) -> _Input:
    path = require_model_dir(folder)
    try:
        config = json.loads((path / "config.json").read_text())
    except ValueError as e:
        raise ArtifactError(f"{path / 'config.json'}: corrupt config ({e})") from None
    manifest = read_manifest(path) if need_manifest else _optional_manifest(path)
    vocab, special = _read_vocab(path)
    return _Input(path, config, manifest, tensor_index(path), vocab, special)


def _optional_manifest(path: Path) -> dict[str, Any]:
    try:
        return read_manifest(path)
    except ArtifactError:
        return {}


def _check_branch(inp: _Input) -> Family:
    """Refuse a folder that is not a 2-expert barkit branch; return its family."""
    for key in ("base_fingerprint", "stage"):
        if not inp.manifest.get(key):
            raise ArtifactError(f"{inp.path}: not a barkit branch (barkit.json has no {key})")
    try:
        family = family_of(str(inp.config.get("model_type")))
    except Exception:
        raise ArtifactError(
            f"{inp.path}: not a barkit branch (model type {inp.config.get('model_type')!r})"
        ) from None
    if inp.config.get("model_type") != family.moe_model_type:
        raise ArtifactError(f"{inp.path}: not a barkit branch (dense {inp.config.get('model_type')} model)")
    experts = inp.config.get("num_experts", inp.config.get("num_local_experts"))
    if experts != 2:
        raise ArtifactError(f"{inp.path}: not a barkit branch ({experts} experts, a branch has 2)")
    return family


def _check_same_config(first: _Input, other: _Input) -> None:
    keys = (set(first.config) | set(other.config)) - _CONFIG_KEYS_FREE
    for key in sorted(keys):
        if first.config.get(key) != other.config.get(key):
            raise IncompatibleError(
                f"{other.path}: config {key}={other.config.get(key)!r} differs from "
                f"{first.config.get(key)!r} in {first.path}"
            )


def _check_same_tensors(first: _Input, other: _Input, family: Family) -> None:
    """Same tensor names, dtypes and shapes; embeddings and LM head may differ in rows only."""
    missing = sorted(set(first.tensors) ^ set(other.tensors))
    if missing:
        raise IncompatibleError(f"{other.path}: tensor {missing[0]} is in one input but not in {first.path}")
    for name, a in first.tensors.items():
        b = other.tensors[name]
        vocab_dim = family.tensor_group(name) in VOCAB_GROUPS
        shape_a, shape_b = (a.shape[1:], b.shape[1:]) if vocab_dim else (a.shape, b.shape)
        if a.dtype != b.dtype or shape_a != shape_b:
            raise IncompatibleError(
                f"{other.path}: tensor {name} is {b.dtype}{list(b.shape)}, "
                f"{a.dtype}{list(a.shape)} in {first.path}"
            )


def _check_distinct_paths(paths: Sequence[Path]) -> None:
    seen: dict[Path, Path] = {}
    for p in paths:
        key = p.resolve()
        if key in seen:
            raise IncompatibleError(f"{p}: given twice (the same expert would be merged twice)")
        seen[key] = p


def _expert_names(family: Family, layers: int, expert: int) -> list[str]:
    return [n for layer in range(layers) for n in family.expert_tensor_names(layer, expert)]


def _digest(inp: _Input, names: Sequence[str]) -> str:
    h = hashlib.sha256()
    for name in names:
        for piece in iter_raw(inp.tensors[name]):
            h.update(piece)
    return h.hexdigest()


def _check_no_duplicate_experts(inputs: Sequence[_Input], names: Sequence[str], label: str) -> None:
    """Refuse two inputs whose expert tensors are identical by content.

    Hashing the first layer screens all pairs cheaply; only colliding pairs are compared in
    full, so the check reads the experts twice only when a duplicate is likely.
    """
    first_layer = names[:3]
    seen: dict[str, _Input] = {}
    for inp in inputs:
        key = _digest(inp, first_layer)
        other = seen.get(key)
        if other is not None and all(tensors_identical(other.tensors[n], inp.tensors[n], n) for n in names):
            raise IncompatibleError(
                f"{inp.path}: its {label} is identical to that of {other.path} (the same expert given twice)"
            )
        seen.setdefault(key, inp)


def _check_anchors(inputs: Sequence[_Input], family: Family, layers: int) -> None:
    """Every input's expert 0 and router row 0 must be bit-identical to the first input's.

    Raw bytes are compared (memcmp); the first input's pieces are read once for all others.
    """
    first = inputs[0]
    for name in _expert_names(family, layers, 0):
        bad = _first_mismatch([inp.tensors[name] for inp in inputs])
        if bad is not None:
            raise IncompatibleError(f"{inputs[bad].path}: anchor tensor {name} differs from {first.path}")
    for layer in range(layers):
        name = family.router_tensor_name(layer)
        row0 = read_bytes(first.tensors[name], 0, first.tensors[name].row_bytes)
        for inp in inputs[1:]:
            if read_bytes(inp.tensors[name], 0, inp.tensors[name].row_bytes) != row0:
                raise IncompatibleError(f"{inp.path}: anchor router row {name}[0] differs from {first.path}")


def _check_base(base: _Input, fingerprint: str) -> None:
    """The ``anchor`` policy's base must be the base the branches came from."""
    known = {base.manifest.get("fingerprint"), content_fingerprint(base.path)}
    if fingerprint not in known:
        raise IncompatibleError(f"{base.path}: not the base of these branches (they name base {fingerprint})")


# ---------------------------------------------------------------------------- vocabulary union
@dataclass
class _VocabUnion:
    """Rows ``[0, prefix)`` are common to all inputs; ``added`` are new rows after them."""

    prefix: int
    added: list[tuple[str, list[tuple[int, int]]]]  # token -> [(input index, row there)]

    @property
    def size(self) -> int:
        return self.prefix + len(self.added)


def _vocab_union(inputs: Sequence[_Input], rows: Sequence[int]) -> _VocabUnion:
    """The union vocabulary: the common prefix in its ids, then added tokens in input order.

    The prefix is the longest run of ids that every input maps to the same token (or to no
    token: padding rows past the tokenizer). A token added by several experts gets one id.
    """
    vocabs = [inp.vocab for inp in inputs]
    if all(v is None for v in vocabs):
        if len(set(rows)) > 1:
            raise IncompatibleError(
                f"{inputs[rows.index(min(rows))].path}: vocabulary size differs and no tokenizer.json"
            )
        return _VocabUnion(rows[0], [])
    for inp, v in zip(inputs, vocabs, strict=True):
        if v is None:
            raise IncompatibleError(f"{inp.path}: has no tokenizer.json while {inputs[0].path} has")
    lists = cast(list[list[str | None]], vocabs)
    for inp, v, r in zip(inputs, lists, rows, strict=True):
        if len(v) > r:
            raise IncompatibleError(f"{inp.path}: tokenizer has {len(v)} tokens but the embeddings {r} rows")

    def token(i: int, k: int) -> str | None:
        return lists[i][k] if k < len(lists[i]) else None

    prefix = 0
    while prefix < min(rows) and len({token(i, prefix) for i in range(len(inputs))}) == 1:
        prefix += 1
    owners: dict[str, list[tuple[int, int]]] = {}
    for i, v in enumerate(lists):
        for k in range(prefix, len(v)):
            if v[k] is not None:
                owners.setdefault(cast(str, v[k]), []).append((i, k))
    return _VocabUnion(prefix, list(owners.items()))


# ---------------------------------------------------------------------------- planning
def _natural_key(name: str) -> tuple[Any, ...]:
    """Sort ``layers.10`` after ``layers.9``: numbers compare as numbers."""
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))


def _policy_for(name: str, default: str, overrides: Mapping[str, str]) -> str:
    for pattern, policy in overrides.items():
        if fnmatch.fnmatchcase(name, pattern):
            return policy
    return default


def _validate_overrides(overrides: Mapping[str, str], shared_names: Sequence[str]) -> None:
    for pattern, policy in overrides.items():
        if policy not in POLICIES:
            raise ConfigError(f"override {pattern!r}: policy {policy!r} is not one of {', '.join(POLICIES)}")
        if not any(fnmatch.fnmatchcase(n, pattern) for n in shared_names):
            raise ConfigError(
                f"override {pattern!r} matches no shared tensor (experts and routers are not averaged)"
            )


def _shared_sources(
    name: str, policy: str, inputs: Sequence[_Input], weights: Sequence[float] | None, base: _Input | None
) -> tuple[Source, ...]:
    if policy == "anchor":
        if base is None:
            raise ConfigError(f"tensor {name}: shared policy 'anchor' needs --base DIR (the branches' base)")
        if name not in base.tensors:
            raise IncompatibleError(f"{base.path}: base has no tensor {name}")
        return (Source(base.tensors[name], name),)
    if policy == "sum":
        # base + sum_i (branch_i - base): the branches at weight 1, the base at 1 - n. The
        # weights add up to 1, so the writer's division by their sum leaves the sum unchanged.
        if base is None:
            raise ConfigError(f"tensor {name}: shared policy 'sum' needs --base DIR (the branches' base)")
        if name not in base.tensors:
            raise IncompatibleError(f"{base.path}: base has no tensor {name}")
        own = tuple(Source(inp.tensors[name], name) for inp in inputs)
        return (*own, Source(base.tensors[name], name, weight=1.0 - len(inputs)))
    if policy == "weighted":
        if weights is None:
            raise ConfigError("shared policy 'weighted' needs --weights (one per input)")
        return tuple(
            Source(inp.tensors[name], name, weight=w) for inp, w in zip(inputs, weights, strict=True)
        )
    return tuple(Source(inp.tensors[name], name) for inp in inputs)


def _shared_tensor(
    name: str,
    group: str,
    policy: str,
    inputs: Sequence[_Input],
    weights: Sequence[float] | None,
    base: _Input | None,
    vocab: _VocabUnion,
) -> OutTensor:
    first = inputs[0].tensors[name]
    sources = _shared_sources(name, policy, inputs, weights, base)
    if group not in VOCAB_GROUPS:
        for s in sources:
            if (s.info.dtype, s.info.shape) != (first.dtype, first.shape):
                raise IncompatibleError(
                    f"{s.info.file.parent}: tensor {name} is {s.info.dtype}{list(s.info.shape)}, expected {first.dtype}{list(first.shape)}"
                )
        return OutTensor(name, first.dtype, first.shape, group, policy, [Segment(first.rows, sources)])
    if any(s.info.rows < vocab.prefix or s.info.shape[1:] != first.shape[1:] for s in sources):
        raise IncompatibleError(f"tensor {name}: a source has fewer than {vocab.prefix} vocabulary rows")
    segments = [Segment(vocab.prefix, sources)] if vocab.prefix else []
    for _token, owners in vocab.added:
        # A new token's row comes only from the experts that have it: no zero padding.
        segments.append(Segment(1, tuple(Source(inputs[i].tensors[name], name, row=k) for i, k in owners)))
    return OutTensor(name, first.dtype, (vocab.size, *first.shape[1:]), group, policy, segments)


def _router_tensor(name: str, inputs: Sequence[_Input]) -> OutTensor:
    info = inputs[0].tensors[name]
    rows = [Segment(1, (Source(info, name, row=0),))]
    rows += [Segment(1, (Source(inp.tensors[name], name, row=1),)) for inp in inputs]
    return OutTensor(name, info.dtype, (len(rows), *info.shape[1:]), "router", "rows", rows)


def _copied(name: str, info: TensorInfo, source_name: str, group: str, policy: str) -> OutTensor:
    return OutTensor(
        name, info.dtype, info.shape, group, policy, [Segment(info.rows, (Source(info, source_name),))]
    )


def _bar_expert_tensors(inputs: Sequence[_Input], family: Family, layers: int) -> list[OutTensor]:
    out: list[OutTensor] = []
    for layer in range(layers):
        anchor = family.expert_tensor_names(layer, 0)
        out += [_copied(n, inputs[0].tensors[n], n, "expert", "anchor") for n in anchor]
        for k, inp in enumerate(inputs, start=1):
            for dst, src in zip(
                family.expert_tensor_names(layer, k), family.expert_tensor_names(layer, 1), strict=True
            ):
                out.append(_copied(dst, inp.tensors[src], src, "expert", f"expert {k}"))
    return out


def _resolve_top_k(top_k: int | None, experts: int) -> int:
    top_k = experts if top_k is None else top_k
    if not 1 <= top_k <= experts:
        raise ConfigError(f"--top-k {top_k}: must be between 1 and the number of experts ({experts})")
    return top_k


def needs_base(shared: str, overrides: Mapping[str, str] | None = None) -> bool:
    """Whether a merge with this policy (and these per-tensor overrides) reads the base's tensors."""
    return any(p in ("anchor", "sum") for p in (shared, *(overrides or {}).values()))


def _check_weights(weights: Sequence[float] | None, n: int, shared: str) -> list[float] | None:
    if weights is None:
        return None
    weights = [float(w) for w in weights]
    if len(weights) != n:
        raise ConfigError(f"--weights: {len(weights)} weights for {n} inputs")
    if any(w < 0 or not math.isfinite(w) for w in weights) or sum(weights) <= 0:
        raise ConfigError(f"--weights {weights}: must be non-negative with a positive sum")
    if shared != "weighted":
        raise ConfigError(f"--weights given with --shared {shared}; use --shared weighted")
    return weights


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
    if not branch_dirs:
        raise IncompatibleError("merge needs at least one branch folder")
    if shared not in POLICIES:
        raise ConfigError(f"--shared {shared!r}: not one of {', '.join(POLICIES)}")
    paths = [Path(p) for p in branch_dirs]
    _check_distinct_paths(paths)
    inputs = [_load_input(p, need_manifest=True) for p in paths]
    family = _check_branch(inputs[0])
    first = inputs[0]
    for inp in inputs[1:]:
        _check_branch(inp)
        if inp.manifest["base_fingerprint"] != first.manifest["base_fingerprint"]:
            raise IncompatibleError(
                f"{inp.path}: grown from base {inp.manifest['base_fingerprint']}, "
                f"not {first.manifest['base_fingerprint']} like {first.path}"
            )
        _check_same_config(first, inp)
        _check_same_tensors(first, inp, family)
    weights = _check_weights(weights, len(inputs), shared)
    if shared == "weighted" and weights is None:
        raise ConfigError("--shared weighted needs --weights (one per input, e.g. 0.5,0.3,0.2)")
    base = _load_input(base_dir, need_manifest=False) if base_dir is not None else None
    if base is not None:
        _check_base(base, str(first.manifest["base_fingerprint"]))
    layers = int(first.config["num_hidden_layers"])
    try:
        _check_anchors(inputs, family, layers)
        _check_no_duplicate_experts(inputs, _expert_names(family, layers, 1), "expert 1")
    finally:
        _FILES.close()
    return _assemble_bar(
        inputs, family, layers, shared, weights, base, dict(overrides or {}), top_k, max_shard_size
    )


def _assemble_bar(
    inputs: Sequence[_Input],
    family: Family,
    layers: int,
    shared: str,
    weights: list[float] | None,
    base: _Input | None,
    overrides: dict[str, str],
    top_k: int | None,
    max_shard_size: int,
) -> MergePlan:
    first = inputs[0]
    groups = {name: family.tensor_group(name) for name in first.tensors}
    shared_names = sorted((n for n, g in groups.items() if g in SHARED_GROUPS), key=_natural_key)
    _validate_overrides(overrides, shared_names)
    vocab_rows = [inp.tensors["model.embed_tokens.weight"].rows for inp in inputs]
    vocab = _vocab_union(inputs, vocab_rows)
    tensors = [
        _shared_tensor(n, groups[n], _policy_for(n, shared, overrides), inputs, weights, base, vocab)
        for n in shared_names
    ]
    tensors += [_router_tensor(family.router_tensor_name(layer), inputs) for layer in range(layers)]
    tensors += _bar_expert_tensors(inputs, family, layers)
    tensors.sort(key=lambda t: _natural_key(t.name))
    experts = [ExpertEntry(0, "anchor", first.path, first.manifest)]
    experts += [ExpertEntry(k, inp.name, inp.path, inp.manifest) for k, inp in enumerate(inputs, start=1)]
    names = [inp.name for inp in inputs]
    added = [
        (vocab.prefix + j, tok, [names[i] for i, _ in owners]) for j, (tok, owners) in enumerate(vocab.added)
    ]
    return MergePlan(
        kind="bar",
        family=family,
        experts=experts,
        tensors=tensors,
        config_source=first.path,
        vocab_size=vocab.size,
        added_tokens=added,
        top_k=_resolve_top_k(top_k, len(experts)),
        policies={g: shared for g in SHARED_GROUPS} | {"expert": "copied", "router": "rows copied"},
        overrides=overrides,
        max_shard_size=max_shard_size,
        inputs=[inp.path for inp in inputs],
        base=base.path if base is not None else None,
        shared_weights=weights,
    )


# ---------------------------------------------------------------------------- writing
@dataclass(frozen=True)
class _Copy:
    """Output bytes that are one input's bytes: copied, never decoded."""

    source: Source
    writer: ShardWriter
    offset: int
    nbytes: int


@dataclass(frozen=True)
class _Combine:
    """Output rows computed from several inputs' rows (or generated, for a fresh router)."""

    tensor: OutTensor
    segment: Segment | None  # None: the tensor's ``generate``
    writer: ShardWriter
    offset: int


def _plan_jobs(shards: Sequence[tuple[ShardWriter, list[OutTensor]]]) -> tuple[list[_Copy], list[_Combine]]:
    """Split every output byte range into a copy or a combination, at its fixed file offset."""
    copies: list[_Copy] = []
    combos: list[_Combine] = []
    for writer, tensors in shards:
        for t in tensors:
            offset = writer.offsets[t.name]
            if t.generate is not None:
                combos.append(_Combine(t, None, writer, offset))
                continue
            for seg in t.segments:
                nbytes = seg.rows * seg.sources[0].info.row_bytes
                if len(seg.sources) == 1:
                    copies.append(_Copy(seg.sources[0], writer, offset, nbytes))
                else:
                    combos.append(_Combine(t, seg, writer, offset))
                offset += nbytes
    return copies, combos


def _run_copies(copies: Sequence[_Copy], bar: Any, stop: threading.Event) -> None:
    """Single sources (experts, router rows, one expert's new tokens): bit for bit, in the kernel."""
    for c in copies:
        if stop.is_set():
            return  # the other thread failed; its error is the one to report
        s = c.source
        _copy_range(s.info, s.row * s.info.row_bytes, c.writer.fd, c.offset, c.nbytes)
        c.writer.count(c.nbytes)
        bar.update(c.nbytes)


def _accumulator_dtype(storage: str) -> torch.dtype:
    """float64 for 32/64-bit storage (exact sums); float32 for 16-bit storage.

    A float32 sum of a few bf16/fp16 values keeps 24 significant bits against their 8 or 11,
    and the result is rounded once more to 16 bits: it equals the float64 mean rounded once
    except where that second rounding meets a tie, then it is 1 unit in the last place off.
    float32 halves the memory traffic of float64, which is what averaging costs.
    """
    import torch

    return torch.float64 if storage in ("F32", "F64") else torch.float32


def _combine(job: _Combine, stop: threading.Event, bar: Any) -> None:
    """Weighted mean of a segment's sources, chunk by chunk, rounded once to the storage dtype."""
    t, seg = job.tensor, job.segment
    if seg is None:
        assert t.generate is not None  # _plan_jobs made this job for a generated tensor
        job.writer.write_at(job.offset, _raw(t.generate()).numpy())
        bar.update(t.nbytes)
        return
    info0 = seg.sources[0].info
    acc_dtype, out_dtype = _accumulator_dtype(t.dtype), _torch_dtype(t.dtype)
    step = max(1, CHUNK_ELEMENTS // max(1, info0.row_elements))
    total = sum(s.weight for s in seg.sources)
    for a in range(0, seg.rows, step):
        if stop.is_set():
            return
        b = min(seg.rows, a + step)
        acc = read_rows(
            seg.sources[0].info, seg.sources[0].name, seg.sources[0].row + a, seg.sources[0].row + b
        )
        acc = acc.to(acc_dtype)
        if seg.sources[0].weight != 1.0:  # multiplying by 1 is exact: skip the pass
            acc.mul_(seg.sources[0].weight)
        for s in seg.sources[1:]:
            acc.add_(read_rows(s.info, s.name, s.row + a, s.row + b), alpha=s.weight)
        job.writer.write_at(job.offset + a * info0.row_bytes, _raw(acc.div_(total).to(out_dtype)).numpy())
        bar.update((b - a) * info0.row_bytes)


def _helper(
    prelude: Callable[[], object] | None, combos: Sequence[_Combine], bar: Any, stop: threading.Event
) -> None:
    """The helper thread: ``prelude`` (tokenizer and config files), then all combinations.

    The prelude spends seconds importing transformers; meanwhile the main thread copies, so
    the import costs no wall time. Combinations run with one torch thread: the other core
    is busy copying, and a thread pool on small chunks only adds waiting.
    """
    try:
        if prelude is not None:
            prelude()
        import torch

        torch.set_num_threads(1)
        for job in combos:
            if stop.is_set():
                return
            _combine(job, stop, bar)
    except BaseException:
        stop.set()
        raise


def _torch_dtype(name: str) -> torch.dtype:
    import torch

    table = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
    if name not in table:
        raise IncompatibleError(f"cannot average tensors of dtype {name}")
    return table[name]


def _storage_dtype(name: str) -> torch.dtype:
    """The torch dtype that views a safetensors dtype's bytes (integers included)."""
    import torch

    table = {"I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8}
    return table[name] if name in table else _torch_dtype(name)


def _shard_names(count: int) -> list[str]:
    if count == 1:
        return ["model.safetensors"]
    return [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]


def write_weights(
    plan: MergePlan, out: Path, *, progress: bool = True, prelude: Callable[[], object] | None = None
) -> None:
    """Write the plan's tensors as safetensors shards (and the index when sharded).

    Every shard's header is written first, which fixes every tensor's offset; then the main
    thread copies single-source byte ranges in the kernel while one helper thread runs
    ``prelude`` (work that does not need the weights) and computes the averaged ranges. Each
    thread writes at its own offsets, so neither waits for the other until the end.
    """
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    groups = plan.shards()
    names = _shard_names(len(groups))
    total = sum(t.nbytes for t in plan.tensors)
    bar = tqdm(total=total, unit="B", unit_scale=True, desc="merge", disable=not progress)
    writers: list[ShardWriter] = []
    stop = threading.Event()
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="barkit-merge")
    try:
        for fname, tensors in zip(names, groups, strict=True):
            writers.append(ShardWriter(out / fname, [(t.name, t.dtype, t.shape) for t in tensors]))
        copies, combos = _plan_jobs(list(zip(writers, groups, strict=True)))
        helper = pool.submit(_helper, prelude, combos, bar, stop)
        try:
            _run_copies(copies, bar, stop)
        except BaseException:
            stop.set()
            raise
        helper.result()
    except BaseException:
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
        for w in writers:
            w.close(complete=False)  # the folder is discarded; keep the original error
        _FILES.close()
        raise
    pool.shutdown(wait=True)
    _FILES.close()
    for w in writers:
        w.close()
    bar.close()
    if len(groups) > 1:
        weight_map = {t.name: fname for fname, ts in zip(names, groups, strict=True) for t in ts}
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        atomic_write_text(out / WEIGHTS_INDEX, json.dumps(index, indent=2) + "\n")


def _write_config(plan: MergePlan, out: Path, tokenizer: Any) -> None:
    """config.json and generation_config.json of the merged model, token ids from the tokenizer."""
    from transformers import AutoConfig, GenerationConfig

    config = AutoConfig.from_pretrained(plan.config_source)
    config.num_experts = len(plan.experts)  # both MoE classes map this name to their own field
    config.num_experts_per_tok = plan.top_k
    config.vocab_size = plan.vocab_size
    config.output_router_logits = False
    if tokenizer is not None:
        # mergekit-moe left pad_token_id disagreeing with the tokenizer; take the tokenizer's.
        for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
            value = getattr(tokenizer, key, None)
            if value is not None:
                setattr(config, key, value)
    config.save_pretrained(out)
    try:
        generation = GenerationConfig.from_pretrained(plan.config_source)
    except OSError:
        generation = GenerationConfig.from_model_config(config)
    for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
        setattr(generation, key, getattr(config, key, None))
    generation.save_pretrained(out)


def _write_tokenizer(plan: MergePlan, out: Path, specials: set[str]) -> Any:
    """The first input's tokenizer plus every token other experts added, at the planned ids."""
    if not (plan.config_source / "tokenizer.json").is_file():
        return None
    from tokenizers import AddedToken
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(plan.config_source)
    for new_id, token, _owners in plan.added_tokens:
        if token in tok.get_vocab():
            got = tok.convert_tokens_to_ids(token)
        elif token in specials:
            tok.add_special_tokens({"extra_special_tokens": [token]}, replace_extra_special_tokens=False)
            got = tok.convert_tokens_to_ids(token)
        else:
            tok.add_tokens([AddedToken(token, normalized=False)])
            got = tok.convert_tokens_to_ids(token)
        if got != new_id:
            raise IncompatibleError(
                f"{plan.config_source}: token {token!r} would get id {got}, planned {new_id}"
            )
    tok.save_pretrained(out)
    return tok


def _write_config_files(
    plan: MergePlan, out: Path, specials: set[str], write_config: Callable[[MergePlan, Path, Any], None]
) -> None:
    """Tokenizer first (config.json takes its special token ids from it), then the configs."""
    write_config(plan, out, _write_tokenizer(plan, out, specials))


def _merge_manifest(plan: MergePlan, seconds: float) -> dict[str, Any]:
    first = plan.experts[0].manifest
    inputs = [
        {"path": str(e.source), "domain": e.name, "fingerprint": e.manifest.get("fingerprint")}
        for e in plan.experts[1:]
    ]
    resolved = {
        "shared": plan.policies.get("embeddings"),
        "weights": plan.shared_weights,
        "overrides": plan.overrides,
        "top_k": plan.top_k,
        "base": str(plan.base) if plan.base else None,
    }
    return {
        "stage": "merge" if plan.kind == "bar" else "merge-btx",
        "experts": [e.name for e in plan.experts],
        "inputs": inputs,
        "base_fingerprint": first.get("base_fingerprint"),
        "config": resolved,
        "config_fingerprint": config_fingerprint(resolved, [i["fingerprint"] for i in inputs]),
        "shared_policy": resolved["shared"],
        "added_tokens": [{"id": i, "token": t, "from": o} for i, t, o in plan.added_tokens],
        "tokens": 0,
        "wall_time_s": round(seconds, 3),
    }


def execute(plan: MergePlan, out_dir: str | os.PathLike[str], *, progress: bool = True) -> dict[str, Any]:
    """Write a checked plan into ``out_dir`` atomically; returns the written manifest."""
    from barkit.modelcard import render_model_card

    start = time.perf_counter()
    specials: set[str] = set()
    for e in plan.experts:
        specials |= _read_vocab(e.source)[1]
    with atomic_dir(out_dir) as tmp:
        prelude = partial(_write_config_files, plan, tmp, specials, _write_config)
        write_weights(plan, tmp, progress=progress, prelude=prelude)
        manifest = write_manifest(tmp, _merge_manifest(plan, time.perf_counter() - start))
        atomic_write_text(tmp / "README.md", render_model_card(manifest, plan))
    return manifest


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


# ---------------------------------------------------------------------------- BTX
def _btx_router(
    name: str, experts: int, hidden: int, dtype: str, init: str, seed: int, std: float
) -> OutTensor:
    """A fresh router: seeded normal rows (or zeros), generated when written, not when planned."""

    def generate() -> torch.Tensor:
        import torch

        if init == "zeros":
            return torch.zeros(experts, hidden, dtype=_torch_dtype(dtype))
        gen = torch.Generator().manual_seed(seed)
        rows = torch.randn(experts, hidden, generator=gen, dtype=torch.float32) * std
        return rows.to(_torch_dtype(dtype))

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
    if not dense_dirs:
        raise IncompatibleError("merge needs at least one dense model folder")
    if router_init not in get_args(RouterInit):
        raise ConfigError(f"router_init {router_init!r}: not one of {', '.join(get_args(RouterInit))}")
    paths = [Path(p) for p in dense_dirs]
    _check_distinct_paths(paths)
    inputs = [_load_input(p, need_manifest=False) for p in paths]
    family = family_of(str(inputs[0].config.get("model_type")))
    for inp in inputs:
        if inp.config.get("model_type") not in family.dense_model_types:
            raise ArtifactError(
                f"{inp.path}: not a dense {family.name} model ({inp.config.get('model_type')})"
            )
    for inp in inputs[1:]:
        _check_same_config(inputs[0], inp)
        _check_same_tensors(inputs[0], inp, family)
    layers = int(inputs[0].config["num_hidden_layers"])
    mlp = [n for layer in range(layers) for n in family.dense_mlp_tensor_names(layer)]
    try:
        _check_no_duplicate_experts(inputs, mlp, "FFN")
    finally:
        _FILES.close()
    return _assemble_btx(inputs, family, layers, top_k, router_init, seed, max_shard_size)


def _assemble_btx(
    inputs: Sequence[_Input],
    family: Family,
    layers: int,
    top_k: int | None,
    router_init: str,
    seed: int,
    max_shard_size: int,
) -> MergePlan:
    first = inputs[0]
    vocab = _vocab_union(inputs, [inp.tensors["model.embed_tokens.weight"].rows for inp in inputs])
    tensors: list[OutTensor] = []
    for name in first.tensors:
        group = family.tensor_group(name)
        if group in SHARED_GROUPS:
            tensors.append(_shared_tensor(name, group, "mean", inputs, None, None, vocab))
    hidden = int(first.config["hidden_size"])
    std = float(first.config.get("initializer_range", 0.02))
    dtype = first.tensors["model.embed_tokens.weight"].dtype
    for layer in range(layers):
        router = family.router_tensor_name(layer)
        tensors.append(_btx_router(router, len(inputs), hidden, dtype, router_init, seed + layer, std))
        for k, inp in enumerate(inputs):
            pairs = zip(
                family.expert_tensor_names(layer, k), family.dense_mlp_tensor_names(layer), strict=True
            )
            tensors += [_copied(dst, inp.tensors[src], src, "expert", f"expert {k}") for dst, src in pairs]
    tensors.sort(key=lambda t: _natural_key(t.name))
    experts = [ExpertEntry(k, inp.name, inp.path, inp.manifest) for k, inp in enumerate(inputs)]
    return MergePlan(
        kind="btx",
        family=family,
        experts=experts,
        tensors=tensors,
        config_source=first.path,
        vocab_size=vocab.size,
        added_tokens=[
            (vocab.prefix + j, t, [inputs[i].name for i, _ in o]) for j, (t, o) in enumerate(vocab.added)
        ],
        top_k=_resolve_top_k(top_k, len(inputs)),
        policies={g: "mean" for g in SHARED_GROUPS} | {"expert": "FFN copied", "router": router_init},
        overrides={},
        max_shard_size=max_shard_size,
        inputs=[inp.path for inp in inputs],
    )


def _write_btx_config(plan: MergePlan, out: Path, tokenizer: Any) -> None:
    """The MoE config built by the family from the dense config (no field lost), then saved."""
    from transformers import AutoConfig, GenerationConfig

    dense = AutoConfig.from_pretrained(plan.config_source)
    config = plan.family.moe_config(dense, len(plan.experts), plan.top_k)
    config.vocab_size = plan.vocab_size
    config.architectures = [type(config).__name__.replace("Config", "ForCausalLM")]
    if tokenizer is not None:
        for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
            if getattr(tokenizer, key, None) is not None:
                setattr(config, key, getattr(tokenizer, key))
    config.save_pretrained(out)
    GenerationConfig.from_model_config(config).save_pretrained(out)


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
    from barkit.modelcard import render_model_card

    start = time.perf_counter()
    plan = plan_dense_btx(
        dense_dirs, top_k=top_k, router_init=router_init, seed=seed, max_shard_size=max_shard_size
    )
    with atomic_dir(out_dir) as tmp:
        prelude = partial(_write_config_files, plan, tmp, set(), _write_btx_config)
        write_weights(plan, tmp, progress=progress, prelude=prelude)
        manifest = write_manifest(tmp, _merge_manifest(plan, time.perf_counter() - start))
        atomic_write_text(tmp / "README.md", render_model_card(manifest, plan))
    return plan


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
