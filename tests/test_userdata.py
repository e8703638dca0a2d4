"""A user's own datasets: the three containers, the row kinds, errors, hashes, samples, tokenization."""

from __future__ import annotations

import copy
import json
import random

import pytest

from barkit.errors import BarkitError, ConfigError, DataError
from barkit.suite.export import records as suite_records
from barkit.tokenizer import CHAT_TEMPLATE, encode_conversation, prompt_ids
from barkit.userdata import (
    PARQUET_BATCH_ROWS,
    RlRow,
    content_hash,
    count_rows,
    encode_chat,
    encode_prompt,
    encode_text,
    iter_rl,
    iter_rows,
    iter_sft,
    iter_text,
    sample_rows,
    stratified_sft_sample,
)

CHAT = [{"role": "user", "content": "what is two"}, {"role": "assistant", "content": "the cat"}]


def write_jsonl(path, rows, *, raw_lines=()):
    lines = [json.dumps(r) for r in rows] + list(raw_lines)
    path.write_text("\n".join(lines) + "\n")
    return path


def write_parquet(path, rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=100)
    return path


def save_dataset(path, rows, *, split=None):
    from datasets import Dataset, DatasetDict

    data = Dataset.from_list(rows)
    (DatasetDict({split: data}) if split else data).save_to_disk(str(path))
    return path


# ------------------------------------------------------------------ formats and kinds


def test_sft_formats_normalise_to_messages(tmp_path):
    rows = [
        {"messages": CHAT, "id": 1},
        {"prompt": "what is two", "completion": "the cat"},
        {"prompt": CHAT[:1], "completion": CHAT[1:]},
        {"messages": [{"role": "system", "content": "be brief"}, *CHAT], "extra": [1, 2]},
    ]
    got = list(iter_sft(write_jsonl(tmp_path / "d.jsonl", rows)))
    assert got[:3] == [CHAT, CHAT, CHAT]
    assert got[3][0] == {"role": "system", "content": "be brief"} and got[3][1:] == CHAT


@pytest.mark.parametrize("container", ["jsonl", "parquet", "saved", "saved-dict"])
def test_every_container_gives_the_same_rows(tmp_path, container):
    rows = [{"prompt": f"q{i}", "answer": i, "tests": ["assert True"]} for i in range(3)]
    path = {
        "jsonl": lambda: write_jsonl(tmp_path / "d.jsonl", rows),
        "parquet": lambda: write_parquet(tmp_path / "d.parquet", rows),
        "saved": lambda: save_dataset(tmp_path / "saved", rows),
        "saved-dict": lambda: save_dataset(tmp_path / "saved", rows, split="train"),
    }[container]()
    got = list(iter_rl(path))
    assert [r.answer for r in got] == ["0", "1", "2"]
    assert got[1].prompt == [{"role": "user", "content": "q1"}]
    assert got[2].meta == {"tests": ["assert True"]}
    assert str(path) in got[0].where


def test_parquet_streams_batches(tmp_path):
    n = PARQUET_BATCH_ROWS * 2 + 7
    path = write_parquet(tmp_path / "t.parquet", [{"text": f"doc {i}"} for i in range(n)])
    texts = iter_text(path)
    assert next(texts) == "doc 0"
    assert count_rows(path, "text") == n


def test_rl_rows_unpack_suite_export_meta(tmp_path):
    exported = suite_records("code", "train", "rl", 2)
    rows = list(iter_rl(write_jsonl(tmp_path / "code.jsonl", exported)))
    assert isinstance(rows[0], RlRow)
    assert rows[0].meta["function"] and len(rows[0].meta["tests"]) == 4
    assert rows[0].meta["category"] == "code" and rows[0].prompt == exported[0]["prompt"]


def test_jsonl_with_a_byte_order_mark(tmp_path):
    (tmp_path / "bom.jsonl").write_text("\ufeff" + json.dumps({"text": "one"}) + "\n", encoding="utf-8")
    assert list(iter_text(tmp_path / "bom.jsonl")) == ["one"]


