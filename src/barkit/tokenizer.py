"""barkit's tokenizer: a Llama-2-style byte-fallback BPE trained locally on the micro-suite.

Layout of the vocabulary (fixed, so that every model built from a base agrees on it):

* ids 0..6: ``<unk> <s> </s> <pad> <|system|> <|user|> <|assistant|>`` (added special tokens);
* ids 7..262: the byte tokens ``<0x00>`` .. ``<0xFF>``, ordinary BPE vocabulary entries, so that any
  character the merges do not cover falls back to its UTF-8 bytes (``byte_fallback=True``);
* the rest: characters and merges learned from the suite's train-split text.

Pre-tokenisation isolates newlines, splits digits one by one (arithmetic sees every digit) and
turns spaces into the metaspace ``▁``. Two schemes decide how words meet spaces (``SCHEMES``):

* ``metaspace`` (Llama-2's): a word carries the space before it, if any. ``name`` after a
  backtick, a parenthesis or an underscore is then spelled with other ids than `` name`` after
  a space: on the suite's code and tool-use test items only 4% and 11% of the prompt words that
  the answer repeats are spelled alike in both, so a model cannot copy them token by token.
* ``glue``: every word is spelled as if a space preceded it. Where none does, a normaliser
  inserts the glue mark ``⁀`` (U+2040) and a space, and the decoder removes each ``⁀▁`` again.
  Words then have one spelling wherever they stand (100% of the repeated prompt words above),
  and the base's copying applies to names and arguments directly, for about 18% more tokens.

Nothing is prepended to a text: the Llama-2 habit of prepending ``▁`` and stripping it again on
decode loses a real leading space whenever the text already starts with one, so
decode(encode(s)) == s holds for every string without ``▁`` (U+2581, which the metaspace
cannot tell from a space) and, under ``glue``, without ``⁀``.

Tool-call markers (``<tool_call>``) are deliberately absent: the tool-use expert adds them with
``tokenizer.add_special_tokens`` and learns their embeddings during its own SFT.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from barkit.errors import BarkitError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

UNK, BOS, EOS, PAD = "<unk>", "<s>", "</s>", "<pad>"
ROLES = ("system", "user", "assistant")
SPECIAL_TOKENS = (UNK, BOS, EOS, PAD) + tuple(f"<|{role}|>" for role in ROLES)
BYTE_TOKENS = tuple(f"<0x{b:02X}>" for b in range(256))
METASPACE = "\u2581"
GLUE = "\u2040"
#: pre-tokenisation schemes (see the module docstring); ``metaspace`` is the default
SCHEMES = ("metaspace", "glue")
# Under "glue": a space-less word start gets GLUE + space; the pieces are newlines, the glue
# mark, a word with its (real or inserted) space, one digit, a run of spaces (leaving the last
# one to a following word), and a punctuation run with at most one leading space.
_GLUE_AT = r"(?<![\p{L} ])(?=\p{L})"
_GLUE_PIECES = r"\n|\u2040| ?\p{L}+|\p{N}| +(?= \p{L})| ?[^\p{L}\p{N}\s\u2040]+| +"
# Markers that experts add later as special tokens; the base must not learn them as merges from
# the tool-use text (where they appear literally), or two different ids would spell one marker.
EXPERT_MARKERS = ("<tool_call>", "</tool_call>")
# Characters kept as single tokens before merging; rarer ones are spelled with byte tokens.
ALPHABET_LIMIT = 160

# Each turn is "<|role|>\n{content}</s>\n"; assistant content and its </s> are the SFT loss
# positions, marked with {% generation %} so that HF's assistant-mask machinery sees them too.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unknown chat role: ' + message['role']) }}"
    "{% endif %}"
    "{{ '<|' + message['role'] + '|>\n' }}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}"
    "{% else %}"
    "{{ message['content'] + eos_token }}"
    "{% endif %}"
    "{{ '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


def suite_corpus(seed: int = 0, per_category: int = 2000) -> list[str]:
    """Train-split text of all seven categories: prompts, answers and raw mid-training text."""
    from barkit.suite import CATEGORIES, get_category

    texts: list[str] = []
    for name in CATEGORIES:
        category = get_category(name)
        capacity = category.capacity("train")
        n = per_category if capacity is None else min(per_category, capacity)
        for item in category.items("train", n, seed):
            texts.extend((item.prompt, item.answer))
        texts.extend(category.text(per_category, seed))
    return texts


def check_scheme(scheme: str) -> None:
    """BarkitError unless ``scheme`` is one of :data:`SCHEMES`."""
    if scheme not in SCHEMES:
        raise BarkitError(f"unknown tokenizer scheme {scheme!r}; known: {', '.join(SCHEMES)}")


def _pipeline(model: Any, scheme: str = "metaspace") -> Any:
    """A ``tokenizers.Tokenizer`` around ``model`` with barkit's pre-tokenizer and decoder."""
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers

    check_scheme(scheme)
    tok = Tokenizer(model)
    if scheme == "metaspace":
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split("\n", "isolated"),
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.Metaspace(METASPACE, prepend_scheme="never", split=True),
            ]
        )
        tok.decoder = decoders.Sequence(
            [decoders.Replace(METASPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
        )
        return tok
    tok.normalizer = normalizers.Replace(Regex(_GLUE_AT), GLUE + " ")
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_GLUE_PIECES), "isolated"),
            pre_tokenizers.Metaspace(METASPACE, prepend_scheme="never", split=False),
        ]
    )
    # Fuse first, so that the glue mark and the next token's space meet in one string; a glue
    # mark that a model emits without a word after it is dropped as well.
    tok.decoder = decoders.Sequence(
        [
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Replace(GLUE + METASPACE, ""),
            decoders.Replace(GLUE, ""),
            decoders.Replace(METASPACE, " "),
        ]
    )
    return tok


