"""``barkit import``: a micro Llama written as GGUF comes back as a plain HF folder with equal logits.

The GGUF is written here with the ``gguf`` package the way llama.cpp's converter writes a Llama
(its tensor names, q/k rows permuted for its rope layout, tokenizer metadata), so the test needs
no download and checks the whole round trip that transformers' reader performs.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from barkit.artifacts import read_manifest
from barkit.cli import main as cli_main

HEADS, KV_HEADS, LAYERS, HIDDEN = 4, 2, 2, 32


@pytest.fixture(scope="module")
def tokenizer():
    from barkit.tokenizer import train_tokenizer

    texts = ["the cat sat on the mat", "what is two plus two", "hello world"]
    return train_tokenizer(300, texts=texts * 10)


def micro_llama(vocab: int, tied: bool):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=HIDDEN,
        intermediate_size=48,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        max_position_embeddings=64,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 1000.0},
        tie_word_embeddings=tied,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # norms away from 1, so that a mis-read norm shows in the logits
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return model


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    # llama.cpp's converter interleaves each head's rotary halves; transformers undoes it on load
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _write_tokenizer(writer, tokenizer) -> None:
    tokens = [t for t, _ in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])]
    special = set(tokenizer.all_special_tokens)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * len(tokens))
    writer.add_token_types([3 if t in special else 6 if t.startswith("<0x") else 1 for t in tokens])
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    writer.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in merges])
    for add, token in ((writer.add_bos_token_id, "<s>"), (writer.add_eos_token_id, "</s>")):
        add(tokenizer.convert_tokens_to_ids(token))
    writer.add_unk_token_id(0)
    writer.add_pad_token_id(3)
    writer.add_chat_template(tokenizer.chat_template)


def write_gguf(model, tokenizer, path, arch: str = "llama") -> None:
    import gguf

    config = model.config
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name("micro")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(HIDDEN)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_dimension_count(HIDDEN // HEADS)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_vocab_size(config.vocab_size)
    _write_tokenizer(writer, tokenizer)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, LAYERS)
    for key, tensor in model.state_dict().items():
        if key == "lm_head.weight" and config.tie_word_embeddings:
            continue  # a tied model has no output.weight: that is how the reader detects tying
        array = tensor.numpy().astype(np.float32)
        if key.endswith("q_proj.weight"):
            array = _permute(array, HEADS)
        elif key.endswith("k_proj.weight"):
            array = _permute(array, KV_HEADS)
        writer.add_tensor(names.get_name(key, try_suffixes=(".weight", ".bias")), array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.mark.parametrize(("tie", "dtype", "atol"), [(True, "float32", 1e-5), (False, "float16", 2e-2)])
def test_import_gives_plain_folder_with_equal_logits(tmp_path, tokenizer, capsys, tie, dtype, atol):
    from barkit.modeling import load_model

    source = micro_llama(len(tokenizer), tied=tie)
    write_gguf(source, tokenizer, tmp_path / "micro.gguf")
    out = tmp_path / "imported"
    assert cli_main(["import", str(tmp_path / "micro.gguf"), "--out", str(out), "--dtype", dtype]) == 0
    assert "imported llama" in capsys.readouterr().out
    for name in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json"):
        assert (out / name).is_file()
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and config["tie_word_embeddings"] is tie
    model, loaded_tokenizer = load_model(out)  # plain AutoModelForCausalLM, no remote code
    assert type(model).__name__ == "LlamaForCausalLM"
    assert (model.lm_head.weight is model.model.embed_tokens.weight) is tie
    ids = torch.randint(4, len(tokenizer), (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, source(ids).logits, atol=atol, rtol=0)
    assert loaded_tokenizer.chat_template == tokenizer.chat_template
    assert loaded_tokenizer.eos_token == "</s>" and len(loaded_tokenizer) == len(tokenizer)
    manifest = read_manifest(out)
    assert manifest["stage"] == "import" and manifest["tied_embeddings"] is tie
    assert manifest["config"] == {"dtype": dtype} and manifest["chat_template"] is True
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # nothing half-written


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("barkit: error: ")
    return err


def test_unsupported_architecture_is_one_line(tmp_path, tokenizer, capsys):
    write_gguf(micro_llama(len(tokenizer), tied=True), tokenizer, tmp_path / "odd.gguf", arch="bogusnet")
    out = tmp_path / "imported"
    assert cli_main(["import", str(tmp_path / "odd.gguf"), "--out", str(out)]) == 2
    err = one_error_line(capsys)
    assert "architecture bogusnet is not supported" in err and "llama" in err
    assert not out.exists()


def test_bad_inputs_are_one_line(tmp_path, capsys):
    out = tmp_path / "imported"
    assert cli_main(["import", str(tmp_path / "missing.gguf"), "--out", str(out)]) == 2
    assert "no such GGUF file" in one_error_line(capsys)
    (tmp_path / "fake.gguf").write_bytes(b"PK\x03\x04 not a gguf")
    assert cli_main(["import", str(tmp_path / "fake.gguf"), "--out", str(out)]) == 2
    assert "not a GGUF file" in one_error_line(capsys)
    (tmp_path / "cut.gguf").write_bytes(b"GGUF\x03\x00")
    assert cli_main(["import", str(tmp_path / "cut.gguf"), "--out", str(out)]) == 2
    assert "unreadable GGUF metadata" in one_error_line(capsys)
    assert cli_main(["import", str(tmp_path / "cut.gguf"), "--out", str(out), "--dtype", "int8"]) == 2
    assert "--dtype 'int8' is not one of" in one_error_line(capsys)
    assert not out.exists()