def test_jsonl_is_read_line_by_line(tmp_path):
    # a bad line late in the file surfaces only when reached: the file is never parsed whole
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "one"}, {"text": "two"}], raw_lines=["{oops"])
    rows = iter_text(path)
    assert next(rows) == "one" and next(rows) == "two"
    with pytest.raises(DataError, match=r"d\.jsonl line 3: malformed JSON"):
        next(rows)


# ------------------------------------------------------------------ bad input


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="nope.jsonl: no such file"):
        iter_sft(tmp_path / "nope.jsonl")


def test_row_without_field_names_file_and_line(tmp_path):
    rows = [{"messages": CHAT}] * 5 + [{"text": "x"}]
    path = write_jsonl(tmp_path / "data.jsonl", rows, raw_lines=[""])
    path.write_text("\n" + path.read_text())  # a blank first line still counts as line 1
    with pytest.raises(DataError, match=r"data\.jsonl line 7: no 'messages' or 'prompt'/'completion' field"):
        list(iter_sft(path))


@pytest.mark.parametrize(
    ("kind", "row", "message"),
    [
        ("text", {"content": "x"}, "no 'text' field"),
        ("text", {"text": ""}, "'text' must be a non-empty string"),
        ("rl", {"prompt": "x"}, "no 'answer' field"),
        ("eval", {"answer": "x"}, "no 'prompt' field"),
        ("sft", {"messages": [{"role": "user", "content": "hi"}]}, "no assistant message"),
        ("sft", {"messages": [{"role": "robot", "content": "hi"}]}, r"'messages'\[0\] must be"),
        ("rl", {"prompt": "x", "answer": "1", "meta": "{"}, "'meta' is a string but not JSON"),
    ],
)
def test_invalid_rows(tmp_path, kind, row, message):
    path = write_parquet(tmp_path / "d.parquet", [row])
    with pytest.raises(DataError, match=r"d\.parquet row 0: " + message):
        list(iter_rows(path, kind))


def test_empty_and_unreadable_datasets(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(DataError, match="empty.jsonl: empty dataset"):
        list(iter_sft(tmp_path / "empty.jsonl"))
    (tmp_path / "array.json").write_text(json.dumps([{"text": "x"}]))
    with pytest.raises(DataError, match="a JSON array, not JSON Lines"):
        list(iter_text(tmp_path / "array.json"))
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(DataError, match="not a readable Parquet file"):
        list(iter_text(tmp_path / "bad.parquet"))
    (tmp_path / "d.csv").write_text("text\nx\n")
    with pytest.raises(DataError, match="unknown data format '.csv'"):
        iter_text(tmp_path / "d.csv")
    with pytest.raises(DataError, match="not a saved dataset"):
        iter_text(tmp_path)
    with pytest.raises(ConfigError, match="unknown data kind"):
        iter_rows(tmp_path / "empty.jsonl", "dpo")


# ------------------------------------------------------------------ hashes and samples


def test_content_hash_follows_bytes_not_names(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [{"text": "x"}])
    b = write_jsonl(tmp_path / "b.jsonl", [{"text": "x"}])
    c = write_jsonl(tmp_path / "c.jsonl", [{"text": "y"}])
    assert content_hash(a) == content_hash(b) != content_hash(c)
    one = save_dataset(tmp_path / "one", [{"text": "x"}])
    two = save_dataset(tmp_path / "two", [{"text": "y"}])
    assert len(content_hash(one)) == 16 and content_hash(one) != content_hash(two)


def test_stratified_sample(tmp_path):
    sizes = (100, 40, 3)
    paths = [
        write_jsonl(tmp_path / f"{i}.jsonl", [{"prompt": f"{i}-{j}", "completion": "ok"} for j in range(n)])
        for i, n in enumerate(sizes)
    ]
    sample = stratified_sft_sample(paths, 0.05, seed=1)
    assert [len(s) for s in sample] == [5, 2, 1]  # at least one row from every dataset
    for i, rows in enumerate(sample):
        prompts = [r[0]["content"] for r in rows]
        assert all(p.startswith(f"{i}-") for p in prompts)
        assert prompts == sorted(prompts, key=lambda p: int(p.split("-")[1]))  # file order
    assert stratified_sft_sample(paths, 0.05, seed=1) == sample
    assert stratified_sft_sample(paths, 0.05, seed=2) != sample
    # a dataset's sample does not depend on the datasets after it
    assert stratified_sft_sample(paths[:1], 0.05, seed=1)[0] == sample[0]
    with pytest.raises(ConfigError, match="share"):
        sample_rows(paths[0], "sft", 0.0, random.Random(0))


# ------------------------------------------------------------------ tokenization


@pytest.fixture(scope="module")
def tokenizer():
    from barkit.tokenizer import train_tokenizer

    texts = ["the cat sat on the mat", "what is two plus two", "hello world", "be brief"]
    return train_tokenizer(300, texts=texts * 10)


def without_markers(tokenizer):
    plain = copy.deepcopy(tokenizer)
    plain.chat_template = CHAT_TEMPLATE.replace("{% generation %}", "").replace("{% endgeneration %}", "")
    return plain


CONVERSATIONS = [
    CHAT,
    [
        {"role": "system", "content": "be brief"},
        *CHAT,
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "world sat"},
    ],
]


