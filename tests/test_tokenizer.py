"""barkit's tokenizer: fixed special ids, exact round trip, chat template and SFT loss mask."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from barkit.errors import BarkitError
from barkit.tokenizer import (
    BYTE_TOKENS,
    GLUE,
    METASPACE,
    SCHEMES,
    SPECIAL_TOKENS,
    encode_conversation,
    prompt_ids,
    suite_corpus,
    train_tokenizer,
)

CHAT = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is 12 + 30?"},
    {"role": "assistant", "content": "12 + 30 = 42. Answer: 42"},
    {"role": "user", "content": "  And  in words?\n"},
    {"role": "assistant", "content": " forty-two\nthat's it "},
]


@pytest.fixture(scope="module", params=SCHEMES)
def tok(request):
    # A small suite sample keeps training around a second while covering all seven categories.
    return train_tokenizer(600, seed=0, per_category=60, scheme=request.param)


def _scheme(tok) -> str:
    return "glue" if tok.backend_tokenizer.normalizer is not None else "metaspace"


def test_special_and_byte_ids_are_fixed(tok):
    assert tok.convert_tokens_to_ids(list(SPECIAL_TOKENS)) == list(range(7))
    assert tok.convert_tokens_to_ids(list(BYTE_TOKENS)) == list(range(7, 263))
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (0, 1, 2, 3)
    state = json.loads(tok.backend_tokenizer.to_str())
    assert state["model"]["type"] == "BPE" and state["model"]["byte_fallback"] is True
    # Byte tokens are vocabulary entries, not added tokens: only the seven specials are added.
    assert [t["content"] for t in state["added_tokens"]] == list(SPECIAL_TOKENS)


def test_tool_call_tokens_absent_until_an_expert_adds_them(tok):
    vocab = tok.get_vocab()
    assert "<tool_call>" not in vocab and "</tool_call>" not in vocab
    assert len(tok.encode("<tool_call>", add_special_tokens=False)) > 1
    expert = train_tokenizer(600, seed=0, per_category=60)
    expert.add_special_tokens(
        {"additional_special_tokens": ["<tool_call>", "</tool_call>"]}, replace_extra_special_tokens=False
    )
    ids = expert.encode('x <tool_call>{"a": 1}</tool_call>', add_special_tokens=False)
    assert expert.convert_tokens_to_ids("<tool_call>") in ids
    assert expert.decode(ids) == 'x <tool_call>{"a": 1}</tool_call>'
    # The base ids are untouched: an expert's tokenizer extends the base vocabulary.
    assert expert.convert_tokens_to_ids(list(SPECIAL_TOKENS)) == list(range(7))


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "  lead",
        "trail  ",
        "a\n\n b\r\n",
        "héllo 日本語 🎉",
        "\x00\x7f\ufeff",
        "x<s>y</s>",
        "12345 678",
    ],
)
def test_round_trip_edge_cases(tok, text):
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.text(
        alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters=METASPACE + GLUE),
        max_size=80,
    )
)
def test_round_trip_any_unicode(tok, text):
    # U+2581 is the metaspace marker itself; it is the one character that decodes to a space.
    # U+2040 is the glue mark, which the glue scheme's decoder removes.
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text


def test_glue_spells_a_word_alike_wherever_it_stands(tok):
    """Under "glue" a name has one spelling after a space, punctuation, a newline or at the start
    (so a model can copy it from a prompt token by token); under "metaspace" it has two."""
    contexts = [
        "Call subtract_two now",
        "`subtract_two`",
        "(subtract_two)",
        "x\nsubtract_two",
        "subtract_two",
    ]
    spellings = set()
    for text in contexts:
        start = text.index("subtract")
        enc = tok.backend_tokenizer.encode(text, add_special_tokens=False)
        word = [
            i
            for i, (a, b), t in zip(enc.ids, enc.offsets, enc.tokens, strict=True)
            if a < start + len("subtract") and b > start and t != GLUE
        ]
        spellings.add(tuple(word))
    assert len(spellings) == (1 if _scheme(tok) == "glue" else 2)
    unknown = "no such scheme"
    with pytest.raises(BarkitError, match="scheme"):
        train_tokenizer(600, texts=["abc"], scheme=unknown)


def test_training_is_deterministic_and_learns_domain_text(tok):
    again = train_tokenizer(600, seed=0, per_category=60, scheme=_scheme(tok))
    assert again.backend_tokenizer.to_str() == tok.backend_tokenizer.to_str()
    sample = " ".join(suite_corpus(seed=0, per_category=20))
    ids = tok.encode(sample, add_special_tokens=False)
    # Even this 600-token vocabulary must merge the suite's words (1.0 would mean no merges).
    assert len(sample.encode()) / len(ids) > 1.6
    with pytest.raises(BarkitError, match="vocab_size"):
        train_tokenizer(100, texts=["abc"])


def test_chat_template_renders_turns(tok):
    text = tok.apply_chat_template(CHAT[:2], tokenize=False, add_generation_prompt=True)
    assert text == "<s><|system|>\nYou are terse.</s>\n<|user|>\nWhat is 12 + 30?</s>\n<|assistant|>\n"
    with pytest.raises(BarkitError, match="role"):
        encode_conversation(tok, [{"role": "tool", "content": "x"}], 64)


def test_assistant_mask_covers_answers_and_their_eos(tok):
    ids, mask = encode_conversation(tok, CHAT, max_len=1000)
    assert len(ids) == len(mask) and set(mask) == {0, 1}
    hf = tok.apply_chat_template(CHAT, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    assert hf["input_ids"] == ids
    assert hf["assistant_masks"] == mask
    decoded = tok.decode([i for i, m in zip(ids, mask, strict=True) if m])
    assert decoded == "12 + 30 = 42. Answer: 42</s> forty-two\nthat's it </s>"
    short_ids, short_mask = encode_conversation(tok, CHAT, max_len=10)
    assert short_ids == ids[:10] and short_mask == mask[:10]


def test_prompt_ids_match_generation_prompt(tok):
    expected = tok.apply_chat_template(CHAT[:4], tokenize=True, add_generation_prompt=True, return_dict=True)
    assert prompt_ids(tok, CHAT[:4]) == expected["input_ids"]
    assert tok.decode(prompt_ids(tok, CHAT[:2])).endswith("<|assistant|>\n")


def test_saved_folder_loads_with_auto_tokenizer(tok, tmp_path):
    from transformers import AutoTokenizer

    from barkit.modeling import save_tokenizer

    save_tokenizer(tok, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokenizer.json", "tokenizer_config.json"]
    assert "chat_template" in json.loads((tmp_path / "tokenizer_config.json").read_text())
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    for text in ["Compute 4 x 4.", "  def f(x):\n    return x", "日本 <|user|> ok"]:
        assert loaded.encode(text, add_special_tokens=False) == tok.encode(text, add_special_tokens=False)
        assert loaded.decode(loaded.encode(text, add_special_tokens=False)) == text
    assert loaded.apply_chat_template(CHAT, tokenize=False) == tok.apply_chat_template(CHAT, tokenize=False)
    assert (loaded.bos_token, loaded.eos_token, loaded.pad_token, loaded.unk_token) == (
        "<s>",
        "</s>",
        "<pad>",
        "<unk>",
    )
    assert prompt_ids(loaded, CHAT[:2]) == prompt_ids(tok, CHAT[:2])
