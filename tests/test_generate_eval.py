"""Presets, model construction and I/O, batched greedy generation, and ``barkit eval``."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from barkit.artifacts import content_fingerprint, read_manifest
from barkit.cli import main as cli
from barkit.errors import ArtifactError, BarkitError
from barkit.generate import generate
from barkit.modeling import build_dense, load_model, save_model
from barkit.presets import PRESETS, get_preset
from barkit.tokenizer import train_tokenizer

PROMPTS = [
    "What is 3 + 4?",
    "Write `double(x)`: it returns x times 2.",
    "hi",
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Name a colour of the sky at noon."},
    ],
    "Tell me a fact about owls and foxes and cats and cows, please, in one sentence.",
]


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(600, seed=0, per_category=60)


@pytest.fixture(scope="module")
def saved(tok, tmp_path_factory):
    """A micro Llama saved by barkit, with the model it was saved from."""
    model = build_dense("llama", get_preset("micro"), tok, seed=0)
    folder = tmp_path_factory.mktemp("models") / "micro"
    save_model(model, tok, folder, {"stage": "test"})
    return folder, model


def test_presets_have_the_promised_shapes():
    micro = get_preset("micro")
    assert (micro.hidden_size, micro.num_layers, micro.num_heads, micro.intermediate_size) == (64, 2, 4, 128)
    assert (micro.vocab_size, micro.max_seq_len) == (1024, 256)
    assert 1.5e6 <= PRESETS["tiny"].approx_params() <= 4e6
    assert 10e6 <= PRESETS["small"].approx_params() <= 20e6
    with pytest.raises(BarkitError, match="unknown preset 'huge'"):
        get_preset("huge")


@pytest.mark.parametrize("arch", ["olmo2", "llama"])
def test_save_load_round_trip_is_bit_identical(tok, tmp_path, arch):
    model = build_dense(arch, get_preset("micro"), tok, seed=1)
    assert model.config.vocab_size == len(tok) and not model.config.tie_word_embeddings
    assert (model.config.pad_token_id, model.config.eos_token_id) == (tok.pad_token_id, tok.eos_token_id)
    manifest = save_model(model, tok, tmp_path / "m", {"stage": "base"})
    names = {p.name for p in (tmp_path / "m").iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json"} <= names
    assert {"tokenizer_config.json", "barkit.json"} <= names
    assert manifest["fingerprint"] == read_manifest(tmp_path / "m")["fingerprint"]
    assert manifest["fingerprint"] == content_fingerprint(tmp_path / "m")
    loaded, loaded_tok = load_model(tmp_path / "m")
    ids = torch.tensor([tok.encode("Compute 4 x 4. Answer: 16")])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)
    assert type(loaded).__name__ == {"olmo2": "Olmo2ForCausalLM", "llama": "LlamaForCausalLM"}[arch]
    assert loaded_tok.get_vocab() == tok.get_vocab()


def test_build_is_seeded_and_leaves_global_rng_alone(tok):
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    a = build_dense("olmo2", get_preset("micro"), tok, seed=5)
    assert torch.equal(torch.rand(1), expected)
    b = build_dense("olmo2", get_preset("micro"), tok, seed=5)
    c = build_dense("olmo2", get_preset("micro"), tok, seed=6)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))
    assert not torch.equal(a.lm_head.weight, c.lm_head.weight)


def test_damaged_or_foreign_folders_are_refused(saved, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    folder, _ = saved
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    tensors = load_file(broken / "model.safetensors")
    tensors.pop(next(k for k in tensors if "mlp" in k))
    save_file(tensors, broken / "model.safetensors")
    with pytest.raises(ArtifactError, match="weights do not match config"):
        load_model(broken)
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ArtifactError, match="cannot load model"):
        load_model(broken)
    (broken / "config.json").write_text(json.dumps({"model_type": "no-such-arch"}))
    with pytest.raises(ArtifactError, match="unreadable model config"):
        load_model(broken)
    with pytest.raises(ArtifactError, match="no such model folder"):
        load_model(tmp_path / "absent")


def test_batched_equals_one_by_one_and_cached_equals_uncached(saved, tok):
    _, model = saved
    batched = generate(model, tok, PROMPTS, max_new_tokens=12, batch_size=3)
    alone = [generate(model, tok, [p], max_new_tokens=12, batch_size=1)[0] for p in PROMPTS]
    uncached = generate(model, tok, PROMPTS, max_new_tokens=12, batch_size=5, use_cache=False)
    assert batched == alone == uncached
    assert any(batched), "an untrained model still emits something within 12 tokens"


def test_generation_of_a_moe_checkpoint(tok, tmp_path):
    from transformers import MixtralConfig, MixtralForCausalLM

    config = MixtralConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, num_local_experts=3, num_experts_per_tok=2,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    save_model(MixtralForCausalLM(config), tok, tmp_path / "moe", {"stage": "test"})
    model, _ = load_model(tmp_path / "moe")
    assert model.config._experts_implementation == "eager"
    batched = generate(model, tok, PROMPTS, max_new_tokens=8, batch_size=5)
    assert batched == [generate(model, tok, [p], max_new_tokens=8, batch_size=1)[0] for p in PROMPTS]


class ScriptedLM(torch.nn.Module):
    """A barkit-own model with the bare HF-style forward (no position ids): the next token is
    ``table[last token]``, so a test knows exactly what greedy decoding must produce."""

    def __init__(self, vocab: int, table: dict[int, int], fallback: int) -> None:
        super().__init__()
        self.vocab = vocab
        self.table = table
        self.fallback = fallback

    def forward(self, input_ids, attention_mask=None, past_key_values=None, use_cache=False):
        last = input_ids[:, -1].tolist()
        logits = torch.zeros(input_ids.shape[0], input_ids.shape[1], self.vocab)
        for row, token in enumerate(last):
            logits[row, -1, self.table.get(token, self.fallback)] = 1.0
        cache = (past_key_values or 0) + 1 if use_cache else None
        return SimpleNamespace(logits=logits, past_key_values=cache)


def test_stops_at_eos_and_keeps_added_special_tokens(tmp_path):
    tok = train_tokenizer(600, seed=0, per_category=60)
    tok.add_special_tokens({"additional_special_tokens": ["<tool_call>"]}, replace_extra_special_tokens=False)
    call = tok.convert_tokens_to_ids("<tool_call>")
    newline = tok.encode("\n", add_special_tokens=False)[0]
    word = tok.encode("ok", add_special_tokens=False)
    # After the prompt's final newline: "ok", then <tool_call>, then </s>; anything else loops on
    # "x", which must never be reached.
    chain = [newline, *word, call, tok.eos_token_id]
    table = dict(zip(chain[:-1], chain[1:], strict=True))
    model = ScriptedLM(len(tok), table, fallback=tok.encode("x", add_special_tokens=False)[0])
    out = generate(model, tok, ["hello", "a longer prompt here"], max_new_tokens=20, batch_size=2)
    assert out == ["ok<tool_call>", "ok<tool_call>"]


def test_eval_command_end_to_end(saved, tmp_path, capsys):
    folder, _ = saved
    out = tmp_path / "eval.json"
    args = [str(folder), "--out", str(out), "--categories", "knowledge,math,code", "--limit", "4"]
    assert cli(["eval", *args, "--max-new-tokens", "16", "--no-progress"]) == 0
    printed = capsys.readouterr()
    assert "overall" in printed.out and "generate:" not in printed.err, "--no-progress draws no bar"
    data = json.loads(out.read_text())
    assert list(data["scores"]) == ["knowledge", "math", "code"]
    assert all(0.0 <= s <= 100.0 for s in data["scores"].values())
    assert data["overall"] == pytest.approx(sum(data["scores"].values()) / 3, abs=0.01)
    assert data["model_fingerprint"] == read_manifest(folder)["fingerprint"]
    assert len(data["items"]) == 12
    assert {"category", "id", "prompt", "completion", "reference", "score"} <= set(data["items"][0])
    assert cli(["eval", str(folder), "--out", str(tmp_path / "x.json"), "--categories", "math,nope"]) == 2
    assert "unknown category 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_eval_train_split_is_a_labelled_fit_check(saved, tmp_path, capsys):
    """--split train scores training items (ids say so), prints that it is no score, and a bad
    split or a split with --data is one error line and exit 2."""
    folder, _ = saved
    out = tmp_path / "fit.json"
    args = ["eval", str(folder), "--categories", "math", "--limit", "3", "--split", "train"]
    assert cli([*args, "--max-new-tokens", "8", "--copy-probe", "0", "--no-progress", "--out", str(out)]) == 0
    assert "fit check" in capsys.readouterr().out
    data = json.loads(out.read_text())
    assert data["settings"]["split"] == "train"
    assert all(item["id"].startswith("math-train-") for item in data["items"]), data["items"][0]["id"]
    assert cli(["eval", str(folder), "--split", "dev", "--out", str(tmp_path / "bad.json")]) == 2
    assert "--split dev" in capsys.readouterr().err
    data_file = tmp_path / "d.jsonl"
    data_file.write_text(json.dumps({"prompt": "1+1", "answer": "2"}) + "\n")
    bad = ["eval", str(folder), "--data", str(data_file), "--verifier", "exact", "--split", "train"]
    assert cli(bad) == 2
    assert not (tmp_path / "bad.json").exists()


def test_scores_follow_completions_through_batching(saved, tok, monkeypatch):
    """With completions equal to the references, every category scores 100: prompts, completions
    and items stay aligned although generation reorders prompts by length."""
    import barkit.generate
    from barkit.evaluate import evaluate
    from barkit.suite import get_category

    cats = ["knowledge", "math", "safety"]
    answers = {i.prompt: i.answer for c in cats for i in get_category(c).items("test", 6, 0)}

    def oracle(model, tokenizer, prompts, **kwargs):
        return [answers[p[0]["content"]] for p in prompts]

    monkeypatch.setattr(barkit.generate, "generate", oracle)
    result = evaluate(saved[1], tok, cats, limit=6)
    assert result.scores == {c: 100.0 for c in cats} and result.overall == 100.0
    assert [r.completion for r in result.items] == [r.reference for r in result.items]


def test_format_table_puts_models_side_by_side():
    from barkit.evaluate import format_table

    text = format_table(
        {"base": {"overall": 10.0, "math": 5.0, "chat": 20.0}, "BAR (routed)": {"math": 50.25}}
    )
    lines = text.splitlines()
    assert lines[0].split() == ["model", "chat", "math", "overall"]
    assert lines[2].split() == ["base", "20.0", "5.0", "10.0"]
    assert lines[3].split() == ["BAR", "(routed)", "-", "50.2", "-"]


def test_eval_on_a_users_file_with_a_verifier(saved, tok, tmp_path, capsys, monkeypatch):
    import barkit.generate

    folder, _ = saved
    rows = [{"prompt": f"What is {a} + 1?", "answer": str(a + 1)} for a in range(6)]
    data = tmp_path / "test.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "scores.json"
    assert cli(["eval", str(folder), "--data", str(data), "--verifier", "numeric", "--out", str(out)]) == 0
    written = json.loads(out.read_text())
    assert list(written["scores"]) == ["test"] and len(written["items"]) == 6
    assert written["settings"]["verifier"] == "numeric" and "copy_probe" not in written
    # Scores follow the verifier: an oracle that answers right on even rows scores 50.
    replies = {
        r["prompt"]: (f"The answer is {r['answer']}" if i % 2 == 0 else "no idea") for i, r in enumerate(rows)
    }
    monkeypatch.setattr(
        barkit.generate, "generate", lambda m, t, prompts, **k: [replies[p[-1]["content"]] for p in prompts]
    )
    assert cli(["eval", str(folder), "--data", str(data), "--verifier", "numeric", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["overall"] == 50.0
    capsys.readouterr()
    for bad, needle in (
        (["--data", str(tmp_path / "missing.jsonl"), "--verifier", "numeric"], "missing.jsonl"),
        (["--data", str(data), "--verifier", "nope"], "unknown verifier 'nope'"),
        (["--data", str(data)], "--data needs --verifier"),
    ):
        assert cli(["eval", str(folder), *bad, "--out", str(tmp_path / "bad.json")]) == 2
        err = capsys.readouterr().err.strip()
        assert needle in err and len(err.splitlines()) == 1
    assert not (tmp_path / "bad.json").exists()


def test_eval_reports_the_copy_probe(saved, tmp_path):
    folder, _ = saved
    out = tmp_path / "eval.json"
    assert (
        cli(
            [
                "eval",
                str(folder),
                "--categories",
                "chat",
                "--limit",
                "2",
                "--copy-probe",
                "8",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    probe = json.loads(out.read_text())["copy_probe"]
    assert probe["items"] == 8 and 0.0 <= probe["copy"] <= 100.0
