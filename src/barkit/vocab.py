"""Adding special tokens to a model and its tokenizer (the tool expert's ``<tool_call>`` pair).

New rows of the input embedding and of the LM head start at the mean of the existing rows.
A random row would give the new token an arbitrary, often large logit; a zero row makes it
indistinguishable from nothing. The mean is the row the model already treats as "an average
token", so SFT starts from a sensible point and the rest of the vocabulary is untouched.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from barkit.errors import BarkitError


def add_special_tokens(model: Any, tokenizer: Any, tokens: Sequence[str]) -> list[int]:
    """Add ``tokens`` as special tokens, grow the embeddings and LM head, and return their ids.

    Tokens already in the vocabulary keep their ids and rows (calling this twice changes
    nothing the second time). Only rows of ids that did not exist before are initialised,
    to the mean of the rows that did, separately for the input embedding and the LM head.
    """
    tokens = list(dict.fromkeys(tokens))
    for token in tokens:
        if not isinstance(token, str) or not token:
            raise BarkitError(f"special token {token!r}: must be a non-empty string")
    old_rows = int(model.get_input_embeddings().weight.shape[0])
    old_vocab = tokenizer.get_vocab()
    # A token the BPE already learned as an ordinary piece keeps its id and row, but is still
    # registered as special so that it is never split or merged with its neighbours.
    unregistered = [t for t in tokens if t not in tokenizer.get_added_vocab()]
    if unregistered:
        tokenizer.add_special_tokens(
            {"extra_special_tokens": unregistered}, replace_extra_special_tokens=False
        )
    ids = [int(tokenizer.convert_tokens_to_ids(t)) for t in tokens]
    fresh = [i for t, i in zip(tokens, ids, strict=True) if t not in old_vocab]
    if fresh:
        rows = max(old_rows, len(tokenizer), max(fresh) + 1)
        if rows > old_rows:
            # transformers' own mean_resizing samples around the mean; we set the mean below.
            model.resize_token_embeddings(rows, mean_resizing=False)
        _init_rows_to_mean(model, fresh, old_rows)
    return ids


def _init_rows_to_mean(model: Any, fresh: list[int], old_rows: int) -> None:
    """Set rows ``fresh`` of the token matrices to the mean of the other pre-existing rows.

    A fresh id can fall inside ``old_rows`` when the matrix was padded past the tokenizer;
    such a padding row was never trained, so it is reset like a newly grown one.
    """
    keep = torch.ones(old_rows, dtype=torch.bool)
    keep[[i for i in fresh if i < old_rows]] = False
    index = torch.tensor(fresh, dtype=torch.long)
    head = model.get_output_embeddings()
    matrices = [model.get_input_embeddings().weight]
    if head is not None and head.weight is not matrices[0]:
        matrices.append(head.weight)
    with torch.no_grad():
        for weight in matrices:
            mean = weight[:old_rows][keep].float().mean(dim=0)
            weight[index] = mean.to(weight.dtype)
        bias = getattr(head, "bias", None)
        if bias is not None:
            bias[index] = bias[:old_rows][keep].float().mean().to(bias.dtype)
