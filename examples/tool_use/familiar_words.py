"""Do the tool-use test requests fail on words the base has never seen?

The micro base learns its English from the suite's general data (knowledge, reasoning, chat) and
the tool expert adds the tool-use train requests. This script counts, for each test request
template, the words that occur in neither (``nowhere``), then scores a tool expert on the 100
test items twice: as they are, and with each such word swapped for a word of the same role that
training does contain (``drop`` -> ``send``, ``regarding`` -> ``about``; filler words deleted).
The swapped requests are a diagnostic, never a score: they tell whether the expert's failures sit
in the unfamiliar words (the scores rise a lot) or elsewhere (they do not).

::

    .venv/bin/python examples/tool_use/familiar_words.py MODEL [MODEL ...]

Results: docs/results/README.md, "Tool use: words the base never saw".
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from dataclasses import replace
from typing import Any

#: the swaps (``""`` deletes the word); each replacement occurs in the training data (checked)
SWAPS = {
    "please": "",
    "report": "",
    "need": "want",
    "can": "",
    "drop": "send",
    "mail": "email",
    "regarding": "about",
    "come": "",
    "exchange": "convert",
    "could": "",
    "group": "",
    "guests": "people",
    "show": "find",
    "pages": "results",
    "note": "put",
    "save": "add",
    "switch": "turn",
    "make": "set",
    "bright": "",
    "check": "",
    "shares": "stock",
    "quote": "get",
}


def seen_words() -> tuple[Counter[str], Counter[str]]:
    """Words of the base's own data (general categories, and everyday English when its recipe
    has it), and of the tool-use train prompts (lists and requests)."""
    from barkit.base_recipe import everyday_lines, general_data, get_recipe
    from barkit.suite import draw_items

    recipe = get_recipe("tiny")
    texts, conversations = general_data(recipe, 0)
    if recipe.uses_everyday:
        texts = texts + everyday_lines()
    base: Counter[str] = Counter()
    for text in texts:
        base.update(re.findall(r"[a-z]+", text.lower()))
    for conversation in conversations:
        for message in conversation:
            base.update(re.findall(r"[a-z]+", message["content"].lower()))
    tools: Counter[str] = Counter()
    for item in draw_items("tool_use", "train", 2000, 0):
        tools.update(re.findall(r"[a-z]+", item.prompt.lower()))
    return base, tools


#: swapped before the words, where deleting one word would leave a broken phrase
PHRASE_SWAPS = {"a group of ": "", "check on": "of", "come to in": "in"}


def swap(request: str, protected: set[str]) -> str:
    for old, new in PHRASE_SWAPS.items():
        request = request.replace(old, new)

    def one(match: re.Match[str]) -> str:
        word = match.group(0)
        if word.lower() in protected or word.lower() not in SWAPS:
            return word
        new = SWAPS[word.lower()]
        return new.capitalize() if new and word[0].isupper() else new

    out = re.sub(r"[A-Za-z]+", one, request)
    out = re.sub(r"\s+([,.?!])", r"\1", re.sub(r" {2,}", " ", out)).strip(" ,")
    out = re.sub(r",([.?!])", r"\1", out)
    return out[0].upper() + out[1:]


def rewritten_items(n: int) -> tuple[list[Any], list[Any]]:
    from barkit.suite.tools import CATEGORY, REQUEST_MARK

    items = CATEGORY.items("test", n)
    out = []
    for item in items:
        head, request = item.prompt.split(REQUEST_MARK)
        values = {
            w.lower() for v in item.meta["arguments"].values() for w in re.findall(r"[A-Za-z]+", str(v))
        }
        out.append(replace(item, prompt=head + REQUEST_MARK + swap(request, values)))
    return items, out


def free_score(model: Any, tokenizer: Any, items: list[Any]) -> float:
    from barkit.generate import generate
    from barkit.suite.tools import CATEGORY

    replies = generate(
        model,
        tokenizer,
        [[{"role": "user", "content": i.prompt}] for i in items],
        max_new_tokens=64,
        batch_size=32,
    )
    return 100.0 * sum(CATEGORY.score(i, r) for i, r in zip(items, replies, strict=True)) / len(items)


def main() -> None:
    from barkit.loader import load_model
    from barkit.suite.tools import CATALOGUE

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="*")
    parser.add_argument("--n", type=int, default=100)
    args = parser.parse_args()
    base, tools = seen_words()
    seen = base + tools
    missing = sorted({w for w in SWAPS.values() if w and w not in seen})
    if missing:
        raise SystemExit(f"swap targets the training data lacks: {missing}")
    unseen_templates = 0
    for tool in CATALOGUE:
        for template in tool.test_requests:
            words = re.findall(r"[a-z]+", re.sub(r"\{\w+\}", "", template).lower())
            nowhere = [w for w in words if w not in seen]
            unseen_templates += bool(nowhere)
            print(f"{template:50s} nowhere in training: {', '.join(nowhere) or '-'}")
    print(
        f"{unseen_templates} of {sum(len(t.test_requests) for t in CATALOGUE)} test templates hold such a word"
    )
    items, swapped = rewritten_items(args.n)
    frame = []
    for item in items:
        values = {
            w.lower() for v in item.meta["arguments"].values() for w in re.findall(r"[A-Za-z]+", str(v))
        }
        request = item.prompt.split("\n")[-1].split(":", 1)[1].lower()
        frame += [w for w in re.findall(r"[a-z]+", request) if w not in values]
    print(
        f"{len(frame)} words of the {args.n} test requests are not values: {sum(w not in seen for w in frame)} occur "
        f"nowhere in training, {sum(w not in base for w in frame)} not in the base's own data"
    )
    for a, b in list(zip(items, swapped, strict=True))[:3]:
        print(f"  {a.prompt.split(chr(10))[-1]}  ->  {b.prompt.split(chr(10))[-1]}")
    for path in args.models:
        model, tokenizer = load_model(path)
        model.eval()
        print(
            f"{path}: free score {free_score(model, tokenizer, items):.0f} as written, "
            f"{free_score(model, tokenizer, swapped):.0f} with the swaps ({args.n} test items)"
        )


if __name__ == "__main__":
    main()
