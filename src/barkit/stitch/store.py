"""Stitched-model folders: ``stitch.safetensors`` + ``stitch.json``, with the seed and experts by reference.

A stitched folder holds only what stitching created: the stitch parameters (safetensors), the
``stitch.json`` config that names the seed and every expert by absolute path *and* content
fingerprint, a copy of the seed's ``config.json`` and tokenizer (so that barkit's commands can
check the folder and tokenize without opening the seed), and ``barkit.json``. Loading re-reads
the seed and experts from their paths and refuses any whose content changed since stitching:
the stitches were trained against those exact weights.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from barkit.artifacts import atomic_dir, content_fingerprint, write_manifest
from barkit.errors import ArtifactError, IncompatibleError

if TYPE_CHECKING:
    from barkit.stitch.layers import StitchedCausalLM

STITCH_CONFIG = "stitch.json"
STITCH_WEIGHTS = "stitch.safetensors"
FORMAT = 1
# Config fields that fix the computation and the shapes the stitches are built for.
_SHAPE_FIELDS = (
    "model_type",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "intermediate_size",
    "head_dim",
    "hidden_act",
    "rope_parameters",
    "rms_norm_eps",
    "attention_bias",
    "mlp_bias",
)


@dataclass
class Source:
    """A frozen sub-model referenced by a stitched folder."""

    path: str
    fingerprint: str
    name: str = "seed"
    domain: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "domain": self.domain, "path": self.path, "fingerprint": self.fingerprint}


@dataclass
class StitchSpec:
    """The content of ``stitch.json``."""

    every: int
    seed: Source
    experts: list[Source] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "every": self.every,
            "seed": self.seed.to_json(),
            "experts": [e.to_json() for e in self.experts],
        }

    @classmethod
    def read(cls, folder: Path) -> StitchSpec:
        path = folder / STITCH_CONFIG
        if not path.is_file():
            raise ArtifactError(f"{folder}: not a stitched model (no {STITCH_CONFIG})")
        try:
            data = json.loads(path.read_text())
            if data.get("format") != FORMAT:
                raise ArtifactError(f"{path}: unknown format {data.get('format')!r} (expected {FORMAT})")
            experts = [Source(**e) for e in data["experts"]]
            return cls(int(data["every"]), Source(**data["seed"]), experts)
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as e:
            raise ArtifactError(f"{path}: corrupt stitch config ({type(e).__name__}: {e})") from None


def reference(folder: str | os.PathLike[str], name: str = "seed", domain: str | None = None) -> Source:
    """A :class:`Source` for ``folder``: its absolute path and its current content fingerprint."""
    resolved = Path(folder).resolve()
    return Source(str(resolved), content_fingerprint(resolved), name, domain)


def verify(source: Source, stitched: Path) -> Path:
    """The source's folder, after checking it still exists and still has the fingerprint recorded."""
    what = "seed" if source.name == "seed" else f"expert {source.name!r}"
    folder = Path(source.path)
    if not folder.is_dir():
        raise ArtifactError(f"{stitched}: {what} is missing (expected at {folder})")
    try:
        now = content_fingerprint(folder)
    except ArtifactError:
        now = "no weights"
    if now != source.fingerprint:
        raise ArtifactError(
            f"{stitched}: {what} at {folder} changed since stitching (fingerprint {now}, expected {source.fingerprint})"
        )
    return folder


def check_compatible(hub_config: Any, config: Any, what: str) -> None:
    """Refuse an expert whose architecture or shapes differ from the seed's."""
    from barkit.families import expert_count

    if expert_count(config) > 1:
        raise IncompatibleError(f"{what}: a mixture-of-experts model; stitching needs dense experts")
    for key in _SHAPE_FIELDS:
        mine, theirs = getattr(hub_config, key, None), getattr(config, key, None)
        if mine != theirs:
            raise IncompatibleError(f"{what}: {key}={theirs!r} differs from the seed's {mine!r}")
    if int(config.vocab_size) < int(hub_config.vocab_size):
        raise IncompatibleError(f"{what}: vocabulary of {config.vocab_size} is smaller than the seed's")


def check_tokenizer(hub_tokenizer: Any, tokenizer: Any, what: str) -> None:
    """The seed's token ids must mean the same in the expert (experts may add tokens after them)."""
    theirs = tokenizer.get_vocab()
    for token, index in hub_tokenizer.get_vocab().items():
        if theirs.get(token) != index:
            raise IncompatibleError(
                f"{what}: token {token!r} has id {theirs.get(token)} there, {index} in the seed"
            )


def save_stitched(
    model: StitchedCausalLM,
    tokenizer: Any,
    spec: StitchSpec,
    out_dir: str | os.PathLike[str],
    manifest: dict[str, Any],
) -> dict[str, Any]:
    """Write a stitched folder atomically; returns the manifest with its fingerprint."""
    from safetensors.torch import save_file

    from barkit.modeling import generation_config_for, save_tokenizer

    tensors = {k: v.detach().cpu().contiguous() for k, v in model.stitches.state_dict().items()}
    with atomic_dir(out_dir) as tmp:
        save_file(tensors, str(tmp / STITCH_WEIGHTS), metadata={"format": "pt"})
        (tmp / STITCH_CONFIG).write_text(json.dumps(spec.to_json(), indent=2) + "\n")
        model.config.save_pretrained(tmp)
        generation_config_for(tokenizer).save_pretrained(tmp)
        save_tokenizer(tokenizer, tmp)
        written = write_manifest(tmp, manifest)
    return written


def is_stitched(path: str | os.PathLike[str]) -> bool:
    return (Path(path) / STITCH_CONFIG).is_file()


def load_stitched(
    path: str | os.PathLike[str], *, without: Sequence[str] = ()
) -> tuple[StitchedCausalLM, Any]:
    """Load a stitched folder: seed and experts from their recorded paths (checked), stitches from disk.

    Experts named in ``without`` are left out with their stitches and need not exist any more
    (removing an expert whose folder is gone must still work).
    """
    from barkit.modeling import load_model
    from barkit.stitch.layers import StitchedCausalLM

    folder = Path(path)
    if not folder.is_dir():
        raise ArtifactError(f"{folder}: no such model folder")
    spec = StitchSpec.read(folder)
    hub, tokenizer = load_model(verify(spec.seed, folder))
    experts = {e.name: load_model(verify(e, folder))[0] for e in spec.experts if e.name not in without}
    model = StitchedCausalLM(hub, experts, spec.every)
    _load_stitch_weights(model, folder / STITCH_WEIGHTS, without)
    model.eval()
    return model, tokenizer


def _load_stitch_weights(model: StitchedCausalLM, path: Path, without: Sequence[str]) -> None:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except (OSError, SafetensorError) as e:
        raise ArtifactError(f"{path}: unreadable stitch weights ({e})") from None
    dropped = tuple(f"experts.{name}." for name in without)
    tensors = {k: v for k, v in tensors.items() if not (dropped and k.startswith(dropped))}
    mine = model.stitches.state_dict()
    if set(tensors) != set(mine) or any(tensors[k].shape != mine[k].shape for k in mine):
        extra, missing = sorted(set(tensors) - set(mine))[:2], sorted(set(mine) - set(tensors))[:2]
        raise ArtifactError(
            f"{path}: stitch weights do not match stitch.json (extra {extra}, missing {missing})"
        )
    model.stitches.load_state_dict(tensors, strict=True)
