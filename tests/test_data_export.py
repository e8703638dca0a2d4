"""``barkit data export``: chat-format JSONL that ``datasets`` loads, for every category."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from datasets import load_dataset

from barkit.cli import main as cli_main
from barkit.errors import BarkitError
from barkit.suite import CATEGORIES, get_category
from barkit.suite.export import export_jsonl, records


def _load(path: Path):
    return load_dataset("json", data_files=str(path), split="train")


@pytest.mark.parametrize("name", CATEGORIES)
def test_export_sft_and_rl_load_with_datasets(name: str, tmp_path: Path):
    category = get_category(name)
    sft, rl = tmp_path / "sft.jsonl", tmp_path / "rl.jsonl"
    assert export_jsonl(name, "train", "sft", sft, n=12, seed=1) == 12
    assert export_jsonl(name, "test", "rl", rl, n=12, seed=1) == 12

    sft_rows, rl_rows = _load(sft), _load(rl)
    items = category.items("train", 12, seed=1)
    assert len(sft_rows) == 12 and sft_rows[0]["category"] == name
    assert [row["messages"] for row in sft_rows] == [item.messages() for item in items]
    assert [row["id"] for row in sft_rows] == [item.id for item in items]

    tests = category.items("test", 12, seed=1)
    for row, item in zip(rl_rows, tests, strict=True):
        assert row["prompt"] == [{"role": "user", "content": item.prompt}]
        assert row["answer"] == item.answer
        assert json.loads(row["meta"]) == item.meta
        # what a trainer reads back is enough for the verifier to score the reference answer
        rebuilt = type(item)(
            name, "test", row["id"], row["prompt"][0]["content"], row["answer"], json.loads(row["meta"])
        )
        assert category.score(rebuilt, row["answer"]) == 1.0


@pytest.mark.parametrize("name", CATEGORIES)
def test_export_text_or_a_clear_refusal(name: str, tmp_path: Path):
    category = get_category(name)
    out = tmp_path / "text.jsonl"
    if category.has_text:
        export_jsonl(name, "train", "text", out, n=5)
        rows = _load(out)
        assert len(rows) == 5 and all(isinstance(t, str) and t for t in rows["text"])
    else:
        with pytest.raises(BarkitError, match=name):
            records(name, "train", "text", 5)
        assert not out.exists()


def test_export_is_deterministic(tmp_path: Path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    export_jsonl("code", "train", "sft", a, n=20, seed=7)
    export_jsonl("code", "train", "sft", b, n=20, seed=7)
    assert a.read_bytes() == b.read_bytes()


def test_cli_export_writes_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    out = tmp_path / "nested" / "tools.jsonl"
    argv = [
        "data",
        "export",
        "--category",
        "tool_use",
        "--split",
        "test",
        "--kind",
        "rl",
        "--out",
        str(out),
        "--n",
        "7",
    ]
    assert cli_main(argv) == 0
    assert len(_load(out)) == 7
    assert "wrote 7" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--category", "poetry", "unknown category 'poetry'"),
        ("--kind", "dpo", "unknown kind 'dpo'"),
        ("--split", "dev", "unknown split 'dev'"),
    ],
)
def test_cli_bad_choice_is_one_line_and_status_2(
    option: str, value: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    out = tmp_path / "x.jsonl"
    args = {"--category": "code", "--kind": "sft", "--split": "train"}
    args[option] = value
    argv = ["data", "export", *[part for pair in args.items() for part in pair], "--out", str(out)]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists() and not list(tmp_path.iterdir())


def test_cli_text_of_a_category_without_text_fails_cleanly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    out = tmp_path / "t.jsonl"
    argv = ["data", "export", "--category", "tool_use", "--kind", "text", "--out", str(out)]
    assert cli_main(argv) == 2
    assert "tool_use" in capsys.readouterr().err
    assert not out.exists()


def test_command_module_imports_nothing_heavy():
    code = "import sys, barkit.commands.data; print(sorted({'torch', 'transformers', 'datasets'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
