"""Math: two-digit arithmetic and short word problems with a worked answer.

Answers show the working and then the result after ``ANSWER_MARKER``, e.g.
``17 + 25 = 42. Answer: 42``. The verifier reads only the number after the last marker. Every
operand triple (a, op, b) belongs to exactly one split (hash split), and word-problem templates
and question phrasings are disjoint between splits, so a test item is never a training item.
"""

from __future__ import annotations

import random

from barkit.suite._text import draw_distinct, make_item, parse_int, split_of, template_id
from barkit.suite.base import ANSWER_MARKER, Category, Item, Split, rng_for

OPS = ("+", "-", "x")

# Plain arithmetic phrasings. {e} is the expression "a op b".
BARE: dict[Split, tuple[str, ...]] = {
    "train": (
        "What is {e}?",
        "Calculate {e}.",
        "Work out {e}.",
        "{e} = ?",
        "Evaluate {e}.",
        "How much is {e}?",
        "Give the result of {e}.",
        "Tell me the value of {e}.",
        "Solve {e}.",
    ),
    "test": ("Compute {e}.", "Find the value of {e}."),
}
# Word problems per operation. {n} a name, {a} {b} operands, {t} a plural thing.
WORD: dict[str, dict[Split, tuple[str, ...]]] = {
    "+": {
        "train": (
            "{n} has {a} {t} and gets {b} more. How many {t} does {n} have now?",
            "A shop sold {a} {t} in the morning and {b} in the afternoon. How many {t} did it sell?",
            "{n} had {a} {t}. Then {n} found {b} more. How many {t} does {n} have?",
        ),
        "test": ("There are {a} {t} in a box and {b} more are added. How many {t} are in the box?",),
    },
    "-": {
        "train": (
            "{n} has {a} {t} and gives away {b}. How many {t} are left?",
            "A farm had {a} {t} and sold {b} of them. How many {t} does the farm have now?",
            "There were {a} {t}. {b} of them were lost. How many {t} are left?",
        ),
        "test": ("A basket holds {a} {t}. {n} takes out {b}. How many {t} remain?",),
    },
    "x": {
        "train": (
            "There are {a} boxes with {b} {t} in each. How many {t} are there in total?",
            "{n} buys {a} bags of {b} {t}. How many {t} does {n} get?",
            "Each of {a} friends has {b} {t}. How many {t} do they have altogether?",
        ),
        "test": ("{a} children each bring {b} {t}. How many {t} do they bring together?",),
    },
}
NAMES = ("Mia", "Tom", "Ana", "Leo", "Sam", "Eva", "Ben", "Zoe")
THINGS = ("apples", "coins", "books", "stamps", "eggs", "pens", "shells", "cards")


# Operand ranges. Two-digit sums and differences and small products: three-digit operands (the
# first version) left every tiny expert at 0, since a few-million-parameter model cannot learn
# carries over three digits in minutes of CPU training; two digits keep it hard but learnable.
SUM_RANGE = (10, 99)
PRODUCT_RANGE = ((2, 19), (2, 9))


def operands(rng: random.Random, op: str) -> tuple[int, int]:
    """Operands for ``op``: two-digit sums and differences (never negative), small products."""
    if op == "x":
        (lo_a, hi_a), (lo_b, hi_b) = PRODUCT_RANGE
        return rng.randint(lo_a, hi_a), rng.randint(lo_b, hi_b)
    lo, hi = SUM_RANGE
    a = rng.randint(lo, hi)
    return a, rng.randint(lo, hi if op == "+" else a)


def apply(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def worked(a: int, op: str, b: int) -> str:
    """The reference answer: the working, then the result after the marker."""
    c = apply(a, op, b)
    return f"{a} {op} {b} = {c}. {ANSWER_MARKER} {c}"


def triple_split(a: int, op: str, b: int) -> Split:
    return split_of(f"math|{a}|{op}|{b}")


def final_answer(completion: str) -> int | None:
    """The integer after the last ``ANSWER_MARKER``; None without a marker or with anything else there."""
    at = completion.rfind(ANSWER_MARKER)
    if at < 0:
        return None
    return parse_int(completion[at + len(ANSWER_MARKER) :])


class Math(Category):
    name = "math"
    has_text = True

    def items(self, split: Split, n: int, seed: int = 0) -> list[Item]:
        return draw_distinct(
            self.name, split, n, rng_for(self.name, split, seed), lambda r: self._draw(r, split)
        )

    def score(self, item: Item, completion: str) -> float:
        return float(final_answer(completion) == item.meta["result"])

    def _draw(self, rng: random.Random, split: Split) -> Item:
        op = rng.choice(OPS)
        while True:
            a, b = operands(rng, op)
            if triple_split(a, op, b) == split:
                break
        if rng.random() < 0.5:
            template = rng.choice(BARE[split])
            prompt, kind = template.format(e=f"{a} {op} {b}"), "bare"
        else:
            template = rng.choice(WORD[op][split])
            prompt = template.format(n=rng.choice(NAMES), a=a, b=b, t=rng.choice(THINGS))
            kind = "word"
        meta = {
            "template": template_id(f"math/{kind}", template),
            "kind": kind,
            "a": a,
            "op": op,
            "b": b,
            "result": apply(a, op, b),
        }
        return make_item(self.name, split, prompt, worked(a, op, b), meta)

    def text(self, n: int, seed: int = 0) -> list[str]:
        """``n`` documents of worked arithmetic: lists of sums and differences, or a times table.

        Only train-split triples appear, so mid-training never shows a test item's result.
        """
        rng = rng_for(self.name, "text", seed)
        return [self._table(rng) if rng.random() < 0.3 else self._lines(rng) for _ in range(n)]

    def _lines(self, rng: random.Random) -> str:
        lines: list[str] = []
        wanted = rng.randint(3, 6)
        while len(lines) < wanted:
            op = rng.choice(OPS)
            a, b = operands(rng, op)
            if triple_split(a, op, b) == "train":
                lines.append(f"{a} {op} {b} = {apply(a, op, b)}.")
        return " ".join(lines)

    def _table(self, rng: random.Random) -> str:
        a = rng.randint(*PRODUCT_RANGE[0])
        rows = [f"{a} x {b} = {a * b}." for b in range(2, 10) if triple_split(a, "x", b) == "train"]
        return f"Times table of {a}: " + " ".join(rows)


CATEGORY = Math()
