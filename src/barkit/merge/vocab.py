"""The union of the inputs' vocabularies: common ids first, then every token an input added."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from barkit.errors import IncompatibleError

if TYPE_CHECKING:
    from barkit.merge.inputs import Input


@dataclass
class VocabUnion:
    """Rows ``[0, prefix)`` are common to all inputs; ``added`` are new rows after them."""

    prefix: int
    added: list[tuple[str, list[tuple[int, int]]]]  # token -> [(input index, row there)]

    @property
    def size(self) -> int:
        return self.prefix + len(self.added)

    def added_tokens(self, names: Sequence[str]) -> list[tuple[int, str, list[str]]]:
        """(new id, token, names of the inputs that have it), for the plan."""
        return [
            (self.prefix + j, tok, [names[i] for i, _ in owners])
            for j, (tok, owners) in enumerate(self.added)
        ]


def vocab_union(inputs: Sequence[Input], rows: Sequence[int]) -> VocabUnion:
    """The union vocabulary: the common prefix in its ids, then added tokens in input order.

    The prefix is the longest run of ids that every input maps to the same token (or to no
    token: padding rows past the tokenizer). A token added by several experts gets one id.
    """
    vocabs = [inp.vocab for inp in inputs]
    if all(v is None for v in vocabs):
        if len(set(rows)) > 1:
            raise IncompatibleError(
                f"{inputs[rows.index(min(rows))].path}: vocabulary size differs and no tokenizer.json"
            )
        return VocabUnion(rows[0], [])
    for inp, v in zip(inputs, vocabs, strict=True):
        if v is None:
            raise IncompatibleError(f"{inp.path}: has no tokenizer.json while {inputs[0].path} has")
    lists = cast(list[list[str | None]], vocabs)
    for inp, v, r in zip(inputs, lists, rows, strict=True):
        if len(v) > r:
            raise IncompatibleError(f"{inp.path}: tokenizer has {len(v)} tokens but the embeddings {r} rows")

    def token(i: int, k: int) -> str | None:
        return lists[i][k] if k < len(lists[i]) else None

    prefix = 0
    while prefix < min(rows) and len({token(i, prefix) for i in range(len(inputs))}) == 1:
        prefix += 1
    owners: dict[str, list[tuple[int, int]]] = {}
    for i, v in enumerate(lists):
        for k in range(prefix, len(v)):
            if v[k] is not None:
                owners.setdefault(cast(str, v[k]), []).append((i, k))
    return VocabUnion(prefix, list(owners.items()))