@pytest.mark.parametrize("messages", CONVERSATIONS)
def test_chat_template_paths_agree(tokenizer, messages):
    ids, mask = encode_chat(tokenizer, messages)
    # barkit's hand-built encoding is the reference for its own template
    assert (ids, mask) == encode_conversation(tokenizer, messages, max_len=1 << 20)
    assert without_markers(tokenizer).chat_template != tokenizer.chat_template
    assert encode_chat(without_markers(tokenizer), messages) == (ids, mask)
    assistant = [t for t, m in zip(ids, mask, strict=True) if m]
    assert tokenizer.decode(assistant).endswith(tokenizer.eos_token)
    assert encode_chat(tokenizer, messages, max_len=5) == (ids[:5], mask[:5])


def test_prompt_and_text_encoding(tokenizer):
    assert encode_prompt(tokenizer, CHAT[:1]) == prompt_ids(tokenizer, CHAT[:1])
    ids = encode_text(tokenizer, "the cat")
    assert ids[-1] == tokenizer.eos_token_id and tokenizer.decode(ids[:-1]) == "the cat"


def test_tokenizer_without_chat_template(tokenizer):
    bare = copy.deepcopy(tokenizer)
    bare.chat_template = None
    with pytest.raises(BarkitError, match="has no chat template"):
        encode_chat(bare, CHAT)
    with pytest.raises(BarkitError, match="has no chat template"):
        encode_prompt(bare, CHAT[:1])


def test_template_that_rewrites_history_is_refused(tokenizer):
    # renders only the last message: earlier turns vanish as the chat grows
    odd = copy.deepcopy(tokenizer)
    odd.chat_template = "{{ messages[-1]['content'] }}{% if add_generation_prompt %}>{% endif %}"
    with pytest.raises(BarkitError, match="add \\{% generation %\\} markers"):
        encode_chat(odd, CHAT)


def test_generation_blocks_that_mark_nothing_are_refused(tokenizer):
    empty = copy.deepcopy(tokenizer)
    marked = "{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}"
    assert marked in CHAT_TEMPLATE
    empty.chat_template = CHAT_TEMPLATE.replace(
        marked, "{{ message['content'] + eos_token }}{% generation %}{% endgeneration %}"
    )
    with pytest.raises(BarkitError, match="mark no assistant token"):
        encode_chat(empty, CHAT)
