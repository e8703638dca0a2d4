"""A stage's data from the user's own files: the counterpart of :mod:`barkit.train.stage_data`.

``barkit train --data FILE`` (and a recipe stage's ``data:``) resolves to a :class:`UserData`:
the files, their content hashes and the verifier, checked before any model loads. A stage kind
names the row kind it reads (``KindSpec.data_kind``); :func:`user_objective` turns the rows into
the same objectives the suite's data feeds, through the same packing:

* ``text`` (midtrain): documents ending in eos, packed into full rows, loss on every token;
* ``sft`` (sft, router): conversations rendered by the model's own chat template, loss on the
  assistant tokens, whole conversations packed into right-padded rows;
* ``rl`` (rlvr): prompts rendered by the chat template with the assistant's opening, each
  completion scored by the named verifier.

Files stream: rows are tokenized one by one into a :class:`~barkit.train.data.TokenStore`, then
mixed with the general rows *by index* (:func:`~barkit.train.data.mix_general`, as the suite's
stages mix their items) and packed. Only RL keeps its rows, which the verifier needs.

Top-level imports stay light: recipes import this module while they validate.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from barkit.errors import ConfigError

if TYPE_CHECKING:
    from barkit.train.kinds import KindSpec
    from barkit.train.objectives import Objective
    from barkit.train.stage_data import ObjectiveFactory, ObjectiveInput

Conversation = list[dict[str, str]]


@dataclass(frozen=True)
class UserData:
    """A stage's files (one; the router sample takes several), general data and verifier."""

    paths: tuple[str, ...]
    hashes: tuple[str, ...]
    general: str | None = None
    general_hash: str | None = None
    verifier: str | None = None

    @property
    def path(self) -> str:
        """The one file of an expert stage."""
        if len(self.paths) != 1:
            raise ConfigError(f"an expert stage reads one data file, got {len(self.paths)}")
        return self.paths[0]

    def to_json(self) -> dict[str, Any]:
        """What decides the result, for the resolved config and its fingerprint: the files'
        contents and the verifier, not where the files lie (moving a file reruns nothing)."""
        out: dict[str, Any] = {"content_hashes": list(self.hashes)}
        if self.general_hash is not None:
            out["general_hash"] = self.general_hash
        if self.verifier is not None:
            out["verifier"] = self.verifier
        return out

    def describe(self) -> dict[str, Any]:
        """The files, for the manifest."""
        out: dict[str, Any] = {"files": list(self.paths), **self.to_json()}
        if self.general is not None:
            out["general_data"] = self.general
        return out

    def check_kind(self, spec: KindSpec) -> None:
        """Refuse data a stage kind cannot read, and a verifier where none is needed or missing."""
        if spec.data_kind is None:
            raise ConfigError(f"stage {spec.name!r} takes no user data")
        if spec.rl and self.verifier is None:
            raise ConfigError(
                f"stage {spec.name!r} on a user's data needs a verifier (--verifier / verifier:)"
            )
        if not spec.rl and self.verifier is not None:
            raise ConfigError(f"a verifier scores rlvr completions; stage {spec.name!r} takes none")

    def general_mix(self, asked: float | None) -> float | None:
        """The stage's general share: none without general data (asking for one is an error);
        with general data, ``asked`` or, when None, the kind's default."""
        if self.general is not None:
            return asked
        if asked:
            raise ConfigError(
                f"general_mix {asked} needs general data (--general-data / general_data:); "
                "a user's data is mixed with none unless given"
            )
        return 0.0


def user_data(
    paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    general: str | os.PathLike[str] | None = None,
    verifier: str | None = None,
) -> UserData:
    """Hash the files (a DataError names a missing one) and load the verifier (a ConfigError
    names an unknown one) now, before any model loads."""
    files = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not files:
        raise ConfigError("no data files given")
    if verifier is not None:
        from barkit.verifiers import get_verifier

        get_verifier(verifier)
    resolved = tuple(str(Path(p).resolve()) for p in files)
    general_path = str(Path(general).resolve()) if general is not None else None
    return UserData(
        paths=resolved,
        hashes=tuple(data_hash(p) for p in resolved),
        general=general_path,
        general_hash=data_hash(general_path) if general_path is not None else None,
        verifier=verifier,
    )


def data_hash(path: str) -> str:
    """A dataset's content hash; a file's is cached while its size and mtime stay (a recipe
    resolves its stages at load and again when it runs)."""
    from barkit.userdata import content_hash

    file = Path(path)
    if not file.is_file():
        return content_hash(file)  # a saved dataset folder, or a DataError naming the missing path
    stat = file.stat()
    return _file_hash(str(file), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=64)
def _file_hash(path: str, size: int, mtime_ns: int) -> str:
    from barkit.userdata import content_hash

    del size, mtime_ns  # part of the cache key only
    return content_hash(path)


def data_names(paths: Sequence[str]) -> list[str]:
    """Short distinct names for files (their stems; a repeated stem gets its position)."""
    stems = [Path(p).stem for p in paths]
    return [s if stems.count(s) == 1 else f"{s}.{i}" for i, s in enumerate(stems)]


# ----------------------------------------------------------------------------- objectives


def user_objective(data: UserData) -> ObjectiveFactory:
    """The objective factory of a stage on ``data``, by its kind's row kind."""

    def build(inp: ObjectiveInput) -> tuple[Objective, dict[str, Any]]:
        from barkit.train.kinds import get_kind

        readers = {"text": _text_objective, "sft": _chat_objective, "rl": _rl_objective}
        objective, summary = readers[str(get_kind(inp.cfg.kind).data_kind)](inp, data)
        return objective, {**data.describe(), **summary}

    return build


