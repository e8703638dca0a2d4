"""A merge's inputs, read just enough to plan, and every check that they belong together.

Checks run before anything is written: branches of one base, bit-identical anchors, matching
configs and shapes, no expert given twice. Each refusal names the offending input folder.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from barkit.artifacts import content_fingerprint, read_manifest, require_model_dir
from barkit.errors import ArtifactError, IncompatibleError
from barkit.families import Family, expert_count, family_of
from barkit.merge.io import InputFiles, TensorInfo, tensor_index

VOCAB_GROUPS = ("embeddings", "lm_head")

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


@dataclass
class Input:
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


def read_vocab(folder: Path) -> tuple[list[str | None] | None, set[str]]:
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


def load_input(folder: str | os.PathLike[str], *, need_manifest: bool) -> Input:
    path = require_model_dir(folder)
    try:
        config = json.loads((path / "config.json").read_text())
    except ValueError as e:
        raise ArtifactError(f"{path / 'config.json'}: corrupt config ({e})") from None
    manifest = read_manifest(path) if need_manifest else _optional_manifest(path)
    vocab, special = read_vocab(path)
    return Input(path, config, manifest, tensor_index(path), vocab, special)


def _optional_manifest(path: Path) -> dict[str, Any]:
    try:
        return read_manifest(path)
    except ArtifactError:
        return {}


def load_inputs(dirs: Sequence[str | os.PathLike[str]], *, need_manifest: bool, what: str) -> list[Input]:
    """Load distinct input folders (``what`` names them in the refusal of an empty list)."""
    if not dirs:
        raise IncompatibleError(f"merge needs at least one {what}")
    paths = [Path(p) for p in dirs]
    check_distinct_paths(paths)
    return [load_input(p, need_manifest=need_manifest) for p in paths]


def check_branch(inp: Input) -> Family:
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
    experts = expert_count(inp.config)
    if experts != 2:
        raise ArtifactError(f"{inp.path}: not a barkit branch ({experts} experts, a branch has 2)")
    return family


def check_dense(inp: Input, family: Family) -> None:
    if inp.config.get("model_type") not in family.dense_model_types:
        raise ArtifactError(f"{inp.path}: not a dense {family.name} model ({inp.config.get('model_type')})")


def check_same_base(first: Input, other: Input) -> None:
    if other.manifest["base_fingerprint"] != first.manifest["base_fingerprint"]:
        raise IncompatibleError(
            f"{other.path}: grown from base {other.manifest['base_fingerprint']}, "
            f"not {first.manifest['base_fingerprint']} like {first.path}"
        )


def check_same_config(first: Input, other: Input) -> None:
    keys = (set(first.config) | set(other.config)) - _CONFIG_KEYS_FREE
    for key in sorted(keys):
        if first.config.get(key) != other.config.get(key):
            raise IncompatibleError(
                f"{other.path}: config {key}={other.config.get(key)!r} differs from "
                f"{first.config.get(key)!r} in {first.path}"
            )


def check_same_tensors(first: Input, other: Input, family: Family) -> None:
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


def check_alike(inputs: Sequence[Input], family: Family) -> None:
    """Every input has the first one's config and tensors."""
    for inp in inputs[1:]:
        check_same_config(inputs[0], inp)
        check_same_tensors(inputs[0], inp, family)


def check_distinct_paths(paths: Sequence[Path]) -> None:
    seen: dict[Path, Path] = {}
    for p in paths:
        key = p.resolve()
        if key in seen:
            raise IncompatibleError(f"{p}: given twice (the same expert would be merged twice)")
        seen[key] = p


def expert_names(family: Family, layers: int, expert: int) -> list[str]:
    return [n for layer in range(layers) for n in family.expert_tensor_names(layer, expert)]


def _digest(files: InputFiles, inp: Input, names: Sequence[str]) -> str:
    h = hashlib.sha256()
    for name in names:
        for piece in files.iter_raw(inp.tensors[name]):
            h.update(piece)
    return h.hexdigest()


def check_no_duplicate_experts(
    files: InputFiles, inputs: Sequence[Input], names: Sequence[str], label: str
) -> None:
    """Refuse two inputs whose expert tensors are identical by content.

    Hashing the first layer screens all pairs cheaply; only colliding pairs are compared in
    full, so the check reads the experts twice only when a duplicate is likely.
    """
    first_layer = names[:3]
    seen: dict[str, Input] = {}
    for inp in inputs:
        key = _digest(files, inp, first_layer)
        other = seen.get(key)
        if other is not None and all(
            files.first_mismatch([other.tensors[n], inp.tensors[n]]) is None for n in names
        ):
            raise IncompatibleError(
                f"{inp.path}: its {label} is identical to that of {other.path} (the same expert given twice)"
            )
        seen.setdefault(key, inp)


def check_anchors(files: InputFiles, inputs: Sequence[Input], family: Family, layers: int) -> None:
    """Every input's expert 0 and router row 0 must be bit-identical to the first input's.

    Raw bytes are compared (memcmp); the first input's pieces are read once for all others.
    """
    first = inputs[0]
    for name in expert_names(family, layers, 0):
        bad = files.first_mismatch([inp.tensors[name] for inp in inputs])
        if bad is not None:
            raise IncompatibleError(f"{inputs[bad].path}: anchor tensor {name} differs from {first.path}")
    for layer in range(layers):
        name = family.router_tensor_name(layer)
        row0 = files.read_bytes(first.tensors[name], 0, first.tensors[name].row_bytes)
        for inp in inputs[1:]:
            if files.read_bytes(inp.tensors[name], 0, inp.tensors[name].row_bytes) != row0:
                raise IncompatibleError(f"{inp.path}: anchor router row {name}[0] differs from {first.path}")


def check_base(base: Input, fingerprint: str) -> None:
    """A policy's base must be the base the branches came from."""
    known = {base.manifest.get("fingerprint"), content_fingerprint(base.path)}
    if fingerprint not in known:
        raise IncompatibleError(f"{base.path}: not the base of these branches (they name base {fingerprint})")