def _learn_bpe(
    texts: Iterable[str], vocab_size: int, scheme: str = "metaspace"
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocabulary and merges learned from ``texts``, with specials and byte tokens first."""
    from tokenizers import models, trainers

    reserved = list(SPECIAL_TOKENS) + list(BYTE_TOKENS)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=reserved,
        limit_alphabet=ALPHABET_LIMIT,
        show_progress=False,
    )
    tok = _pipeline(models.BPE(unk_token=UNK, byte_fallback=True, fuse_unk=True), scheme)
    tok.train_from_iterator(texts, trainer=trainer)
    state = json.loads(tok.to_str())["model"]
    vocab: dict[str, int] = state["vocab"]
    if any(vocab.get(t) != i for i, t in enumerate(reserved)):
        raise BarkitError("tokenizer training did not place special and byte tokens first")
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1)) for m in state["merges"]]
    return vocab, merges  # type: ignore[return-value]


def build_tokenizer(
    vocab: dict[str, int], merges: list[tuple[str, str]], scheme: str = "metaspace"
) -> PreTrainedTokenizerFast:
    """Wrap a learned BPE in a ``PreTrainedTokenizerFast`` with barkit's specials and template."""
    from tokenizers import AddedToken, models
    from transformers import PreTrainedTokenizerFast

    bpe = models.BPE(vocab=vocab, merges=merges, unk_token=UNK, byte_fallback=True, fuse_unk=True)
    tok = _pipeline(bpe, scheme)
    # Only the seven specials are added tokens; byte tokens stay plain vocabulary entries, as in
    # Llama-2, so that decoding them goes through ByteFallback.
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        pad_token=PAD,
        extra_special_tokens=[f"<|{role}|>" for role in ROLES],
        clean_up_tokenization_spaces=False,
        padding_side="left",
        model_max_length=1 << 20,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def train_tokenizer(
    vocab_size: int,
    seed: int = 0,
    *,
    texts: Sequence[str] | None = None,
    per_category: int = 2000,
    scheme: str = "metaspace",
) -> PreTrainedTokenizerFast:
    """Train barkit's tokenizer on the suite's train text (or ``texts``); deterministic per seed.

    ``seed`` picks the suite sample; the BPE trainer itself is deterministic. ``scheme`` is one
    of ``SCHEMES``.
    """
    check_scheme(scheme)
    minimum = len(SPECIAL_TOKENS) + len(BYTE_TOKENS) + 1
    if vocab_size < minimum:
        raise BarkitError(f"vocab_size {vocab_size} too small (at least {minimum})")
    corpus = list(texts) if texts is not None else suite_corpus(seed, per_category)
    if not corpus:
        raise BarkitError("no text to train the tokenizer on")
    vocab, merges = _learn_bpe([_without_markers(t) for t in corpus], vocab_size, scheme)
    learned = sorted(m for m in EXPERT_MARKERS if m in vocab)
    if learned:
        raise BarkitError(f"tokenizer learned expert marker(s) {learned} from the training text")
    return build_tokenizer(vocab, merges, scheme)


def _without_markers(text: str) -> str:
    for marker in EXPERT_MARKERS:
        text = text.replace(marker, " ")
    return text


def _role_header(role: str) -> str:
    if role not in ROLES:
        raise BarkitError(f"unknown chat role {role!r}; expected one of {', '.join(ROLES)}")
    return f"<|{role}|>\n"


def _encode(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    ids: list[int] = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids


def encode_conversation(
    tokenizer: PreTrainedTokenizerBase, messages: Sequence[dict[str, str]], max_len: int
) -> tuple[list[int], list[int]]:
    """Token ids of a chat and the SFT loss mask (1 on assistant content and its closing ``</s>``).

    Pieces are encoded one by one; since newlines and special tokens never merge with their
    neighbours, the ids equal those of the rendered chat template, and the mask is exact.
    """
    eos = tokenizer.eos_token_id
    newline = _encode(tokenizer, "\n")
    ids: list[int] = [tokenizer.bos_token_id]
    mask: list[int] = [0]
    for message in messages:
        header = _encode(tokenizer, _role_header(message["role"]))
        body = _encode(tokenizer, message["content"]) + [eos]
        loss = 1 if message["role"] == "assistant" else 0
        ids += header + body + newline
        mask += [0] * len(header) + [loss] * len(body) + [0] * len(newline)
    return ids[:max_len], mask[:max_len]


def prompt_ids(tokenizer: PreTrainedTokenizerBase, messages: Sequence[dict[str, str]]) -> list[int]:
    """The generation prompt: the chat so far followed by ``<|assistant|>\\n``."""
    ids, _ = encode_conversation(tokenizer, messages, max_len=1 << 30)
    return ids + _encode(tokenizer, _role_header("assistant"))
