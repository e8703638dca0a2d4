"""``barkit import``: a GGUF model (llama.cpp's format) as a plain Hugging Face folder.

transformers reads a GGUF through ``from_pretrained(folder, gguf_file=name)``: it maps the
metadata to a config, builds the tokenizer (with the chat template the file carries) and
dequantizes every tensor to float32. The model it returns still carries the GGUF quantizer,
and ``save_pretrained`` refuses it. So the import builds a fresh model of the same class from
the config without its ``quantization_config``, loads the dequantized state dict into it,
re-ties the embeddings when the file had no separate output matrix, and saves that like any
other barkit artifact (atomically, with ``barkit.json``). The result loads with plain
``AutoModelForCausalLM.from_pretrained`` and works with every barkit command.

Dequantized weights are exact float32 values of the quantized ones; ``dtype`` may halve the
folder (bfloat16, float16) at the cost of rounding them.
"""

from __future__ import annotations

import copy
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from barkit.artifacts import file_fingerprint
from barkit.errors import ArtifactError, ConfigError, IncompatibleError
from barkit.modeling import _first_line, save_model

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

GGUF_MAGIC = b"GGUF"
DTYPES = ("float32", "bfloat16", "float16")


def import_gguf(
    path: str | os.PathLike[str], out: str | os.PathLike[str], *, dtype: str = "float32"
) -> dict[str, Any]:
    """Write the GGUF model at ``path`` to ``out`` as an HF folder; returns the manifest."""
    start = time.perf_counter()
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    path = check_gguf_file(path)
    config = read_config(path)
    tokenizer = _load_tokenizer(path)
    model = plain_model(load_gguf_model(path), dtype)
    manifest = {
        "stage": "import",
        "model_type": config.model_type,
        "source": path.name,
        "config": {"dtype": dtype},
        "inputs": [{"path": str(path.resolve()), "fingerprint": file_fingerprint(path)}],
        "tied_embeddings": tied(model),
        "chat_template": bool(tokenizer.chat_template),
        "parameters": sum(p.numel() for p in model.parameters()),
        "tokens": 0,
        "wall_time_s": round(time.perf_counter() - start, 3),
    }
    return save_model(model, tokenizer, out, manifest)


def check_gguf_file(path: str | os.PathLike[str]) -> Path:
    """``path`` if it is a readable file that starts with the GGUF magic bytes."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: no such GGUF file")
    with open(path, "rb") as f:
        magic = f.read(len(GGUF_MAGIC))
    if magic != GGUF_MAGIC:
        raise ArtifactError(f"{path}: not a GGUF file (it does not start with {GGUF_MAGIC!r})")
    return path


def read_config(path: Path) -> Any:
    """The model config the GGUF's metadata describes; one line for an architecture transformers lacks."""
    from transformers import AutoConfig
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    try:
        return AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
    except ValueError as e:
        if "architecture" in str(e) and "not supported" in str(e):
            supported = ", ".join(sorted(GGUF_SUPPORTED_ARCHITECTURES))
            raise IncompatibleError(f"{path}: {_first_line(e)} (transformers reads: {supported})") from None
        raise ArtifactError(f"{path}: unreadable GGUF metadata ({_first_line(e)})") from None
    except Exception as e:  # the GGUF reader raises many types for a damaged file
        raise ArtifactError(f"{path}: unreadable GGUF metadata ({_first_line(e)})") from None


def load_gguf_model(path: Path) -> PreTrainedModel:
    """The model as transformers loads it from the GGUF: dequantized, still marked as quantized."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        model: PreTrainedModel = AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, trust_remote_code=False
        )
    except Exception as e:  # as above: a damaged tensor section fails in many ways
        raise ArtifactError(f"{path}: cannot load GGUF weights ({_first_line(e)})") from None
    return model.eval()


def plain_model(loaded: PreTrainedModel, dtype: str = "float32") -> PreTrainedModel:
    """A model of the same class and weights without the GGUF quantizer, so it can be saved."""
    import torch
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(loaded.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain: PreTrainedModel = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    result = plain.load_state_dict(loaded.state_dict(), strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ArtifactError(
            f"GGUF weights do not fit {type(plain).__name__}: missing {result.missing_keys[:3]}, "
            f"unexpected {result.unexpected_keys[:3]}"
        )
    plain.tie_weights()  # the loaded lm_head tensor replaced the tied one; one tensor again
    plain.generation_config = copy.deepcopy(loaded.generation_config)
    return plain.to(getattr(torch, dtype)).eval()


def tied(model: PreTrainedModel) -> bool:
    """Whether the output projection is the input embedding matrix itself."""
    output = model.get_output_embeddings()
    return output is not None and output.weight is model.get_input_embeddings().weight


def _load_tokenizer(path: Path) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    try:
        tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(
            path.parent, gguf_file=path.name, trust_remote_code=False
        )
    except Exception as e:  # a tokenizer type transformers cannot rebuild, or damaged metadata
        raise ArtifactError(f"{path}: cannot build its tokenizer ({_first_line(e)})") from None
    return tokenizer
