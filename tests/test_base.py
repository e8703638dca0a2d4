"""`barkit base`: the embedded default base, through the CLI, deterministic, loadable by plain HF."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from barkit.cli import main as cli
from barkit.suite import GENERAL


@pytest.fixture(scope="module")
def two_bases(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("base")
    for name in ("a", "b"):
        argv = ["base", "--out", str(root / name), "--preset", "micro", "--seed", "3", "--no-progress"]
        assert cli(argv) == 0
    return root / "a", root / "b"


def test_same_seed_gives_the_same_base(two_bases: tuple[Path, Path]) -> None:
    a, b = (json.loads((d / "barkit.json").read_text()) for d in two_bases)
    assert a["fingerprint"] == b["fingerprint"]
    assert a["stage"] == "base" and a["config"]["kind"] == "pretrain" and a["config"]["trainable"] is None
    assert a["tokens"] > 0 and a["seconds"] > 0
    assert a["data"]["categories"] == list(GENERAL)
    assert not any(p.name.startswith(".") for p in two_bases[0].parent.iterdir()), "work folder left behind"


def test_base_loads_with_plain_transformers(two_bases: tuple[Path, Path]) -> None:
    from barkit.modeling import load_model

    folder = two_bases[0]
    plain = AutoModelForCausalLM.from_pretrained(folder).eval()
    ours, tokenizer = load_model(folder)
    ids = torch.tensor([tokenizer("Vozol lives in a town.")["input_ids"]])
    with torch.no_grad():
        assert torch.equal(plain(ids).logits, ours(ids).logits)


def test_training_lowered_the_loss(two_bases: tuple[Path, Path]) -> None:
    history = json.loads((two_bases[0] / "barkit.json").read_text())["metrics"]["history"]
    assert history[-1]["loss"] < history[0]["loss"]


def test_bad_arch_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli(["base", "--out", str(tmp_path / "x"), "--preset", "micro", "--arch", "gpt2", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "gpt2" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x").exists()
