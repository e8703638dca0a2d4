"""safetensors I/O for the merge: headers, byte-range reads, kernel copies, pre-planned shards.

Inputs are read with ``pread`` at offsets from their headers, never mmapped: nothing of an
input stays mapped into the process (its pages live in the kernel's page cache only). The
descriptors belong to an :class:`InputFiles` that a merge opens and closes around its work.
"""

from __future__ import annotations

import errno
import json
import math
import os
import struct
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from barkit.errors import ArtifactError, IncompatibleError

if TYPE_CHECKING:
    import torch

WEIGHTS_INDEX = "model.safetensors.index.json"
# Elements per averaged chunk: small enough that the accumulator and the pieces being added
# stay in the CPU's cache (measured here: ~3x faster than 8M-element chunks), large enough
# that Python's per-chunk overhead is noise.
CHUNK_ELEMENTS = 1 << 18
COMPARE_CHUNK_BYTES = 16 << 20  # pieces compared by the checks (two of them in memory)
COPY_PIECE_BYTES = 256 << 20  # one kernel copy call; bounds how long a failure goes unseen
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1}


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
        return self.row_elements * DTYPE_BYTES[self.dtype]

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
        if entry.get("dtype") not in DTYPE_BYTES:
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


def torch_dtype(name: str) -> torch.dtype:
    """The floating torch dtype of a safetensors dtype; other dtypes cannot be averaged."""
    import torch

    table = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
    if name not in table:
        raise IncompatibleError(f"cannot average tensors of dtype {name}")
    return table[name]


def storage_dtype(name: str) -> torch.dtype:
    """The torch dtype that views a safetensors dtype's bytes (integers included)."""
    import torch

    table = {"I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8}
    return table[name] if name in table else torch_dtype(name)


def raw(t: torch.Tensor) -> torch.Tensor:
    """The bytes of a tensor as a flat uint8 tensor (bit identity, not value equality)."""
    import torch

    return t.contiguous().reshape(-1).view(torch.uint8)


class InputFiles:
    """Read-only descriptors of a merge's input files, shared by its threads; a context manager.

    Each file is opened on first use and every descriptor is closed on exit, so a merge holds
    no file open after it returns or fails.
    """

    def __init__(self) -> None:
        self._fds: dict[Path, int] = {}
        self._lock = threading.Lock()

    def __enter__(self) -> InputFiles:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

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

    def read_bytes(self, info: TensorInfo, start: int, nbytes: int) -> bytearray:
        """``nbytes`` raw bytes of a tensor's data from byte ``start`` (relative to the tensor)."""
        buf = bytearray(nbytes)
        view, fd, done = memoryview(buf), self.fd(info.file), 0
        try:
            while done < nbytes:
                got = os.preadv(fd, [view[done:]], info.offset + start + done)
                if got == 0:
                    raise OSError("unexpected end of file")
                done += got
        except OSError as e:
            raise ArtifactError(f"{info.file}: cannot read ({e})") from None
        return buf

    def read_rows(self, info: TensorInfo, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` of one tensor (``name`` is for messages), over fresh memory."""
        import torch

        data = self.read_bytes(info, start * info.row_bytes, (stop - start) * info.row_bytes)
        shape = (stop - start, *info.shape[1:]) if info.shape else ()
        if not data:
            return torch.empty(shape, dtype=storage_dtype(info.dtype))
        return torch.frombuffer(data, dtype=storage_dtype(info.dtype)).reshape(shape)

    def iter_chunks(
        self, info: TensorInfo, name: str, start: int = 0, rows: int | None = None
    ) -> Iterator[torch.Tensor]:
        """A tensor (or ``rows`` rows of it from ``start``) in chunks of about CHUNK_ELEMENTS."""
        rows = info.rows - start if rows is None else rows
        step = max(1, CHUNK_ELEMENTS // max(1, info.row_elements))
        for a in range(0, rows, step):
            yield self.read_rows(info, name, start + a, start + min(rows, a + step))

    def iter_raw(self, info: TensorInfo, chunk: int = COMPARE_CHUNK_BYTES) -> Iterator[bytearray]:
        """A tensor's raw bytes in pieces of at most ``chunk`` bytes."""
        for a in range(0, info.nbytes, chunk):
            yield self.read_bytes(info, a, min(chunk, info.nbytes - a))

    def first_mismatch(self, infos: Sequence[TensorInfo]) -> int | None:
        """Index of the first tensor not bit-identical to ``infos[0]``; None when all are.

        The first tensor is read once per piece and compared with every other (memcmp of bytes).
        """
        first = infos[0]
        for i, other in enumerate(infos[1:], start=1):
            if (other.dtype, other.shape) != (first.dtype, first.shape):
                return i
        for a in range(0, first.nbytes, COMPARE_CHUNK_BYTES):
            n = min(COMPARE_CHUNK_BYTES, first.nbytes - a)
            piece = self.read_bytes(first, a, n)
            for i, other in enumerate(infos[1:], start=1):
                if self.read_bytes(other, a, n) != piece:
                    return i
        return None

    def copy_range(self, src: TensorInfo, src_start: int, dst_fd: int, dst_offset: int, nbytes: int) -> None:
        """Copy bytes from an input file to an output file inside the kernel where it can.

        ``copy_file_range`` moves page-cache pages without a round trip through user space (and
        lets file systems that can share extents do so); where it is missing or refused, large
        ``pread``/``pwrite`` pieces do the same job.
        """
        src_fd, src_offset, done = self.fd(src.file), src.offset + src_start, 0
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


def iter_chunks(
    info: TensorInfo, name: str, start: int = 0, rows: int | None = None
) -> Iterator[torch.Tensor]:
    """:meth:`InputFiles.iter_chunks` on a file opened for this one tensor (tools, benchmarks)."""
    with InputFiles() as files:
        yield from files.iter_chunks(info, name, start, rows)


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
        offsets: dict[str, int] = {}
        for name, dtype, shape in tensors:
            nbytes = math.prod(shape) * DTYPE_BYTES[dtype]
            header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            offsets[name] = offset
            offset += nbytes
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)  # data must start 8-byte aligned
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(self.fd, struct.pack("<Q", len(blob)) + blob)
        start = 8 + len(blob)
        self.offsets = {k: v + start for k, v in offsets.items()}
        self._path = path
        self._written = 0
        self._next = start  # where ``write`` appends
        self._total = offset
        self._lock = threading.Lock()

    def write(self, data: torch.Tensor) -> None:
        """Append a tensor's bytes after the previous ``write``."""
        nbytes = data.numel() * data.element_size()
        self.write_at(self._next, raw(data).numpy())
        self._next += nbytes

    def write_at(self, offset: int, data: Any) -> None:
        """Write a bytes-like object at an absolute file offset."""
        view, done = memoryview(data).cast("B"), 0
        while done < len(view):
            done += os.pwrite(self.fd, view[done:], offset + done)
        self.count(done)

    def count(self, nbytes: int) -> None:
        """Record bytes written to this file by someone else (a kernel copy)."""
        with self._lock:
            self._written += nbytes

    def close(self, *, complete: bool = True) -> None:
        """Close the file; when ``complete``, check that every promised byte was written."""
        os.close(self.fd)
        if complete and self._written != self._total:
            raise ArtifactError(f"{self._path}: wrote {self._written} of {self._total} bytes")
