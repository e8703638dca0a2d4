"""Augmented copies of tool-call SFT conversations: the same call, other values and other words.

A small tool-use dataset teaches a small model the wrong lesson. The micro-suite's tool-use
train split has three request phrasings per tool and a dozen values per argument; an expert
trained on it learns which phrasing means which tool and recalls the values it saw, instead of
reading the request (docs/results/README.md, "Tool use: augmented calls"). An augmented copy
keeps a conversation's tool and argument names and changes what could be memorised:

* **fresh values**: every argument value that the request states verbatim (a string or a
  number, not an enum member or a flag) is replaced by an invented one of the same shape
  (invented words with the same capitalisation, digits for digits), in the request and in the
  call alike, so the value can only be copied from the request;
* **renamed enum members** (half the copies): where the prompt lists a parameter's members as
  ``name: a|b|c`` (barkit's signature lines), each member is renamed to an invented word in the
  listing, the request and the call;
* **other words** (half the copies each): either light noise on the request (a generic opening
  or closing phrase, one word that holds no value dropped), or a request rebuilt from one or two
  of its own content words and the values, each behind a generic link word ("with", "for", "at",
  ...) in a shuffled order.

Only the conversation itself is used (its request, its call and the tool listing in its
prompt), so a user's own tool-call data can be augmented like the suite's. A conversation whose
last assistant turn holds no parseable call is not augmented.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from barkit.copying import _CLOSERS, _LINKS, _OPENERS, _syllables
from barkit.suite.tools import REQUEST_MARK, _spoken, call_text, parse_call

Conversation = list[dict[str, str]]

# An enum parameter as a signature lists it: ``name: a|b|c`` or ``name?: a|b|c`` (members only).
_MEMBERS = r"\??: ([\w ]+(?:\|[\w ]+)+)"
# Letters drawn for invented words, roughly in English proportions, so that the words break into
# word pieces the way unseen names do (single letters, short pieces), not only syllable pairs.
_LETTERS = "eeeeaaaoooiiinnsshhrrddllcumwfgypbvk"
# Words a rebuilt request never uses as the cue that names the tool.
_FUNCTION_TEXT = """a an the is are of in on at to for with by from and or me my i you your it this that
what how can could would please now right some about into called set get put want"""
_FUNCTION_WORDS = frozenset(_FUNCTION_TEXT.split())


def _word(rng: random.Random) -> str:
    if rng.random() < 0.4:
        return _syllables(rng, 1, 3)
    return "".join(rng.choice(_LETTERS) for _ in range(rng.randint(2, 7)))


def fresh_value(value: Any, rng: random.Random) -> Any:
    """An invented value shaped like ``value``: a number for a number, digits swapped for digits
    in a string of digits and punctuation (``19:30``), invented words with the same
    capitalisation otherwise."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return rng.randint(1, 999)
    text = str(value)
    if re.fullmatch(r"[\d\W]+", text):
        return re.sub(r"\d", lambda _: str(rng.randint(0, 9)), text)
    words = []
    for old in text.split():
        new = _word(rng)
        words.append(
            new.upper() if old.isupper() and len(old) > 1 else new.capitalize() if old[0].isupper() else new
        )
    return " ".join(words)


def _whole(text: str) -> re.Pattern[str]:
    return re.compile(r"(?<![\w])" + re.escape(text) + r"(?![\w])")


def _split(content: str) -> tuple[str, str]:
    """A user turn as (tool listing, request): barkit's layout puts the request after ``Request: ``."""
    at = content.rfind(REQUEST_MARK)
    if at < 0:
        return "", content
    return content[: at + len(REQUEST_MARK)], content[at + len(REQUEST_MARK) :]


def _rename_enums(
    listing: str, request: str, arguments: dict[str, Any], rng: random.Random
) -> tuple[str, str]:
    """Rename the members of every ``name: a|b|c`` listed for an argument of the call (one
    renaming per member set, so ``source`` and ``target`` currencies stay the same set)."""
    renames: dict[str, str] = {}
    for name in arguments:
        listed = re.search(re.escape(name) + _MEMBERS, listing)
        if listed is None:
            continue
        members = listed.group(1).split("|")
        new = dict(zip(members, (_word(rng) for _ in members), strict=True))
        if any(m in renames for m in members) or len(set(new.values())) < len(members):
            continue
        renames.update(new)
    if not renames:
        return listing, request
    for name, value in list(arguments.items()):
        if isinstance(value, str) and value in renames:
            arguments[name] = renames[value]
    listing = re.sub(
        _MEMBERS,
        lambda m: (
            m.group(0)[: m.start(1) - m.start(0)] + "|".join(renames.get(x, x) for x in m.group(1).split("|"))
        ),
        listing,
    )
    for old, new_member in renames.items():
        request = _whole(old).sub(new_member, request)
    return listing, request


