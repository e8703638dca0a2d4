"""Loading any barkit artifact: a transformers checkpoint or a stitched model.

This module sits above :mod:`barkit.modeling` (plain transformers checkpoints) and
:mod:`barkit.stitch` (which builds on modeling), so neither has to import the other's caller.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def load_model(
    path: str | os.PathLike[str], *, dtype: torch.dtype = torch.float32
) -> tuple[Any, PreTrainedTokenizerBase]:
    """A model folder and its tokenizer: stitched (``stitch.json``) or a transformers checkpoint.

    The model is a ``PreTrainedModel`` or, for a stitched folder, a ``StitchedCausalLM``.
    """
    if (Path(path) / "stitch.json").is_file():
        from barkit.stitch.store import load_stitched

        return load_stitched(path)
    from barkit.modeling import load_model as load_pretrained

    return load_pretrained(path, dtype=dtype)
