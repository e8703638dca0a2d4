"""Training data: mixing domain with general data, packing into fixed-length rows, sampling.

Everything here is a pure function of its inputs and a seed, so a stage's batch at step ``k``
is the same in every run (which is what makes resuming bit-exact and data-parallel runs match
a single process).
"""

from __future__ import annotations

import random
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from barkit.errors import BarkitError

T = TypeVar("T")
#: token ids and a same-length 0/1 mask of the positions whose next-token prediction is trained
Example = tuple[list[int], list[int]]


def mix_general(domain: Sequence[T], general: Sequence[T], general_mix: float, seed: int) -> list[T]:
    """Domain items plus general items so that a share ``general_mix`` of the result is general.

    General items are drawn (cycled in a seeded order) to the needed count; the result is
    shuffled with the same seed. ``general_mix == 1`` means general data only.
    """
    if not 0.0 <= general_mix <= 1.0:
        raise BarkitError(f"general_mix must be in [0, 1], got {general_mix}")
    rng = random.Random(seed)
    if general_mix >= 1.0 or not domain:
        out = list(general)
    else:
        want = round(len(domain) * general_mix / (1.0 - general_mix))
        if want and not general:
            raise BarkitError(f"general_mix={general_mix} but no general data was given")
        order = list(range(len(general)))
        rng.shuffle(order)
        out = list(domain) + [general[order[i % len(order)]] for i in range(want)]
    if not out:
        raise BarkitError("no training data: both domain and general data are empty")
    rng.shuffle(out)
    return out


#: per-token tag of no example (padding): ignored by a tagged loss, like cross-entropy's ignore index
NO_TAG = -100


@dataclass
class PackedData:
    """Fixed-length rows: ``input_ids``, ``loss_mask`` (1 where the next token is trained on,
    aligned with the *target* position) and ``attention_mask`` (0 on right padding).

    ``tags`` (optional) carries each token's example tag, :data:`NO_TAG` on padding: the router's
    domain-label loss reads the expert each token's sample belongs to from it.
    """

    input_ids: torch.Tensor
    loss_mask: torch.Tensor
    attention_mask: torch.Tensor
    tags: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def rows(self, index: list[int]) -> dict[str, torch.Tensor]:
        idx = torch.tensor(index, dtype=torch.long)
        out = {
            "input_ids": self.input_ids[idx],
            "loss_mask": self.loss_mask[idx],
            "attention_mask": self.attention_mask[idx],
        }
        if self.tags is not None:
            out["tags"] = self.tags[idx]
        return out


def pack_stream(token_lists: Iterable[Sequence[int]], seq_len: int) -> PackedData:
    """Concatenate documents and cut the stream into rows of ``seq_len`` (raw text, LM loss).

    Documents may span rows, as in ordinary pre-training; the tail shorter than a row is dropped.
    The stream collects in a C array of int64 (8 bytes a token, where a Python list takes about
    36), so a large user corpus packs in about the memory of its tensor.
    """
    stream = array("q")
    for doc in token_lists:
        stream.extend(doc)
    n = len(stream) // seq_len
    if n == 0:
        raise BarkitError(f"not enough text to fill one sequence of {seq_len} tokens ({len(stream)} tokens)")
    ids = torch.frombuffer(stream, dtype=torch.long)[: n * seq_len].clone().view(n, seq_len)
    ones = torch.ones_like(ids)
    return PackedData(ids, ones.clone(), ones)


def pack_examples(
    examples: Iterable[Example], seq_len: int, pad_id: int, tags: Sequence[int] | None = None
) -> PackedData:
    """Greedily place whole examples into rows of ``seq_len``, right-padded (SFT).

    An example is never split across rows (its loss mask would lose its prompt); one longer
    than a row is truncated. Packing instead of one example per row avoids computing on
    padding, which dominates for short conversations. ``tags`` (one per example) become the
    per-token :attr:`PackedData.tags`. Each row becomes a tensor as soon as it is full, so
    only one row is ever held as Python lists.
    """
    rows: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    cur: tuple[list[int], list[int], list[int]] = ([], [], [])
    count = 0
    for count, (ids, mask) in enumerate(examples, start=1):
        ids, mask = ids[:seq_len], mask[:seq_len]
        if cur[0] and len(cur[0]) + len(ids) > seq_len:
            rows.append(_row(*cur))
            cur = ([], [], [])
        tag = NO_TAG if tags is None or count > len(tags) else tags[count - 1]
        cur = (cur[0] + ids, cur[1] + mask, cur[2] + [tag] * len(ids))
    if cur[0]:
        rows.append(_row(*cur))
    if tags is not None and len(tags) != count:
        raise BarkitError(f"{len(tags)} tags for {count} examples")
    if not rows:
        raise BarkitError("no training examples to pack")
    return _pad_rows(rows, seq_len, pad_id, tagged=tags is not None)


