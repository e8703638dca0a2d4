"""Chat: instruction following with constraints a verifier can check exactly.

Tasks: upper-case a phrase, reverse the order of words, repeat a word n times, count the letters
of a word, give the first letter of each word, join words with dashes. The verifier checks the
constraint itself, so any completion that satisfies it scores (for example "lamp, lamp" as well
as "lamp lamp"). Train and test use disjoint instruction phrasings over one shared word list:
a test item is a new phrasing of an instruction on a new combination of known words.

The word list is shared on purpose. With disjoint lists, upper-casing, counting letters and
taking initials of a test word needed the spelling of a subword token the model had never
seen spelled, which no amount of training teaches; the tiny base scored 0 on chat that way.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable

from barkit.suite._text import draw_distinct, make_item, normalise, parse_int, squash, template_id, words
from barkit.suite.base import Category, Item, Split, rng_for

# Instruction phrasings per task. {phrase} is a few words, {w} one word, {k} a count.
TEMPLATES: dict[str, dict[Split, tuple[str, ...]]] = {
    "upper": {
        "train": (
            "Write this in capital letters: {phrase}",
            "Turn this into upper case: {phrase}",
            "Rewrite in all caps: {phrase}",
        ),
        "test": ("Convert to uppercase letters: {phrase}", "Put these words in capitals: {phrase}"),
    },
    "reverse": {
        "train": (
            "Reverse the order of these words: {phrase}",
            "Say these words backwards, last word first: {phrase}",
            "Write these words in reverse order: {phrase}",
        ),
        "test": ("Flip the word order: {phrase}", "Give these words from last to first: {phrase}"),
    },
    "repeat": {
        "train": (
            "Repeat the word {w} {k} times.",
            "Say {w} exactly {k} times.",
            "Write {w} {k} times in a row.",
        ),
        "test": ("Output the word {w} {k} times.", "Type {w} {k} times, separated by spaces."),
    },
    "length": {
        "train": (
            "How many letters are in the word {w}?",
            "Count the letters in {w}.",
            "How long is the word {w} in letters?",
        ),
        "test": ("What is the number of letters in {w}?", "Tell me how many letters {w} has."),
    },
    "initials": {
        "train": (
            "Give the first letter of each word: {phrase}",
            "Write the initials of these words: {phrase}",
            "What are the first letters of: {phrase}",
        ),
        "test": (
            "List the starting letter of every word: {phrase}",
            "Only the first letters, please: {phrase}",
        ),
    },
    "join": {
        "train": ("Join these words with dashes: {phrase}", "Connect these words using hyphens: {phrase}"),
        "test": (
            "Link the words with a dash between each: {phrase}",
            "Put a hyphen between these words: {phrase}",
        ),
    },
}
TASKS = tuple(TEMPLATES)

# One vocabulary for both splits (see the module docstring); a test item differs from every
# train item by its instruction phrasing.
WORDS: tuple[str, ...] = (
    "apple",
    "river",
    "stone",
    "green",
    "house",
    "light",
    "water",
    "table",
    "chair",
    "bread",
    "music",
    "paper",
    "garden",
    "horse",
    "window",
    "cloud",
    "summer",
    "winter",
    "silver",
    "bottle",
    "candle",
    "forest",
    "market",
    "orange",
    "pencil",
    "rabbit",
    "sister",
    "doctor",
    "flower",
    "rocket",
    "basket",
    "button",
    "castle",
    "dragon",
    "finger",
    "ladder",
    "mirror",
    "pocket",
    "kitten",
    "monkey",
    "island",
    "planet",
    "tiger",
    "yellow",
    "purple",
    "morning",
    "evening",
    "little",
    "simple",
    "happy",
    "quick",
    "brown",
    "lamp",
    "road",
    "ship",
    "bird",
    "tree",
    "song",
    "fish",
    "milk",
    "hill",
    "door",
    "star",
    "moon",
    "king",
    "book",
    "cherry",
    "valley",
    "pillow",
    "camera",
    "sugar",
    "jacket",
    "hammer",
    "spider",
    "lemon",
    "carpet",
    "violin",
    "tunnel",
    "wallet",
    "pepper",
    "meadow",
    "helmet",
    "butter",
    "parrot",
    "saddle",
    "velvet",
    "cotton",
    "anchor",
    "walrus",
    "bucket",
    "clock",
    "frog",
    "nest",
    "kite",
    "drum",
    "sand",
    "rope",
    "coin",
    "leaf",
    "boat",
)
_INITIALS_NOISE = re.compile(r"[\s,.\-]+")


def _phrase(rng: random.Random, low: int, high: int) -> list[str]:
    return rng.sample(WORDS, rng.randint(low, high))


def _check_upper(item: Item, completion: str) -> bool:
    return squash(completion) == item.meta["expected"]


def _check_words(item: Item, completion: str) -> bool:
    # Word tasks accept either spaces or commas between words.
    return words(completion) == item.meta["expected"].split()


def _check_repeat(item: Item, completion: str) -> bool:
    got = words(completion)
    return len(got) == item.meta["k"] and all(w == item.meta["word"] for w in got)


def _check_length(item: Item, completion: str) -> bool:
    # "6" and "6 letters" both state the count.
    text = normalise(completion)
    if text.endswith(" letters"):
        text = text[: -len(" letters")]
    return parse_int(text) == item.meta["expected"]


def _check_initials(item: Item, completion: str) -> bool:
    # "g a t", "g, a, t" and "gat" all give the letters; anything else breaks the match.
    return _INITIALS_NOISE.sub("", normalise(completion)) == item.meta["expected"]


def _check_join(item: Item, completion: str) -> bool:
    return normalise(completion) == item.meta["expected"]


CHECKS: dict[str, Callable[[Item, str], bool]] = {
    "upper": _check_upper,
    "reverse": _check_words,
    "repeat": _check_repeat,
    "length": _check_length,
    "initials": _check_initials,
    "join": _check_join,
}


class Chat(Category):
    name = "chat"

    def items(self, split: Split, n: int, seed: int = 0) -> list[Item]:
        return draw_distinct(
            self.name, split, n, rng_for(self.name, split, seed), lambda r: self._draw(r, split)
        )

    def score(self, item: Item, completion: str) -> float:
        check = CHECKS.get(str(item.meta.get("task")))
        return float(check is not None and check(item, completion))

    def _draw(self, rng: random.Random, split: Split) -> Item:
        task = rng.choice(TASKS)
        template = rng.choice(TEMPLATES[task][split])
        phrase = _phrase(rng, 2, 3)
        word, k = phrase[0], rng.randint(2, 4)
        answer, meta = _reference(task, phrase, word, k)
        prompt = template.format(phrase=" ".join(phrase), w=word, k=k)
        meta |= {"task": task, "template": template_id(f"chat/{task}", template)}
        return make_item(self.name, split, prompt, answer, meta)


def _reference(task: str, phrase: list[str], word: str, k: int) -> tuple[str, dict[str, object]]:
    """The reference answer and what the verifier needs for ``task``."""
    if task == "upper":
        answer = " ".join(phrase).upper()
        return answer, {"expected": answer}
    if task == "reverse":
        answer = " ".join(reversed(phrase))
        return answer, {"expected": answer}
    if task == "repeat":
        return " ".join([word] * k), {"word": word, "k": k}
    if task == "length":
        return str(len(word)), {"expected": len(word)}
    if task == "initials":
        letters = [w[0] for w in phrase]
        return " ".join(letters), {"expected": "".join(letters)}
    answer = "-".join(phrase)
    return answer, {"expected": answer}


CATEGORY = Chat()
