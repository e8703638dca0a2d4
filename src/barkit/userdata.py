"""A user's own datasets, in the formats TRL users already have.

Three containers, chosen by path: a JSONL file (``.jsonl``/``.json``, one object per line), a
Parquet file (``.parquet``/``.pq``), or a folder written by ``datasets``' ``save_to_disk`` (it
holds ``dataset_info.json``, ``state.json`` or ``dataset_dict.json``). Rows are streamed:
JSONL line by line, Parquet batch by batch, a saved dataset by iterating its memory-mapped
Arrow files, so a file larger than memory trains and hashes all the same.

Four row kinds, each validated and normalised as it streams:

* ``sft``: conversational ``messages`` (a list of ``{"role", "content"}``), or TRL's
  prompt-completion form, ``prompt`` + ``completion``, each a string or a message list. Either
  becomes one message list, which must hold an assistant turn (the SFT loss falls there).
* ``text`` (mid-training): a non-empty ``text`` string.
* ``rl`` and ``eval``: ``prompt`` (a string or messages) and ``answer``; every other field is
  kept as the row's ``meta`` for the verifier (``tests`` for python-tests, ``tools``,
  ``tolerance``). A ``meta`` field holding a JSON object, or a JSON string of one (what
  ``barkit data export --kind rl`` writes), is unpacked into ``meta``.

Every problem is a :class:`~barkit.errors.DataError` naming the file and the line (JSONL,
1-based) or the row (Parquet and saved datasets, 0-based as in ``dataset[i]``).

Tokenization uses the model's own tokenizer and chat template; see :func:`encode_chat`.
"""

from __future__ import annotations

import json
import os
import random
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from barkit.artifacts import file_fingerprint, hash_files
from barkit.errors import BarkitError, ConfigError, DataError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

Kind = Literal["sft", "text", "rl", "eval"]
KINDS: tuple[Kind, ...] = ("sft", "text", "rl", "eval")
Format = Literal["jsonl", "parquet", "saved"]
Message = dict[str, str]
Conversation = list[Message]
Row = Any  # Conversation (sft), str (text) or RlRow (rl, eval)

JSONL_SUFFIXES = (".jsonl", ".json")
PARQUET_SUFFIXES = (".parquet", ".pq")
SAVED_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
# Rows per Parquet read: small enough that a batch of long documents stays a few MB.
PARQUET_BATCH_ROWS = 256
ROLES = ("system", "user", "assistant", "tool")
# A ``{% generation %}`` block marks the assistant tokens for HF's assistant mask.
GENERATION_MARKER = re.compile(r"{%-?\s*generation\s*-?%}")


@dataclass(frozen=True)
class RlRow:
    """A prompt with its reference answer: what RLVR trains on and evaluation scores against."""

    prompt: Conversation
    answer: str
    meta: dict[str, Any] = field(default_factory=dict)
    #: Where the row came from, e.g. ``data.jsonl line 7``: error messages name it.
    where: str = ""


# ------------------------------------------------------------------ containers


def detect_format(path: str | os.PathLike[str]) -> Format:
    """The container of ``path``, from its suffix or, for a folder, the files ``datasets`` writes."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_dir():
        if any((path / name).is_file() for name in SAVED_MARKERS):
            return "saved"
        raise DataError(f"{path}: a folder, but not a saved dataset (none of {', '.join(SAVED_MARKERS)})")
    suffix = path.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        return "jsonl"
    if suffix in PARQUET_SUFFIXES:
        return "parquet"
    known = ", ".join(JSONL_SUFFIXES + PARQUET_SUFFIXES)
    raise DataError(f"{path}: unknown data format {suffix or '(no suffix)'!r}; known: {known} or a folder")


def records(path: str | os.PathLike[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Raw records of a dataset as ``(where, record)`` pairs, streamed."""
    path = Path(path)
    readers = {"jsonl": _jsonl_records, "parquet": _parquet_records, "saved": _saved_records}
    return readers[detect_format(path)](path)


