"""The base model's pre-training objective: general rows mixed with fresh copy rows, annealed.

Each micro-batch draws some rows from the packed general data and builds the rest from newly
generated copy documents (:mod:`barkit.copying`). The copy share falls linearly from
``start_share`` to ``end_share`` over the stage: early on copying is most of what the model
sees, so attention learns to copy from the context; later the general data dominates, so the
base ends as a model of its general categories. Like every objective, ``batch(index)`` is a
pure function of the seed and the index (resuming and data parallelism stay exact).
"""

from __future__ import annotations

import random
from typing import Any

import torch
from torch import Tensor

from barkit.train.data import Example, PackedData
from barkit.train.objectives import PackedObjective


class CopyCurriculumObjective(PackedObjective):
    """Next-token loss on rows of general data or copy documents, the copy share annealed."""

    def __init__(
        self,
        tokenizer: Any,
        general: PackedData,
        *,
        batch_size: int,
        seed: int,
        total_batches: int,
        start_share: float,
        end_share: float,
        chat_share: float = 0.3,
        kinds: tuple[str, ...] | None = None,
    ) -> None:
        super().__init__(general, batch_size, seed)
        self.tokenizer = tokenizer
        self.seq_len = int(general.input_ids.shape[1])
        self.total_batches = max(total_batches, 1)
        self.start_share, self.end_share, self.chat_share = start_share, end_share, chat_share
        from barkit.copying import CLASSIC_KINDS

        self.kinds = tuple(kinds) if kinds else CLASSIC_KINDS

    def share(self, index: int) -> float:
        """Copy share of micro-batch ``index``."""
        progress = min(index / self.total_batches, 1.0)
        return self.start_share + (self.end_share - self.start_share) * progress

    def _copy_example(self, rng: random.Random) -> Example:
        from barkit.copying import copy_conversation, copy_document
        from barkit.tokenizer import encode_conversation

        tok = self.tokenizer
        if rng.random() < self.chat_share:
            return encode_conversation(tok, copy_conversation(rng), self.seq_len)
        ids = [tok.bos_token_id, *tok(copy_document(rng, self.kinds), add_special_tokens=False)["input_ids"]]
        ids.append(tok.eos_token_id)
        return ids, [1] * len(ids)

    def _copy_row(self, rng: random.Random) -> tuple[Tensor, Tensor]:
        ids: list[int] = []
        mask: list[int] = []
        while len(ids) < self.seq_len:
            more_ids, more_mask = self._copy_example(rng)
            ids += more_ids
            mask += more_mask
        return torch.tensor(ids[: self.seq_len]), torch.tensor(mask[: self.seq_len])

    def batch(self, step: int) -> dict[str, Tensor]:
        rng = random.Random(f"copy-curriculum|{self.sampler.seed}|{step}")
        expected = self.share(step) * self.sampler.batch_size
        n_copy = int(expected) + (rng.random() < expected - int(expected))
        rows = self.data.rows(self.sampler.indices(step))
        for i in range(n_copy):
            ids, mask = self._copy_row(rng)
            rows["input_ids"][i], rows["loss_mask"][i] = ids, mask
            rows["attention_mask"][i] = 1
        return rows
