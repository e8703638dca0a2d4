"""In-prompt copying: the base's curriculum data and the copy probe that measures it.

BAR's SFT keeps attention frozen, so an expert can only learn what the base's attention already
supports, and every domain of the micro-suite needs attention that copies from the prompt (the
operands of a sum, a function's signature, a tool call's arguments). Small models learn to copy
(induction heads) only after tens of millions of tokens of ordinary text; synthetic copy
documents make the skill appear much sooner. This module makes those documents and measures the
skill:

* **spans** are a few random tokens-to-be: invented syllable words, numbers, identifiers. A
  span belongs to the probe (held out) when its SHA-256 falls in the test share, to training
  otherwise, so the probe only ever asks for copies of spans no training document contained.
* **documents** (pre-training): a span repeated after a separator, key-value recall, a record
  copied into a JSON-like form, a name copied into a call signature;
* **conversations** (pre- and post-training): "repeat exactly" requests in chat form;
* **the probe**: held-out spans in chat form, scored by exact match of the greedy reply.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

Conversation = list[dict[str, str]]
# One span in this many belongs to the probe (by hash), the rest to training.
PROBE_SHARE = 8
CONSONANTS = "bdfgklmnprstvz"
VOWELS = "aeiou"
TRAIN_ASKS = (
    "Repeat exactly: {s}",
    "Copy this: {s}",
    "Say back the following words: {s}",
    "Echo this text: {s}",
)
PROBE_ASK = "Repeat exactly: {s}"


def _syllables(rng: random.Random, lo: int, hi: int) -> str:
    return "".join(rng.choice(CONSONANTS) + rng.choice(VOWELS) for _ in range(rng.randint(lo, hi)))


def _piece(rng: random.Random) -> str:
    """One word of a span: an invented word, a number, or an identifier."""
    kind = rng.random()
    if kind < 0.6:
        return _syllables(rng, 1, 3)
    if kind < 0.8:
        return str(rng.randint(0, 999))
    return f"{_syllables(rng, 1, 2)}_{_syllables(rng, 1, 2)}"


def is_probe_span(span: str) -> bool:
    """True when ``span`` is held out for the probe (never appears in training data)."""
    return hashlib.sha256(span.encode()).digest()[0] % PROBE_SHARE == 0


def span(rng: random.Random, *, probe: bool = False, lo: int = 2, hi: int = 8) -> str:
    """A random span of ``lo``..``hi`` words from the training or the probe side of the split."""
    while True:
        text = " ".join(_piece(rng) for _ in range(rng.randint(lo, hi)))
        if is_probe_span(text) == probe:
            return text


def _repeat_doc(rng: random.Random) -> str:
    s = span(rng)
    sep = rng.choice((" | ", " -> ", "\n", " ; "))
    return s + sep + s + (sep + s if rng.random() < 0.3 else "")


def _recall_doc(rng: random.Random) -> str:
    keys = list(dict.fromkeys(_syllables(rng, 1, 2) for _ in range(rng.randint(2, 6))))
    values = [span(rng, lo=1, hi=2) for _ in keys]
    facts = "; ".join(f"{k} = {v}" for k, v in zip(keys, values, strict=True))
    asked = rng.randrange(len(keys))
    return f"{facts}. {keys[asked]}? {values[asked]}"


def _record_doc(rng: random.Random) -> str:
    fields = list(dict.fromkeys(_syllables(rng, 1, 2) for _ in range(rng.randint(1, 3))))
    values = [span(rng, lo=1, hi=2) for _ in fields]
    plain = ", ".join(f"{f} {v}" for f, v in zip(fields, values, strict=True))
    body = ", ".join(f'"{f}": "{v}"' for f, v in zip(fields, values, strict=True))
    return f"record: {plain}\n{{{body}}}"


def _signature_doc(rng: random.Random) -> str:
    name = f"{_syllables(rng, 1, 2)}_{_syllables(rng, 1, 2)}"
    args = ", ".join(dict.fromkeys(rng.choice("abcxyz") + rng.choice(("", "s", "1")) for _ in range(2)))
    return f"name: {name}({args})\ndef {name}({args}):"


DOCUMENT_KINDS: dict[str, Callable[[random.Random], str]] = {
    "repeat": _repeat_doc,
    "recall": _recall_doc,
    "record": _record_doc,
    "signature": _signature_doc,
}


def copy_document(rng: random.Random) -> str:
    """One pre-training copy document of a random kind."""
    return rng.choice(list(DOCUMENT_KINDS.values()))(rng)


def copy_conversation(rng: random.Random) -> Conversation:
    """A chat request to repeat a training span, answered exactly."""
    s = span(rng)
    return [
        {"role": "user", "content": rng.choice(TRAIN_ASKS).format(s=s)},
        {"role": "assistant", "content": s},
    ]


def probe_items(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` (prompt, expected reply) pairs over held-out spans."""
    rng = random.Random(f"copy-probe|{seed}")
    spans = [span(rng, probe=True, lo=3, hi=8) for _ in range(n)]
    return [(PROBE_ASK.format(s=s), s) for s in spans]


def copy_probe(
    model: Any, tokenizer: PreTrainedTokenizerBase, n: int = 100, *, seed: int = 0, batch_size: int = 32
) -> dict[str, Any]:
    """Share (in %) of held-out spans the model repeats exactly, greedy, in chat form."""
    from barkit.generate import generate

    items = probe_items(n, seed)
    prompts = [[{"role": "user", "content": prompt}] for prompt, _ in items]
    longest = max(len(tokenizer(expected, add_special_tokens=False)["input_ids"]) for _, expected in items)
    replies = generate(model, tokenizer, prompts, max_new_tokens=longest + 4, batch_size=batch_size)
    hits = [reply.strip() == expected for reply, (_, expected) in zip(replies, items, strict=True)]
    score = round(100.0 * sum(hits) / len(hits), 2)
    examples = [
        {"prompt": p, "expected": e, "reply": r} for (p, e), r in list(zip(items, replies, strict=True))[:5]
    ]
    return {"copy": score, "items": len(items), "examples": examples}
