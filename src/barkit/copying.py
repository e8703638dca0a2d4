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
  copied into a JSON-like form, a name copied into a call signature, and (kind ``call``) a
  request copied into a function call in the tool-use format: invented tools are listed as
  signatures, a request names one of them by a word of its name or description and gives its
  argument values inside an ordinary sentence, and the call copies the tool's name and each
  value into its slot (chosen by the value's type: the number, the enum member, the rest);
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


# Words of ordinary requests around the named tool and its values. A generic list, written
# without looking at the suite's request templates; the tools, names and values are invented.
_OPENERS = (
    "",
    "please",
    "can you",
    "could you",
    "I want to",
    "I would like to",
    "go and",
    "now",
    "quickly",
    "help me",
    "let us",
    "hey,",
    "I need you to",
)
_LINKS = ("for", "with", "on", "in", "at", "to", "about", "of", "by", "from", "and", "using", "as")
_CLOSERS = ("", "", " please", " now", " for me", " thanks", " right away", " if you can")


def _invented_tool(rng: random.Random, taken: set[str], probe: bool = False) -> tuple[Any, str]:
    """A tool with invented words for its name, description and parameters; and its cue word.

    The tool's name decides its side of the split, like a span's (:func:`is_probe_span`).
    """
    from barkit.suite.tools import Param, Tool

    while True:
        verb, noun = _syllables(rng, 1, 2), _syllables(rng, 1, 3)
        extra = _syllables(rng, 1, 3)
        fresh = not {verb, noun, extra} & taken and len({verb, noun, extra}) == 3
        if fresh and is_probe_span(f"{verb}_{noun}") == probe:
            break
    taken.update((verb, noun, extra))
    params: list[Any] = []
    names: set[str] = set()
    kinds = ["string", "integer", "enum", "boolean"]
    rng.shuffle(kinds)
    for i, kind in enumerate(kinds[: rng.randint(1, 3)]):
        name = _syllables(rng, 1, 2)
        while name in names or name in taken:
            name = _syllables(rng, 1, 2)
        names.add(name)
        required = i == 0 or rng.random() < 0.5
        if kind == "enum":
            members = tuple(dict.fromkeys(_syllables(rng, 1, 2) for _ in range(rng.randint(2, 4))))
            params.append(Param(name, "string", required, enum=members))
        else:
            params.append(Param(name, kind, required))
    # The description always holds ``extra`` (a cue the name lacks) and usually the noun.
    words = [extra, *rng.sample([noun, _syllables(rng, 1, 2), _syllables(rng, 1, 2)], 2)]
    rng.shuffle(words)
    description = " ".join(words)
    tool = Tool(f"{verb}_{noun}", description, tuple(params), (), ())
    return tool, rng.choice((verb, noun, extra))


def _value(rng: random.Random, param: Any) -> tuple[Any, str]:
    """A value for ``param`` and the words that say it in a request."""
    if param.enum:
        value = rng.choice(param.enum)
        return value, value
    if param.type == "integer":
        value = rng.choice((rng.randint(1, 60), rng.randint(1, 999)))
        return value, str(value)
    if param.type == "boolean":
        value = rng.random() < 0.5
        return value, "on" if value else "off"
    text = invented_words(rng)
    return text, text


def invented_words(rng: random.Random) -> str:
    """One to three invented words, all capitalised half the time (a string argument's value)."""
    words = [_syllables(rng, 1, 3) for _ in range(rng.choice((1, 1, 2, 2, 3)))]
    if rng.random() < 0.5:
        words = [w.capitalize() for w in words]
    return " ".join(words)


def _plain_phrase(rng: random.Random, param: Any, said: str) -> str:
    """A value behind a link word, sometimes with the slot's name ("with NAME VALUE")."""
    link = rng.choice(_LINKS)
    if param.type == "boolean" or rng.random() < 0.3:
        return f"{link} {param.name} {said}"
    return f"{link} {said}" if rng.random() < 0.7 else said


def invented_call(
    rng: random.Random,
    value: Callable[[random.Random, Any], tuple[Any, str]],
    phrase: Callable[[random.Random, Any, str], str],
    *,
    probe: bool = False,
) -> tuple[list[Any], Any, str, dict[str, Any], list[str]]:
    """Two or three invented tools (the one to call first), its cue word, its arguments and the
    phrases (shuffled) that state them: ``value`` draws an argument and the words that say it,
    ``phrase`` puts those words in a phrase. The request around the phrases is the caller's."""
    taken: set[str] = set()
    tools = [_invented_tool(rng, taken, probe=probe and i == 0) for i in range(rng.randint(2, 3))]
    tool, cue = tools[0]
    arguments: dict[str, Any] = {}
    phrases: list[str] = []
    for param in tool.params:
        if not param.required and rng.random() < 0.5:
            continue
        arguments[param.name], said = value(rng, param)
        phrases.append(phrase(rng, param, said))
    rng.shuffle(phrases)
    return [t for t, _ in tools], tool, cue, arguments, phrases


def call_example(rng: random.Random, *, probe: bool = False) -> tuple[list[Any], Any, str, dict[str, Any]]:
    """Invented tools as listed (shuffled), the one to call, a request for it, and its arguments.

    ``probe`` draws the called tool from the held-out side (its name never occurs in training).
    """
    listed, tool, cue, arguments, phrases = invented_call(rng, _value, _plain_phrase, probe=probe)
    where = rng.randint(0, len(phrases))
    words = [rng.choice(_OPENERS), *phrases[:where], cue, *phrases[where:]]
    request = " ".join(w for w in words if w) + rng.choice(_CLOSERS) + rng.choice((".", "?", "!", ""))
    rng.shuffle(listed)
    return listed, tool, request[0].upper() + request[1:], arguments


def _call_doc(rng: random.Random) -> str:
    """A tool list, a request in a sentence, and the call that copies its name and values."""
    import json

    from barkit.suite.tools import tools_prompt

    listed, tool, request, arguments = call_example(rng)
    return tools_prompt(listed, request) + "\n" + json.dumps({"name": tool.name, "arguments": arguments})


def call_conversation(rng: random.Random) -> Conversation:
    """A tool-use turn with invented tools: the user lists them and asks, the assistant calls.

    The prompt has the micro-suite's tool-use layout and the reply its call format, but every
    tool, parameter and value is invented, so the only way to the reply is to copy the named
    tool and the request's values into the call (the suite's tools and requests never occur).
    """
    return call_turn(*call_example(rng))


def call_turn(listed: list[Any], tool: Any, request: str, arguments: dict[str, Any]) -> Conversation:
    """A tool-use exchange in the suite's layout: the listed tools and request, then the call."""
    from barkit.suite.tools import call_text, tools_prompt

    return [
        {"role": "user", "content": tools_prompt(listed, request)},
        {"role": "assistant", "content": call_text(tool.name, arguments)},
    ]


DOCUMENT_KINDS: dict[str, Callable[[random.Random], str]] = {
    "repeat": _repeat_doc,
    "recall": _recall_doc,
    "record": _record_doc,
    "signature": _signature_doc,
    "call": _call_doc,
}
#: the kinds a base recipe draws from when it names none (the bases built before ``call``)
CLASSIC_KINDS = ("repeat", "recall", "record", "signature")


def copy_document(rng: random.Random, kinds: tuple[str, ...] = CLASSIC_KINDS) -> str:
    """One pre-training copy document of a kind drawn uniformly from ``kinds``."""
    return DOCUMENT_KINDS[rng.choice(kinds)](rng)


def copy_conversation(rng: random.Random) -> Conversation:
    """A chat request to repeat a training span, answered exactly."""
    s = span(rng)
    return [
        {"role": "user", "content": rng.choice(TRAIN_ASKS).format(s=s)},
        {"role": "assistant", "content": s},
    ]


#: synthetic SFT conversations a stage can add to its domain data (``StageConfig.synthetic``)
SYNTHETIC: dict[str, Callable[[random.Random], Conversation]] = {
    "invented_calls": call_conversation,
    "repeat": copy_conversation,
}


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


def call_probe(
    model: Any, tokenizer: PreTrainedTokenizerBase, n: int = 100, *, seed: int = 0, batch_size: int = 32
) -> dict[str, Any]:
    """Share (in %) of held-out ``call`` documents whose call the model completes exactly.

    The document up to its last line is the prompt (plain text, as in pre-training) and the
    greedy continuation's first line must equal the call. The called tool's name is held out
    (never in training), so this measures copying into slots, not recall. ``name`` is the share
    whose call at least starts with the right tool.
    """
    import json

    from barkit.generate import generate
    from barkit.suite.tools import tools_prompt

    rng = random.Random(f"call-probe|{seed}")
    prompts, calls = [], []
    for _ in range(n):
        listed, tool, request, arguments = call_example(rng, probe=True)
        prompts.append(tools_prompt(listed, request) + "\n")
        calls.append(json.dumps({"name": tool.name, "arguments": arguments}))
    longest = max(len(tokenizer(c, add_special_tokens=False)["input_ids"]) for c in calls)
    replies = generate(model, tokenizer, prompts, max_new_tokens=longest + 4, batch_size=batch_size, raw=True)
    lines = [reply.strip().split("\n", 1)[0].strip() if reply.strip() else "" for reply in replies]
    exact = [line == call for line, call in zip(lines, calls, strict=True)]
    named = [line.split(",", 1)[0] == call.split(",", 1)[0] for line, call in zip(lines, calls, strict=True)]
    return {
        "call": round(100.0 * sum(exact) / n, 2),
        "name": round(100.0 * sum(named) / n, 2),
        "items": n,
        "examples": [
            {"prompt": p, "expected": c, "reply": r}
            for p, c, r in list(zip(prompts, calls, lines, strict=True))[:5]
        ],
    }
