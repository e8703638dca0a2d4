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


def test_manifest_records_recipe_and_copy_curve(two_bases: tuple[Path, Path]) -> None:
    from barkit.base_recipe import get_recipe

    manifest = json.loads((two_bases[0] / "barkit.json").read_text())
    assert manifest["recipe_fingerprint"] == get_recipe("micro").fingerprint("olmo2", "micro", 3)
    curve = manifest["metrics"]["copy_probe"]
    steps = [point["total_step"] for point in curve]
    assert steps[0] == 0 and steps == sorted(steps) and len(steps) >= 3
    assert all(0.0 <= point["copy"] <= 100.0 for point in curve)
    assert {h["phase"] for h in manifest["metrics"]["history"]} == {"pretrain", "posttrain"}
    assert (two_bases[0] / "copy_probe.png").is_file()


def test_interrupted_build_resumes_bit_identically(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, two_bases: tuple[Path, Path]
) -> None:
    import dataclasses

    import barkit.base as base
    from barkit.base_recipe import RECIPES

    monkeypatch.setitem(RECIPES, "micro", dataclasses.replace(RECIPES["micro"], checkpoint_every=2))
    reference = base.train_base(tmp_path / "ref", preset="micro", seed=3, progress=False)
    real_call = base._ProbeLog.__call__

    def interrupt(self: base._ProbeLog, step: int, metrics: dict[str, float]) -> None:
        if self.phase == "pretrain" and step == 5:
            raise KeyboardInterrupt
        real_call(self, step, metrics)

    monkeypatch.setattr(base._ProbeLog, "__call__", interrupt)
    work = tmp_path / "work"
    with pytest.raises(KeyboardInterrupt):
        base.train_base(tmp_path / "b", preset="micro", seed=3, progress=False, work_dir=work)
    assert (work / "pretrain" / "checkpoint").is_dir() and not (tmp_path / "b").exists()
    monkeypatch.setattr(base._ProbeLog, "__call__", real_call)
    resumed = base.train_base(tmp_path / "b", preset="micro", seed=3, progress=False, work_dir=work)
    assert _weights_equal(tmp_path / "ref", tmp_path / "b")
    assert resumed["recipe_fingerprint"] == reference["recipe_fingerprint"]
    assert not work.exists()


