"""Artifact folders: atomic creation, the ``barkit.json`` manifest, fingerprints and the ledger.

Every stage writes one folder. It is built under a hidden temporary name beside its final
name and renamed into place only when complete, so an interrupted run never leaves a
half-written artifact under a name that a later run would trust.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from barkit.errors import ArtifactError

MANIFEST = "barkit.json"
LEDGER = "ledger.jsonl"
WEIGHT_SUFFIXES = (".safetensors",)
CONTENT_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "stitch.json")


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike[str], *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary folder that becomes ``final`` only if the block completes.

    On an exception the temporary folder is removed and ``final`` is untouched.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        if not overwrite:
            shutil.rmtree(tmp, ignore_errors=True)
            raise ArtifactError(f"{final}: already exists")
        trash = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
        final.rename(trash)
        tmp.rename(final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        tmp.rename(final)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write a file through a temporary sibling and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.write_text(text)
    os.replace(tmp, path)


def content_fingerprint(folder: str | os.PathLike[str]) -> str:
    """SHA-256 over the weights and the files that define the computation, in name order.

    Two folders with the same fingerprint compute the same function; the manifest itself is
    excluded so that metrics and wall times do not change the identity of a model.
    """
    folder = Path(folder)
    names = sorted(
        p.name for p in folder.iterdir() if p.name.endswith(WEIGHT_SUFFIXES) or p.name in CONTENT_FILES
    )
    if not names:
        raise ArtifactError(f"{folder}: no weights to fingerprint")
    return hash_files(folder, names)


def hash_files(root: str | os.PathLike[str], names: Iterable[str]) -> str:
    """SHA-256 over each file's name (relative to ``root``) and bytes, streamed, in the given order.

    Names enter the hash so that moving bytes from one file to another changes the result.
    """
    root = Path(root)
    h = hashlib.sha256()
    for name in names:
        h.update(name.encode())
        _hash_bytes(h, root / name)
    return h.hexdigest()[:16]


def file_fingerprint(path: str | os.PathLike[str]) -> str:
    """SHA-256 of one file's bytes (a dataset, a GGUF): renaming the file keeps its identity."""
    h = hashlib.sha256()
    _hash_bytes(h, Path(path))
    return h.hexdigest()[:16]


def _hash_bytes(h: Any, path: Path) -> None:
    # 4 MiB chunks: a multi-gigabyte checkpoint never sits in memory whole
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)


def config_fingerprint(*parts: Any) -> str:
    """Fingerprint of a stage's inputs: resolved config plus input fingerprints (JSON-able)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def write_manifest(folder: str | os.PathLike[str], manifest: dict[str, Any]) -> dict[str, Any]:
    """Write ``barkit.json``; fills ``fingerprint`` from the folder's content if absent."""
    folder = Path(folder)
    manifest = dict(manifest)
    manifest.setdefault("fingerprint", content_fingerprint(folder))
    manifest.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n")
    return manifest


def read_manifest(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """Read ``barkit.json`` from an artifact folder (ArtifactError if absent or corrupt)."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{folder}: not a barkit artifact (no {MANIFEST})")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{path}: corrupt manifest ({e.msg} at line {e.lineno})") from None
    if not isinstance(data, dict):
        raise ArtifactError(f"{path}: corrupt manifest (not an object)")
    return data


def require_model_dir(folder: str | os.PathLike[str]) -> Path:
    """Check that ``folder`` looks like a HF checkpoint; raise a one-line error otherwise."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ArtifactError(f"{folder}: no such model folder")
    if not (folder / "config.json").is_file():
        raise ArtifactError(f"{folder}: not a model folder (no config.json)")
    if not any(p.name.endswith(".safetensors") for p in folder.iterdir()):
        raise ArtifactError(f"{folder}: no safetensors weights")
    return folder


@contextlib.contextmanager
def step_lock(folder: str | os.PathLike[str], on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold an exclusive lock on building ``folder`` (a hidden ``.NAME.lock`` file beside it).

    Two processes sharing a run folder (one per seed, or a second one started in a different
    order) then never build the same step at once: the second waits, and finds it up to date.
    The lock is advisory (``flock``) and released when the holder exits, crashed or not. Where
    the platform has no ``flock`` it does nothing.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    final = Path(folder)
    final.parent.mkdir(parents=True, exist_ok=True)
    with open(final.parent / f".{final.name}.lock", "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def append_ledger(run_dir: str | os.PathLike[str], entry: dict[str, Any]) -> None:
    """Append one line to ``RUN/ledger.jsonl`` (what ran, tokens, seconds)."""
    path = Path(run_dir) / LEDGER
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(entry, sort_keys=True, default=str) + "\n")
        f.flush()
        os.fsync(f.fileno())