def _jsonl_records(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    with open(path, encoding="utf-8-sig") as f:  # -sig: a byte-order mark some editors write is no error
        for number, line in enumerate(_lines(f, path), start=1):
            if not line.strip():
                continue  # a blank line (often the last) is no record
            where = f"{path} line {number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                if number == 1 and line.lstrip().startswith("["):
                    raise DataError(f"{where}: a JSON array, not JSON Lines (one object per line)") from None
                raise DataError(f"{where}: malformed JSON ({e.msg} at column {e.colno})") from None
            if isinstance(record, list):
                raise DataError(f"{where}: a JSON array, not JSON Lines (one object per line)")
            if not isinstance(record, dict):
                raise DataError(f"{where}: not a JSON object")
            yield where, record


def _lines(f: Any, path: Path) -> Iterator[str]:
    try:
        yield from f
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def _parquet_records(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path}: not a readable Parquet file ({e})") from None
    index = 0
    for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS):
        for record in batch.to_pylist():
            yield f"{path} row {index}", record
            index += 1


def _saved_records(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    for index, record in enumerate(_load_saved(path)):
        yield f"{path} row {index}", record


def _load_saved(path: Path) -> Any:
    """The dataset in a ``save_to_disk`` folder; of a DatasetDict, its ``train`` or only split."""
    from datasets import DatasetDict, load_from_disk

    try:
        data = load_from_disk(str(path))  # memory-maps the Arrow files; nothing is unpickled
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not a readable saved dataset ({e})") from None
    if isinstance(data, DatasetDict):
        splits = list(data)
        if "train" in data:
            return data["train"]
        if len(splits) != 1:
            raise DataError(f"{path}: a dataset with splits {splits}; save the one to use on its own")
        return data[splits[0]]
    return data


def content_hash(path: str | os.PathLike[str]) -> str:
    """SHA-256 (16 hex digits) of a dataset's bytes: the file, or a saved dataset's Arrow files.

    Streamed, so it costs one read of the data; fingerprints include it so that editing a data
    file reruns the stages that trained on it.
    """
    path = Path(path)
    if detect_format(path) != "saved":
        return file_fingerprint(path)
    names = sorted(p.relative_to(path).as_posix() for p in path.rglob("*.arrow"))
    if not names:
        raise DataError(f"{path}: a saved dataset without Arrow files")
    return hash_files(path, names)


# ------------------------------------------------------------------ row kinds


def iter_rows(path: str | os.PathLike[str], kind: str) -> Iterator[Row]:
    """Validated, normalised rows of ``kind``; a DataError at the end if there were none."""
    if kind not in KINDS:
        raise ConfigError(f"unknown data kind {kind!r}; known: {', '.join(KINDS)}")
    parse = {"sft": sft_row, "text": text_row, "rl": rl_row, "eval": rl_row}[kind]
    # records() checks the path now; a missing file fails here, not at the first row
    return _parsed(path, records(path), parse)


def _parsed(
    path: str | os.PathLike[str], raw: Iterator[tuple[str, dict[str, Any]]], parse: Any
) -> Iterator[Row]:
    count = 0
    for where, record in raw:
        yield parse(record, where)
        count += 1
    if count == 0:
        raise DataError(f"{path}: empty dataset (no rows)")


def iter_sft(path: str | os.PathLike[str]) -> Iterator[Conversation]:
    """SFT conversations (``messages``, or ``prompt`` + ``completion``) as message lists."""
    return iter_rows(path, "sft")


def iter_text(path: str | os.PathLike[str]) -> Iterator[str]:
    """Mid-training documents (``text``)."""
    return iter_rows(path, "text")


def iter_rl(path: str | os.PathLike[str]) -> Iterator[RlRow]:
    """RLVR or evaluation rows (``prompt`` + ``answer``, other fields as meta)."""
    return iter_rows(path, "rl")


def count_rows(path: str | os.PathLike[str], kind: str) -> int:
    """Number of valid rows of ``kind`` (one streamed, validating pass)."""
    return sum(1 for _ in iter_rows(path, kind))


def sft_row(record: dict[str, Any], where: str) -> Conversation:
    """One SFT record as a message list with at least one assistant turn."""
    if "messages" in record:
        messages = _messages(record["messages"], where, "messages", default_role="user")
    elif "prompt" in record and "completion" in record:
        prompt = _messages(record["prompt"], where, "prompt", default_role="user")
        messages = prompt + _messages(record["completion"], where, "completion", default_role="assistant")
    else:
        raise DataError(f"{where}: no 'messages' or 'prompt'/'completion' field")
    if not any(m["role"] == "assistant" for m in messages):
        raise DataError(f"{where}: no assistant message to train on")
    return messages


def text_row(record: dict[str, Any], where: str) -> str:
    """One mid-training record's document."""
    if "text" not in record:
        raise DataError(f"{where}: no 'text' field")
    text = record["text"]
    if not isinstance(text, str) or not text:
        raise DataError(f"{where}: 'text' must be a non-empty string")
    return text


def rl_row(record: dict[str, Any], where: str) -> RlRow:
    """One RLVR or evaluation record: the prompt, the answer as text, the rest as meta."""
    missing = [name for name in ("prompt", "answer") if record.get(name) is None]
    if missing:
        raise DataError(f"{where}: no {' or '.join(repr(m) for m in missing)} field")
    prompt = _messages(record["prompt"], where, "prompt", default_role="user")
    answer = record["answer"]
    meta = _meta(record.get("meta"), where)
    meta.update({k: v for k, v in record.items() if k not in ("prompt", "answer", "meta")})
    # numbers and structured answers (a tool call as an object) keep their JSON spelling
    text = answer if isinstance(answer, str) else json.dumps(answer)
    return RlRow(prompt=prompt, answer=text, meta=meta, where=where)


def _meta(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise DataError(f"{where}: 'meta' is a string but not JSON") from None
    if not isinstance(value, dict):
        raise DataError(f"{where}: 'meta' must be a JSON object")
    return dict(value)


def _messages(value: Any, where: str, name: str, *, default_role: str) -> Conversation:
    """A string (one turn of ``default_role``) or a list of ``{role, content}`` dicts."""
    if isinstance(value, str):
        return [{"role": default_role, "content": value}]
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: '{name}' must be a string or a non-empty list of messages")
    messages = []
    for i, message in enumerate(value):
        role = message.get("role") if isinstance(message, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        if role not in ROLES or not isinstance(content, str):
            raise DataError(
                f"{where}: '{name}'[{i}] must be {{'role': {'|'.join(ROLES)}, 'content': string}}"
            )
        messages.append({"role": role, "content": content})
    return messages


# ------------------------------------------------------------------ router sample


def sample_rows(path: str | os.PathLike[str], kind: str, share: float, rng: random.Random) -> list[Row]:
    """A uniform sample of ``share`` of a dataset's rows (at least one), in file order.

    Two streamed passes: one counts, one keeps the drawn rows; memory holds only the sample.
    """
    if not 0.0 < share <= 1.0:
        raise ConfigError(f"sample share must be in (0, 1], got {share}")
    total = count_rows(path, kind)
    keep = set(rng.sample(range(total), max(1, min(total, round(share * total)))))
    return [row for index, row in enumerate(iter_rows(path, kind)) if index in keep]


def stratified_sft_sample(
    paths: Sequence[str | os.PathLike[str]], share: float = 0.05, seed: int = 0
) -> list[list[Conversation]]:
    """The router's sample: ``share`` of each SFT dataset, drawn separately, in ``paths`` order.

    Each dataset has its own seeded stream (from ``seed`` and its position), so the sample of
    one dataset does not change when another dataset grows.
    """
    if not paths:
        raise ConfigError("no datasets to sample from")
    return [
        sample_rows(path, "sft", share, random.Random(f"barkit-router-sample|{seed}|{index}"))
        for index, path in enumerate(paths)
    ]


# ------------------------------------------------------------------ tokenization


def chat_template_of(tokenizer: PreTrainedTokenizerBase) -> str:
    """The tokenizer's chat template; a BarkitError when it has none."""
    template = tokenizer.chat_template
    if isinstance(template, dict):  # several named templates: the default one is what chats use
        template = template.get("default")
    if not template:
        name = tokenizer.name_or_path or type(tokenizer).__name__
        raise BarkitError(f"tokenizer {name} has no chat template; chat data needs one")
    return str(template)


def encode_chat(
    tokenizer: PreTrainedTokenizerBase, messages: Conversation, max_len: int | None = None
) -> tuple[list[int], list[int]]:
    """Token ids of a conversation, rendered by the model's chat template, and the SFT loss mask.

    The mask is 1 on assistant tokens. A template with ``{% generation %}`` markers gets HF's own
    assistant mask; any other template is rendered with and without each assistant turn
    (:func:`_assistant_spans`) and the turn's characters are mapped to tokens by offsets.
    """
    template = chat_template_of(tokenizer)
    if GENERATION_MARKER.search(template):
        out = _apply(tokenizer, messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        ids, mask = list(out["input_ids"]), list(out["assistant_masks"])
    else:
        ids, mask = _encode_by_spans(tokenizer, messages)
    if not any(mask) and any(m["role"] == "assistant" for m in messages):
        raise BarkitError("the chat template's {% generation %} blocks mark no assistant token")
    if max_len is not None:
        ids, mask = ids[:max_len], mask[:max_len]
    return ids, mask


def encode_prompt(tokenizer: PreTrainedTokenizerBase, messages: Conversation) -> list[int]:
    """Ids of a generation prompt: the conversation so far plus the assistant turn's opening."""
    chat_template_of(tokenizer)
    out = _apply(tokenizer, messages, tokenize=True, return_dict=True, add_generation_prompt=True)
    return list(out["input_ids"])


def encode_text(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Ids of a mid-training document, closed by the end-of-sequence token so documents separate."""
    ids: list[int] = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids + ([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [])


def _apply(tokenizer: PreTrainedTokenizerBase, messages: Conversation, **kwargs: Any) -> Any:
    from jinja2 import TemplateError

    try:
        return tokenizer.apply_chat_template(messages, **kwargs)
    except TemplateError as e:  # the template's own raise_exception (an unknown role, say)
        raise BarkitError(f"chat template refused the conversation: {e}") from None


def _encode_by_spans(
    tokenizer: PreTrainedTokenizerBase, messages: Conversation
) -> tuple[list[int], list[int]]:
    if not tokenizer.is_fast:
        raise BarkitError("a chat template without {% generation %} markers needs a fast tokenizer")
    full = _apply(tokenizer, messages, tokenize=False)
    spans = _assistant_spans(tokenizer, messages, full)
    encoded = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    mask = [int(any(lo <= start < hi for lo, hi in spans)) for start, _ in encoded["offset_mapping"]]
    return list(encoded["input_ids"]), mask


def _assistant_spans(
    tokenizer: PreTrainedTokenizerBase, messages: Conversation, full: str
) -> list[tuple[int, int]]:
    """Character spans of the assistant turns in ``full``, the rendered conversation.

    A turn's span runs from the end of the chat before it (with the generation prompt) to the
    end of the chat through it. That holds only if each rendering is a prefix of the next, which
    is checked. Whitespace the template puts after a turn is no target: the model stops at its
    end-of-turn token, and this keeps the mask equal to what generation markers give.
    """
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = _apply(tokenizer, messages[:i], tokenize=False, add_generation_prompt=True)
        through = _apply(tokenizer, messages[: i + 1], tokenize=False)
        if not (through.startswith(before) and full.startswith(through)):
            raise BarkitError(
                f"chat template of {tokenizer.name_or_path or 'the tokenizer'} renders message {i} "
                "differently once the conversation goes on, so assistant tokens cannot be found; "
                "add {% generation %} markers to the template"
            )
        spans.append((len(before), len(through.rstrip())))
    return spans