def _weights_equal(a: Path, b: Path) -> bool:
    from safetensors.torch import load_file

    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_tokenizer_scheme_is_part_of_the_recipe(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from dataclasses import replace

    from barkit.base_recipe import get_recipe

    glue = get_recipe("micro")
    assert glue.tokenizer_scheme == "glue"
    metaspace = replace(glue, tokenizer_scheme="metaspace")
    # absent at the old default, so bases built before the field existed keep their fingerprint
    assert "tokenizer_scheme" not in metaspace.to_dict()
    assert metaspace.fingerprint("olmo2", "micro", 0) != glue.fingerprint("olmo2", "micro", 0)
    out = tmp_path / "m"
    assert (
        cli(["base", "--out", str(out), "--preset", "micro", "--tokenizer", "metaspace", "--no-progress"])
        == 0
    )
    manifest = json.loads((out / "barkit.json").read_text())
    assert manifest["recipe_fingerprint"] == metaspace.fingerprint("olmo2", "micro", 0)
    capsys.readouterr()
    code = cli(
        ["base", "--out", str(tmp_path / "x"), "--preset", "micro", "--tokenizer", "bpe", "--no-progress"]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and "bpe" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_arithmetic_rows_hold_only_train_triples(two_bases: tuple[Path, Path]) -> None:
    """The base's arithmetic share: the asked share of the pool, no held-out triple in it."""
    import re

    from transformers import AutoTokenizer

    from barkit.base import arithmetic_rows
    from barkit.errors import BarkitError
    from barkit.suite.math import apply, triple_split

    tokenizer = AutoTokenizer.from_pretrained(two_bases[0])
    rows = arithmetic_rows(tokenizer, 0.25, 30, 64, seed=0)
    assert len(rows) == 10  # 10 / (30 + 10) = 0.25
    text = " ".join(tokenizer.batch_decode(rows.input_ids, skip_special_tokens=True))
    equations = re.findall(r"(\d+) ([+x-]) (\d+) = (\d+)\.", text)
    assert len(equations) > 20
    for a, op, b, c in equations:
        assert triple_split(int(a), op, int(b)) == "train" and apply(int(a), op, int(b)) == int(c)
    with pytest.raises(BarkitError, match="between 0 and 1"):
        arithmetic_rows(tokenizer, 1.0, 30, 64, seed=0)


def test_arithmetic_probe_reads_the_result_digits(two_bases: tuple[Path, Path]) -> None:
    """A model that always predicts the right next token scores 100; one that never does, 0."""
    from transformers import AutoTokenizer

    from barkit.base import arithmetic_probe

    tokenizer = AutoTokenizer.from_pretrained(two_bases[0])

    class Oracle(torch.nn.Module):
        """Logits peaked on the true next token of whatever it is given; ``shift`` spoils them."""

        def __init__(self, shift: int) -> None:
            super().__init__()
            self.shift = shift

        def forward(self, input_ids: torch.Tensor) -> object:
            nxt = torch.roll(input_ids, -1, dims=1)
            logits = torch.nn.functional.one_hot((nxt + self.shift) % len(tokenizer), len(tokenizer)).float()

            class Out:
                pass

            out = Out()
            out.logits = logits  # type: ignore[attr-defined]
            return out

    assert arithmetic_probe(Oracle(0), tokenizer, n=12) == 100.0
    assert arithmetic_probe(Oracle(1), tokenizer, n=12) == 0.0


def test_recipe_with_arithmetic_logs_its_probe(two_bases: tuple[Path, Path]) -> None:
    from dataclasses import replace

    from barkit.base_recipe import get_recipe

    recipe = get_recipe("micro")
    assert recipe.arithmetic > 0 and "arithmetic" in recipe.to_dict()
    # absent at its default, so recipes without it keep their fingerprint
    assert "arithmetic" not in replace(recipe, arithmetic=0.0).to_dict()
    assert "arithmetic_post" not in replace(recipe, arithmetic_post=0.0).to_dict()
    manifest = json.loads((two_bases[0] / "barkit.json").read_text())
    assert manifest["data"]["arithmetic"] == [recipe.arithmetic, recipe.arithmetic_post]
    assert all(0.0 <= point["arithmetic"] <= 100.0 for point in manifest["metrics"]["copy_probe"])


def test_everyday_english_is_part_of_the_recipe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A recipe with everyday English: its shares, its lines in the pool and in the tokenizer's
    sample, the corpus itself in the fingerprint; no share of 1 or more."""
    from dataclasses import replace

    from transformers import AutoTokenizer

    import barkit.base_recipe as base_recipe
    from barkit.base import everyday_rows
    from barkit.errors import BarkitError

    plain = base_recipe.get_recipe("micro")
    recipe = replace(plain, everyday=0.2, everyday_post=0.1)
    assert "everyday" not in plain.to_dict() and recipe.to_dict()["everyday"] == 0.2
    assert recipe.fingerprint("olmo2", "micro", 0) != plain.fingerprint("olmo2", "micro", 0)
    with pytest.raises(BarkitError, match="everyday 1.0"):
        replace(plain, everyday=1.0)
    lines = base_recipe.everyday_lines()
    assert len(lines) >= 1000 and all(line.strip() == line and line for line in lines)

    out = tmp_path / "b"
    assert (
        cli(["base", "--out", str(out), "--preset", "micro", "--everyday", "0.2,0.1", "--no-progress"]) == 0
    )
    manifest = json.loads((out / "barkit.json").read_text())
    assert manifest["data"]["everyday"] == {"shares": [0.2, 0.1], "lines": len(lines)}
    assert manifest["recipe_fingerprint"] == recipe.fingerprint("olmo2", "micro", 0)

    tokenizer = AutoTokenizer.from_pretrained(out)
    rows = everyday_rows(tokenizer, 0.25, 30, 64, seed=0)
    assert len(rows) == 10  # 10 / (30 + 10) = 0.25
    text = tokenizer.decode(rows.input_ids[0], skip_special_tokens=True)
    assert sum(line in text for line in lines) >= 1

    for bad in ("1.5", "a,b", "0.1,0.1,0.1"):
        capsys.readouterr()
        argv = ["base", "--out", str(tmp_path / "x"), "--preset", "micro", "--everyday", bad, "--no-progress"]
        assert cli(argv) == 2
        err = capsys.readouterr().err.strip()
        assert "everyday" in err and len(err.splitlines()) == 1
        assert not (tmp_path / "x").exists()

    # another corpus is another base
    before = recipe.fingerprint("olmo2", "micro", 0)
    monkeypatch.setattr(base_recipe, "everyday_digest", lambda: "0" * 16)
    assert recipe.fingerprint("olmo2", "micro", 0) != before