def _row(ids: list[int], mask: list[int], tags: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return tuple(torch.tensor(x, dtype=torch.long) for x in (ids, mask, tags))  # type: ignore[return-value]


def _pad_rows(
    rows: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], seq_len: int, pad_id: int, *, tagged: bool
) -> PackedData:
    n = len(rows)
    ids = torch.full((n, seq_len), pad_id, dtype=torch.long)
    loss = torch.zeros((n, seq_len), dtype=torch.long)
    attn = torch.zeros((n, seq_len), dtype=torch.long)
    tags = torch.full((n, seq_len), NO_TAG, dtype=torch.long)
    for i, (r_ids, r_mask, r_tags) in enumerate(rows):
        ids[i, : len(r_ids)] = r_ids
        loss[i, : len(r_mask)] = r_mask
        attn[i, : len(r_ids)] = 1
        tags[i, : len(r_tags)] = r_tags
    return PackedData(ids, loss, attn, tags if tagged else None)


class TokenStore:
    """Tokenized documents (or examples with their loss masks) in flat C arrays.

    A user's file is tokenized row by row into here, then mixed and packed by index: memory
    holds 8 bytes a token (1 more with a mask), never a Python list of the raw rows.
    """

    def __init__(self, masked: bool = False) -> None:
        self._ids = array("q")
        self._mask: array[int] | None = array("b") if masked else None
        self._ends = array("q")

    def __len__(self) -> int:
        return len(self._ends)

    def add_texts(self, token_lists: Iterable[Sequence[int]]) -> int:
        """Add documents (token lists); returns how many were added."""
        return self.add_examples((ids, ()) for ids in token_lists)

    def add_examples(self, examples: Iterable[tuple[Sequence[int], Sequence[int]]]) -> int:
        """Add ``(ids, loss mask)`` pairs (the mask is kept only by a masked store)."""
        before = len(self)
        for ids, mask in examples:
            self._ids.extend(ids)
            if self._mask is not None:
                self._mask.extend(mask)
            self._ends.append(len(self._ids))
        return len(self) - before

    def ids(self, index: int) -> list[int]:
        start = self._ends[index - 1] if index else 0
        return self._ids[start : self._ends[index]].tolist()

    def example(self, index: int) -> Example:
        if self._mask is None:
            raise BarkitError("this token store holds no loss masks")
        start = self._ends[index - 1] if index else 0
        return self.ids(index), self._mask[start : self._ends[index]].tolist()


def concat_packed(parts: Sequence[PackedData]) -> PackedData:
    """Rows of several packed sets, in order (e.g. raw text rows plus conversation rows)."""
    if not parts:
        raise BarkitError("no packed data to concatenate")
    return PackedData(
        torch.cat([p.input_ids for p in parts]),
        torch.cat([p.loss_mask for p in parts]),
        torch.cat([p.attention_mask for p in parts]),
    )


class RowSampler:
    """Micro-batch ``index`` -> row indices: epochs of a seeded permutation, no state.

    Batch ``index`` covers rows ``index*batch_size .. +batch_size`` of the endless sequence of
    epochs, each epoch a permutation seeded by ``(seed, epoch)``.
    """

    def __init__(self, n_rows: int, batch_size: int, seed: int) -> None:
        if n_rows <= 0:
            raise BarkitError("no rows to sample from")
        self.n_rows, self.batch_size, self.seed = n_rows, batch_size, seed
        self._perm_cache: dict[int, list[int]] = {}

    def _perm(self, epoch: int) -> list[int]:
        if epoch not in self._perm_cache:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm_cache = {epoch: torch.randperm(self.n_rows, generator=g).tolist()}
        return self._perm_cache[epoch]

    def indices(self, index: int) -> list[int]:
        start = index * self.batch_size
        out = []
        for pos in range(start, start + self.batch_size):
            epoch, offset = divmod(pos, self.n_rows)
            out.append(self._perm(epoch)[offset])
        return out


def count_tokens(batch: dict[str, Any]) -> int:
    """Non-padding tokens in a batch (what 'tokens processed' counts)."""
    return int(batch["attention_mask"].sum())
