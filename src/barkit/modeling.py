"""Dense model construction and checkpoint I/O.

barkit's models are plain transformers classes built from explicit configs, so every artifact
loads with ``AutoModelForCausalLM.from_pretrained`` and no remote code. Saving goes through
:func:`barkit.artifacts.atomic_dir`: a folder appears under its name only once weights,
config, generation config, tokenizer and manifest are all written.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from barkit.artifacts import atomic_dir, require_model_dir, write_manifest
from barkit.errors import ArtifactError, BarkitError
from barkit.families import expert_count
from barkit.presets import ModelPreset

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

Arch = Literal["olmo2", "llama"]
ARCHES: tuple[Arch, ...] = ("olmo2", "llama")
ROPE_THETA = 10_000.0
RMS_NORM_EPS = 1e-6
# MoE layers: "batched_mm" gathers one weight copy per routed token and ran out of memory here
# (and was 10x slower on a micro Mixtral). "eager" and "grouped_mm" gave identical logits and the
# same training throughput within noise on CPU (2.5-3.0k tokens per CPU-second for a tiny
# Mixtral/FlexOlmo with 2 and 5 experts); eager is the reference loop and has no alignment
# requirements on memory-mapped weights, so it is the one chosen.
CPU_EXPERTS_IMPLEMENTATION = "eager"


def _dense_config(arch: Arch, preset: ModelPreset, tokenizer: PreTrainedTokenizerBase) -> Any:
    from transformers import LlamaConfig, Olmo2Config

    fields: dict[str, Any] = dict(
        vocab_size=len(tokenizer),
        hidden_size=preset.hidden_size,
        intermediate_size=preset.intermediate_size,
        num_hidden_layers=preset.num_layers,
        num_attention_heads=preset.num_heads,
        num_key_value_heads=preset.num_kv_heads,
        max_position_embeddings=preset.max_seq_len,
        rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA},
        rms_norm_eps=RMS_NORM_EPS,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        # Untied: the expert SFT stage trains the LM head separately from the embeddings, and
        # merging averages them separately.
        tie_word_embeddings=False,
    )
    if arch == "olmo2":
        return Olmo2Config(**fields)
    if arch == "llama":
        return LlamaConfig(**fields)
    raise BarkitError(f"unknown architecture {arch!r}; expected one of {', '.join(ARCHES)}")


def generation_config_for(tokenizer: PreTrainedTokenizerBase) -> Any:
    """Greedy decoding that stops at ``</s>`` and pads with ``<pad>``."""
    from transformers import GenerationConfig

    return GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
    )


def build_dense(
    arch: Arch, preset: ModelPreset, tokenizer: PreTrainedTokenizerBase, seed: int
) -> PreTrainedModel:
    """A freshly initialised dense OLMo-2 or Llama model shaped by ``preset`` (float32).

    The vocabulary is the tokenizer's actual length, which can fall short of the preset's
    target when the training text has fewer distinct merges.
    """
    from transformers import LlamaForCausalLM, Olmo2ForCausalLM

    config = _dense_config(arch, preset, tokenizer)
    cls = Olmo2ForCausalLM if arch == "olmo2" else LlamaForCausalLM
    # A private RNG stream: building a model must not shift the caller's random state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls(config)
    model.generation_config = generation_config_for(tokenizer)
    return model.float()


def _read_config(folder: Path) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(folder)
    except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{folder}: unreadable model config ({_first_line(e)})") from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"


def load_model(
    path: str | os.PathLike[str], *, dtype: torch.dtype = torch.float32
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a transformers checkpoint folder (no remote code) and its tokenizer.

    A folder whose weights do not match its config (missing, extra or mis-shaped tensors) is
    refused instead of being silently filled with fresh random weights. A stitched model
    (Branch-Train-Stitch) has no transformers class: :func:`barkit.loader.load_model` loads
    any barkit artifact, stitched ones included.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    if (Path(path) / "stitch.json").is_file():
        raise ArtifactError(f"{path}: a stitched model; load it with barkit.loader.load_model")
    hf_logging.disable_progress_bar()

    folder = require_model_dir(path)
    config = _read_config(folder)
    kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": False, "output_loading_info": True}
    if expert_count(config) > 1:
        kwargs["experts_implementation"] = CPU_EXPERTS_IMPLEMENTATION
    try:
        loaded: Any = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    except Exception as e:  # transformers/safetensors raise many types for a damaged folder
        raise ArtifactError(f"{folder}: cannot load model ({_first_line(e)})") from None
    model, info = loaded
    problems = {k: v for k, v in info.items() if k != "error_msgs" and v}
    if problems or info.get("error_msgs"):
        detail = "; ".join(f"{k}: {sorted(map(str, v))[:3]}" for k, v in problems.items())
        raise ArtifactError(f"{folder}: weights do not match config ({detail or info['error_msgs'][0]})")
    model.eval()
    return model, tokenizer


def save_tokenizer(tokenizer: PreTrainedTokenizerBase, folder: str | os.PathLike[str]) -> None:
    """Write ``tokenizer.json`` + ``tokenizer_config.json``, chat template inside the config.

    The template goes into ``tokenizer_config.json`` (not a separate ``.jinja`` file) so that
    the artifact fingerprint, which covers that file, changes when the template does.
    """
    tokenizer.save_pretrained(folder, save_jinja_files=False)


def save_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    out_dir: str | os.PathLike[str],
    manifest: dict[str, Any],
    *,
    extra: Callable[[Path], None] | None = None,
) -> dict[str, Any]:
    """Write a complete artifact folder atomically; returns the manifest with its fingerprint.

    ``extra(folder)`` writes further files (plots) into the folder before it appears.
    """
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # transformers' per-shard bar: barkit shows its own progress
    if model.generation_config is None or model.generation_config.eos_token_id is None:
        model.generation_config = generation_config_for(tokenizer)
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        save_tokenizer(tokenizer, tmp)
        if extra is not None:
            extra(tmp)
        written = write_manifest(tmp, manifest)
    return written
