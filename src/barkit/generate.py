"""Batched greedy decoding with a KV cache.

Written against the HF-style forward ``model(input_ids, attention_mask, past_key_values,
use_cache)`` returning ``.logits`` and ``.past_key_values``, so any barkit model class with that
interface works, dense or MoE. Position ids and ``logits_to_keep`` are passed only where the
forward accepts them. A hand loop rather than ``model.generate``: on the micro and tiny models
the per-step overhead of ``generate`` (logits processors, stopping criteria, cache setup)
dominated, and the hand loop was faster (numbers in the helper report).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from barkit.errors import BarkitError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

Prompt = Sequence[dict[str, str]] | str


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: Prompt, *, raw: bool = False) -> list[int]:
    """Token ids for one prompt: a chat (list of messages) or a string.

    A string is one user turn, unless ``raw`` is set: then it is plain text after ``<s>``, for
    continuing text rather than answering a request. A chat is rendered with the tokenizer's
    own chat template, so a user's model (SmolLM2, Qwen3, ...) is prompted the way it was
    trained; for barkit's tokenizer that gives the same ids as :func:`barkit.tokenizer.prompt_ids`.
    """
    from barkit.userdata import encode_prompt as encode_chat_prompt

    if isinstance(prompt, str):
        if raw:
            ids: list[int] = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
            return [*bos, *ids]
        prompt = [{"role": "user", "content": prompt}]
    return encode_chat_prompt(tokenizer, list(prompt))


def _accepts(model: Any) -> set[str]:
    return set(inspect.signature(model.forward).parameters)


def _left_pad(batch: Sequence[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(ids) for ids in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, ids in enumerate(batch):
        input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
        mask[row, width - len(ids) :] = 1
    return input_ids, mask


class _Stepper:
    """One forward call per decoding step, with or without a KV cache."""

    def __init__(self, model: Any, use_cache: bool) -> None:
        self.model = model
        self.use_cache = use_cache
        accepted = _accepts(model)
        self.pass_positions = "position_ids" in accepted
        self.pass_keep = "logits_to_keep" in accepted
        self.past: Any = None

    def __call__(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Next-token logits for every row, given the whole sequence so far and its mask."""
        # With left padding, real tokens must still count positions from 0, else a padded row
        # would see different rotary angles than the same prompt decoded alone.
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        kwargs: dict[str, Any] = {"attention_mask": mask, "use_cache": self.use_cache}
        if self.use_cache and self.past is not None:
            input_ids, positions = input_ids[:, -1:], positions[:, -1:]
            kwargs["past_key_values"] = self.past
        if self.pass_positions:
            kwargs["position_ids"] = positions
        if self.pass_keep:
            kwargs["logits_to_keep"] = 1
        out = self.model(input_ids=input_ids, **kwargs)
        if self.use_cache:
            self.past = out.past_key_values
        logits: torch.Tensor = out.logits[:, -1, :]
        return logits


def greedy_batch(
    model: Any,
    batch: Sequence[list[int]],
    *,
    max_new_tokens: int,
    eos_id: int,
    pad_id: int,
    use_cache: bool = True,
) -> list[list[int]]:
    """Greedy continuations of ``batch`` (token ids), each cut after its first ``eos_id``."""
    input_ids, mask = _left_pad(batch, pad_id)
    step = _Stepper(model, use_cache)
    finished = torch.zeros(len(batch), dtype=torch.bool)
    new_tokens: list[torch.Tensor] = []
    for _ in range(max_new_tokens):
        token = step(input_ids, mask).argmax(-1)
        token = torch.where(finished, torch.full_like(token, pad_id), token)
        new_tokens.append(token)
        finished |= token == eos_id
        if bool(finished.all()):
            break
        input_ids = torch.cat([input_ids, token[:, None]], dim=1)
        # Finished rows keep decoding pad tokens (discarded later); their mask stays 1 so that
        # every row grows alike.
        mask = torch.cat([mask, torch.ones_like(token)[:, None]], dim=1)
    if not new_tokens:
        return [[] for _ in batch]
    generated = torch.stack(new_tokens, dim=1).tolist()
    return [_cut_at(row, eos_id) for row in generated]


def _cut_at(row: list[int], eos_id: int) -> list[int]:
    return row[: row.index(eos_id) + 1] if eos_id in row else row


def decode_completion(tokenizer: PreTrainedTokenizerBase, ids: Sequence[int]) -> str:
    """Completion text without ``<s>``, ``</s>`` and ``<pad>``, keeping added tokens such as
    ``<tool_call>`` that a verifier needs to see."""
    drop = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}
    return str(tokenizer.decode([i for i in ids if i not in drop], skip_special_tokens=False))


def generate(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Prompt],
    *,
    max_new_tokens: int,
    batch_size: int,
    progress: bool = False,
    raw: bool = False,
    use_cache: bool = True,
) -> list[str]:
    """Greedy completions of ``prompts``, in order, without the prompt or special tokens.

    Prompts are sorted by length before batching so that batches carry little padding; the
    result is the same as decoding each prompt alone.
    """
    from tqdm.auto import tqdm

    if batch_size < 1 or max_new_tokens < 0:
        raise BarkitError(
            f"batch_size must be >= 1 and max_new_tokens >= 0 (got {batch_size}, {max_new_tokens})"
        )
    encoded = [encode_prompt(tokenizer, p, raw=raw) for p in prompts]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    results: list[str] = [""] * len(encoded)
    was_training = getattr(model, "training", False)
    model.eval()
    try:
        with torch.inference_mode():
            starts = range(0, len(order), batch_size)
            for start in tqdm(starts, desc="generate", unit="batch", disable=not progress):
                chunk = order[start : start + batch_size]
                outputs = greedy_batch(
                    model,
                    [encoded[i] for i in chunk],
                    max_new_tokens=max_new_tokens,
                    eos_id=tokenizer.eos_token_id,
                    # some released tokenizers define no pad token; eos pads just as well
                    pad_id=tokenizer.pad_token_id
                    if tokenizer.pad_token_id is not None
                    else tokenizer.eos_token_id,
                    use_cache=use_cache,
                )
                for i, ids in zip(chunk, outputs, strict=True):
                    results[i] = decode_completion(tokenizer, ids)
    finally:
        model.train(was_training)
    return results