def _noisy(request: str, said: set[str], rng: random.Random) -> str:
    words = request.split()
    if len(words) > 3 and rng.random() < 0.3:
        free = [
            i for i, w in enumerate(words) if re.search(r"\w", w) and not any(v in w.lower() for v in said)
        ]
        if free:
            del words[rng.choice(free)]
    out = " ".join(words)
    opener = rng.choice(_OPENERS) if rng.random() < 0.5 else ""
    if opener:
        first = re.sub(r"\W", "", out.split()[0]).lower() if out.split() else ""
        start = out[:1] if first in said else out[:1].lower()  # a value keeps its spelling
        out = f"{opener[0].upper()}{opener[1:]} {start}{out[1:]}"
    if rng.random() < 0.5:
        end = out[-1] if out[-1] in ".?!" else ""
        out = out.rstrip(".?!") + rng.choice(_CLOSERS) + end
    return out


def _rebuilt(request: str, said: dict[str, str], rng: random.Random) -> str:
    """The request's own content words (one or two) and each value behind a link word, shuffled."""
    rest = request
    for text in said.values():
        rest = _whole(text).sub(" ", rest)
    cues = [w for w in re.findall(r"[A-Za-z]+", rest) if w.lower() not in _FUNCTION_WORDS and len(w) > 1]
    phrases = []
    for name, text in said.items():
        link = rng.choice(_LINKS)
        phrases.append(
            f"{link} {name} {text}"
            if rng.random() < 0.3
            else f"{link} {text}"
            if rng.random() < 0.7
            else text
        )
    rng.shuffle(phrases)
    cue = " ".join(rng.sample(cues, min(len(cues), rng.choice((1, 1, 2))))).lower()
    where = rng.randint(0, len(phrases))
    words = [rng.choice(_OPENERS), *phrases[:where], cue, *phrases[where:]]
    out = " ".join(w for w in words if w) + rng.choice(_CLOSERS) + rng.choice((".", "?", "!", ""))
    if any(out.startswith(text) for text in said.values()):
        return out  # a value keeps its spelling
    return out[:1].upper() + out[1:]


def tool_call_variant(conversation: Conversation, rng: random.Random) -> Conversation | None:
    """An augmented copy of a tool-call conversation (see the module docstring), or None when its
    last assistant turn holds no call or its last user turn states none of the call's values."""
    users = [i for i, m in enumerate(conversation) if m["role"] == "user"]
    answers = [i for i, m in enumerate(conversation) if m["role"] == "assistant"]
    if not users or not answers or answers[-1] < users[-1]:
        return None
    call = parse_call(conversation[answers[-1]]["content"])
    if call is None:
        return None
    listing, request = _split(conversation[users[-1]]["content"])
    arguments = dict(call["arguments"])
    stated: dict[str, str] = {}
    for name, value in call["arguments"].items():
        text = _spoken(value)
        if isinstance(value, bool) or not text or _whole(text).search(listing):
            continue  # flags and listed enum members stay; renaming handles the members
        if len(_whole(text).findall(request)) != 1:
            continue  # not stated once, verbatim: cannot be swapped safely
        new = fresh_value(value, rng)
        request = _whole(text).sub(_spoken(new), request)
        arguments[name] = new
        stated[name] = _spoken(new)
    if not stated and not listing:
        return None
    if rng.random() < 0.5:
        listing, request = _rename_enums(listing, request, arguments, rng)
    for name, value in arguments.items():
        if (
            name not in stated
            and not isinstance(value, bool)
            and len(_whole(_spoken(value)).findall(request)) == 1
        ):
            stated[name] = _spoken(value)  # an enum member the request names: keep it in a rebuild
    if rng.random() < 0.5 or not stated:
        request = _noisy(request, {w.lower() for t in stated.values() for w in t.split()}, rng)
    else:
        request = _rebuilt(request, stated, rng)
    out = [dict(m) for m in conversation]
    out[users[-1]]["content"] = listing + request
    out[answers[-1]]["content"] = call_text(call["name"], arguments)
    return out


#: augmentations an SFT stage can apply to its domain conversations (``StageConfig.augment``)
AUGMENT: dict[str, Callable[[Conversation, random.Random], Conversation | None]] = {
    "tool_calls": tool_call_variant,
}


def with_augmented(
    conversations: Iterable[Conversation],
    augment: dict[str, float],
    seed: int,
    counts: dict[str, int] | None = None,
) -> Iterator[Conversation]:
    """Each conversation, followed by its augmented copies: ``ratio`` per conversation for each
    augmentation (the fraction as a coin flip), seeded by the augmentation's name and ``seed``.
    ``counts`` (if given) receives how many copies each augmentation made."""
    rngs = {name: random.Random(f"augment|{name}|{seed}") for name in sorted(augment)}
    for conversation in conversations:
        yield conversation
        for name, rng in rngs.items():
            ratio = augment[name]
            copies = int(ratio) + (rng.random() < ratio - int(ratio))
            for _ in range(copies):
                variant = AUGMENT[name](conversation, rng)
                if variant is not None:
                    if counts is not None:
                        counts[name] = counts.get(name, 0) + 1
                    yield variant