def _mixed_order(n_domain: int, n_general: int, inp: ObjectiveInput) -> list[int]:
    """Store indices in training order: domain rows ``0..n``, general rows after them."""
    from barkit.train.data import mix_general

    cfg = inp.cfg
    return mix_general(range(n_domain), range(n_domain, n_domain + n_general), cfg.general_mix, cfg.seed)


def _general_path(data: UserData, inp: ObjectiveInput) -> str | None:
    return data.general if inp.cfg.general_mix > 0 else None


def _text_objective(inp: ObjectiveInput, data: UserData) -> tuple[Objective, dict[str, Any]]:
    from barkit.train.data import TokenStore, pack_stream
    from barkit.train.objectives import LMObjective
    from barkit.userdata import encode_text, iter_text

    tok, cfg = inp.tokenizer, inp.cfg
    store = TokenStore()
    n = store.add_texts(encode_text(tok, t) for t in iter_text(data.path))
    general = _general_path(data, inp)
    m = store.add_texts(encode_text(tok, t) for t in iter_text(general)) if general else 0
    rows = pack_stream((store.ids(i) for i in _mixed_order(n, m, inp)), cfg.seq_len)
    objective = LMObjective(rows, cfg.batch_size, cfg.seed, cfg.aux_loss_coef)
    return objective, {"domain_texts": n, "general_texts": m, "rows": len(rows)}


def _chat_objective(inp: ObjectiveInput, data: UserData) -> tuple[Objective, dict[str, Any]]:
    from barkit.augment import with_augmented
    from barkit.train.data import TokenStore, pack_examples
    from barkit.train.objectives import SFTObjective, pad_id_of
    from barkit.train.stage_data import synthetic_conversations
    from barkit.userdata import encode_chat, iter_sft

    tok, cfg = inp.tokenizer, inp.cfg
    store = TokenStore(masked=True)
    augmented: dict[str, int] = {}
    rows_in = with_augmented(iter_sft(data.path), cfg.augment, cfg.seed, augmented)
    n = store.add_examples(encode_chat(tok, c, cfg.seq_len) for c in rows_in)
    own = n - sum(augmented.values())  # the file's rows; augmented copies follow each of them
    synthetic = store.add_examples(
        encode_chat(tok, c, cfg.seq_len) for c in synthetic_conversations(cfg, own)
    )
    general = _general_path(data, inp)
    m = store.add_examples(encode_chat(tok, c, cfg.seq_len) for c in iter_sft(general)) if general else 0
    order = _mixed_order(n + synthetic, m, inp)
    rows = pack_examples((store.example(i) for i in order), cfg.seq_len, pad_id_of(tok))
    objective = SFTObjective(rows, cfg.batch_size, cfg.seed, cfg.aux_loss_coef)
    summary: dict[str, Any] = {"domain_items": own, "general_pool": m, "rows": len(rows)}
    if synthetic:
        summary["synthetic"] = synthetic
    if augmented:
        summary["augmented"] = augmented
    return objective, summary


def _rl_objective(inp: ObjectiveInput, data: UserData) -> tuple[Objective, dict[str, Any]]:
    from barkit.train.data import mix_general
    from barkit.train.grpo import GRPOObjective
    from barkit.userdata import RlRow, chat_template_of, encode_prompt, iter_rl
    from barkit.verifiers import get_verifier

    tok, cfg = inp.tokenizer, inp.cfg
    if inp.grpo is None:
        raise ConfigError(f"stage {cfg.kind!r} needs GRPO settings")
    chat_template_of(tok)  # a tokenizer without one fails now, not at the first rollout
    verifier = get_verifier(str(data.verifier))
    rows = list(iter_rl(data.path))  # the verifier reads each row's answer and meta
    general_path = _general_path(data, inp)
    general = list(iter_rl(general_path)) if general_path else []
    prompts = mix_general(rows, general, cfg.general_mix, cfg.seed)

    def reward(row: RlRow, completion: str) -> float:
        return verifier.score(completion, row)

    objective = GRPOObjective(
        inp.model,
        tok,
        prompts,
        inp.grpo,
        batch_size=cfg.batch_size,
        seq_len=cfg.seq_len,
        seed=cfg.seed,
        reward=reward,
        encode=lambda row: encode_prompt(tok, row.prompt),
        aux_loss_coef=cfg.aux_loss_coef,
    )
    return objective, {"domain_items": len(rows), "general_pool": len(general), "prompts": len(prompts)}


# ----------------------------------------------------------------------------- router sample


def router_sample_files(data: UserData, fraction: float) -> ObjectiveFactory:
    """The router's stratified sample from the experts' own SFT files: ``fraction`` of each file,
    rendered by the merged model's chat template."""

    def build(inp: ObjectiveInput) -> tuple[Objective, dict[str, Any]]:
        from barkit.train.objectives import SFTObjective
        from barkit.userdata import encode_chat

        sample = file_sample(data, fraction, inp.cfg.seed)
        conversations = [c for convs in sample.values() for c in convs]
        objective = SFTObjective.from_conversations(inp.tokenizer, inp.cfg, conversations, encode=encode_chat)
        sizes = {name: len(convs) for name, convs in sample.items()}
        return objective, {"sample": fraction, "sample_sizes": sizes, **data.describe()}

    return build


def file_sample(data: UserData, fraction: float, seed: int) -> dict[str, list[Conversation]]:
    """``fraction`` of each SFT file (at least one conversation), keyed by the file's name."""
    from barkit.userdata import stratified_sft_sample

    parts = stratified_sft_sample(list(data.paths), fraction, seed)
    return dict(zip(data_names(data.paths), parts, strict=True))
