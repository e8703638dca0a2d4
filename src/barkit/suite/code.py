"""The code category: write a small Python function from a one-sentence spec.

An item asks for one function ("Write a function `add_three(x)` that returns x plus 3."), the
reference answer is its code, and ``meta`` holds hidden tests: argument lists and expected
results. The verifier runs a completion with all of its item's tests in ONE sandboxed process
and scores the fraction of tests passed: 1.0 only when every test passes, partial credit
otherwise, so that RL on a tiny model gets a signal before it is fully right. Results are
compared in this process, not inside the sandbox, so a returned object with a doctored
``__eq__`` earns nothing.

Train and test items use disjoint prompt phrasings, and for the families with a constant
("plus 3", "the first 2 characters"), disjoint (family, constant) pairs. Families without a
constant (reverse a string, sum a list) differ between splits by phrasing only.
"""

from __future__ import annotations

import json
import random
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from barkit.sandbox import run_python
from barkit.suite.base import Category, Item, Split, rng_for

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
WORDS = ("cat", "tree", "house", "river", "sun", "apple", "road", "stone", "bird", "lamp", "moon", "green")

# Prompt frames. Six train phrasings, so that a small model keys on the backticked signature
# and the spec rather than on one sentence shape; the two test phrasings are never trained on.
TRAIN_FRAMES = (
    "Write a function `{sig}` that {spec}.",
    "Define a Python function `{sig}` which {spec}.",
    "Implement `{sig}` so that it {spec}.",
    "I need a function `{sig}` that {spec}.",
    "Give me a Python function `{sig}` which {spec}.",
    "Write `{sig}`; it {spec}.",
)
TEST_FRAMES = (
    "Create a function named `{sig}` that {spec}.",
    "Please write `{sig}`: it {spec}.",
)
FRAMES = TRAIN_FRAMES + TEST_FRAMES


@dataclass(frozen=True)
class Family:
    """One kind of function: how to name, describe, solve and test it."""

    name: str
    params: str  # the argument list, e.g. "x" or "a, b"
    names: tuple[str, ...]  # function names; "{c}" becomes the constant's word
    spec: str  # what it does; "{c}" becomes the constant
    body: str  # the reference body (indented); "{c}" becomes the constant
    reference: Callable[..., Any]  # (constant, *args) -> expected result
    inputs: str  # "int", "str", "list" or "pair": what the hidden tests pass
    constants: tuple[int, ...] = ()  # empty: a family without a constant


def _abs(_c: int, x: int) -> int:
    return -x if x < 0 else x


FAMILIES = (
    Family(
        "add",
        "x",
        ("add_{c}", "plus_{c}"),
        "returns x plus {c}",
        "    return x + {c}",
        lambda c, x: x + c,
        "int",
        tuple(range(1, 10)),
    ),
    Family(
        "sub",
        "x",
        ("subtract_{c}", "minus_{c}"),
        "returns x minus {c}",
        "    return x - {c}",
        lambda c, x: x - c,
        "int",
        tuple(range(1, 10)),
    ),
    Family(
        "mul",
        "x",
        ("times_{c}", "multiply_by_{c}"),
        "returns x times {c}",
        "    return x * {c}",
        lambda c, x: x * c,
        "int",
        tuple(range(2, 10)),
    ),
    Family(
        "mod",
        "x",
        ("mod_{c}", "remainder_{c}"),
        "returns the remainder of x divided by {c}",
        "    return x % {c}",
        lambda c, x: x % c,
        "int",
        tuple(range(2, 10)),
    ),
    Family(
        "repeat",
        "s",
        ("repeat_{c}", "copy_{c}_times"),
        "returns the string s repeated {c} times",
        "    return s * {c}",
        lambda c, s: s * c,
        "str",
        tuple(range(2, 6)),
    ),
    Family(
        "prefix",
        "s",
        ("first_{c}", "take_{c}"),
        "returns the first {c} characters of s",
        "    return s[:{c}]",
        lambda c, s: s[:c],
        "str",
        tuple(range(1, 6)),
    ),
    Family(
        "scale",
        "xs",
        ("scale_by_{c}", "multiply_all_{c}"),
        "returns a list with every item of xs times {c}",
        "    return [v * {c} for v in xs]",
        lambda c, xs: [v * c for v in xs],
        "list",
        tuple(range(2, 10)),
    ),
    Family(
        "count_above",
        "xs",
        ("count_above_{c}", "how_many_over_{c}"),
        "returns how many items of xs are greater than {c}",
        "    return len([v for v in xs if v > {c}])",
        lambda c, xs: len([v for v in xs if v > c]),
        "list",
        tuple(range(0, 10)),
    ),
    Family(
        "upper",
        "s",
        ("to_upper", "shout"),
        "returns s in upper case",
        "    return s.upper()",
        lambda _c, s: s.upper(),
        "str",
    ),
    Family(
        "reverse",
        "s",
        ("reverse_string", "backwards"),
        "returns s reversed",
        "    return s[::-1]",
        lambda _c, s: s[::-1],
        "str",
    ),
    Family(
        "first_char",
        "s",
        ("first_char", "initial"),
        "returns the first character of s",
        "    return s[0]",
        lambda _c, s: s[0],
        "str",
    ),
    Family(
        "str_len",
        "s",
        ("string_length", "count_chars"),
        "returns the number of characters in s",
        "    return len(s)",
        lambda _c, s: len(s),
        "str",
    ),
    Family(
        "sum",
        "xs",
        ("total", "sum_list"),
        "returns the sum of the items of xs",
        "    return sum(xs)",
        lambda _c, xs: sum(xs),
        "list",
    ),
    Family(
        "max",
        "xs",
        ("largest", "max_item"),
        "returns the largest item of xs",
        "    return max(xs)",
        lambda _c, xs: max(xs),
        "list",
    ),
    Family(
        "list_len",
        "xs",
        ("list_length", "count_items"),
        "returns the number of items in xs",
        "    return len(xs)",
        lambda _c, xs: len(xs),
        "list",
    ),
    Family(
        "evens",
        "xs",
        ("keep_evens", "only_even"),
        "returns the even items of xs, in order",
        "    return [v for v in xs if v % 2 == 0]",
        lambda _c, xs: [v for v in xs if v % 2 == 0],
        "list",
    ),
    Family(
        "abs",
        "x",
        ("absolute", "abs_value"),
        "returns the absolute value of x",
        "    if x < 0:\n        return -x\n    return x",
        _abs,
        "int",
    ),
    Family(
        "max2",
        "a, b",
        ("bigger", "max_of_two"),
        "returns the larger of a and b",
        "    if a > b:\n        return a\n    return b",
        lambda _c, a, b: a if a > b else b,
        "pair",
    ),
    Family(
        "min2",
        "a, b",
        ("smaller", "min_of_two"),
        "returns the smaller of a and b",
        "    if a < b:\n        return a\n    return b",
        lambda _c, a, b: a if a < b else b,
        "pair",
    ),
)
FAMILY_BY_NAME = {f.name: f for f in FAMILIES}
TESTS_PER_ITEM = 4
#: Wall-clock seconds and memory for one completion's test run (interpreter start included).
TEST_TIMEOUT_S = 3.0
TEST_MEMORY_MB = 256


def constant_split(family: str, constant: int) -> Split:
    """Which split owns a (family, constant) pair: about one in four goes to test."""
    return "test" if (sum(map(ord, family)) + 3 * constant) % 4 == 0 else "train"


def _constants(family: Family, split: Split) -> tuple[int | None, ...]:
    if not family.constants:
        return (None,)
    return tuple(c for c in family.constants if constant_split(family.name, c) == split)


def _draw_args(kind: str, rng: random.Random) -> list[Any]:
    if kind == "int":
        return [rng.randint(-20, 20)]
    if kind == "str":
        return [rng.choice(WORDS)]
    if kind == "list":
        return [[rng.randint(-9, 9) for _ in range(rng.randint(2, 5))]]
    return [rng.randint(-20, 20), rng.randint(-20, 20)]


def _render(text: str, constant: int | None, *, word: bool = False) -> str:
    if constant is None:
        return text
    return text.replace("{c}", NUMBER_WORDS[constant] if word else str(constant))


def _make_item(family: Family, constant: int | None, split: Split, rng: random.Random, index: int) -> Item:
    name = _render(rng.choice(family.names), constant, word=True)
    frame = rng.choice(TRAIN_FRAMES if split == "train" else TEST_FRAMES)
    prompt = frame.format(sig=f"{name}({family.params})", spec=_render(family.spec, constant))
    answer = f"def {name}({family.params}):\n{_render(family.body, constant)}"
    tests = []
    for _ in range(TESTS_PER_ITEM):
        args = _draw_args(family.inputs, rng)
        tests.append({"args": args, "expected": family.reference(constant, *args)})
    meta = {"function": name, "family": family.name, "constant": constant, "tests": tests}
    return Item("code", split, f"code-{split}-{index}", prompt, answer, meta)


def extract_code(completion: str) -> str:
    """The program in a completion: the first fenced block if there is one, else all of it."""
    fenced = re.search(r"```[A-Za-z0-9_+-]*[ \t]*\n(.*?)(?:```|$)", completion, flags=re.DOTALL)
    return fenced.group(1) if fenced else completion


# Runs after the candidate's code, in the same process: calls the function on every test and
# prints one line of JSON results behind a nonce the candidate's code cannot know.
_HARNESS = """

def __barkit_check(__name, __tests, __nonce):
    import json as __json
    __fn = globals().get(__name)
    __out = []
    for __args in __tests:
        try:
            __out.append(__json.dumps(__fn(*__args)))
        except BaseException:
            __out.append(None)
    __import__("sys").stdout.write("\\n" + __nonce + __json.dumps(__out) + "\\n")

__barkit_check({name!r}, __import__("json").loads({tests!r}), {nonce!r})
"""


def _same(got: Any, expected: Any) -> bool:
    """Equal by value and JSON type: 1 == 1.0 passes, True for 1 does not."""
    if isinstance(expected, bool) or isinstance(got, bool):
        return type(got) is type(expected) and got == expected
    if isinstance(expected, (int, float)):
        return isinstance(got, (int, float)) and got == expected
    if isinstance(expected, list):
        return isinstance(got, list) and len(got) == len(expected) and all(map(_same, got, expected))
    return type(got) is type(expected) and got == expected


def run_tests(
    code: str,
    function: str,
    tests: list[dict[str, Any]],
    *,
    timeout_s: float = TEST_TIMEOUT_S,
    memory_mb: int = TEST_MEMORY_MB,
) -> float:
    """Fraction of ``tests`` (``{"args": [...], "expected": ...}``) that ``function`` passes.

    All tests run in one sandboxed process; results come back as JSON and are compared here
    (:func:`_same`), so an object with a doctored ``__eq__`` earns nothing.
    """
    nonce = _nonce()
    args_json = json.dumps([t["args"] for t in tests])
    program = code + _HARNESS.format(name=function, tests=args_json, nonce=nonce)
    results = _run_harness(program, nonce, timeout_s, memory_mb)
    passed = sum(
        1
        for encoded, test in zip(results, tests, strict=False)  # a short list fails the rest
        if encoded is not None and _same(json.loads(encoded), test["expected"])
    )
    return passed / len(tests)


def run_asserts(
    code: str, asserts: list[str], *, timeout_s: float = TEST_TIMEOUT_S, memory_mb: int = TEST_MEMORY_MB
) -> float:
    """Fraction of assert statements (MBPP/HumanEval style) that hold after ``code`` runs.

    The asserts run inside the sandbox on the program's own objects, so unlike
    :func:`run_tests` a returned object with a doctored ``__eq__`` can pass them.
    """
    nonce = _nonce()
    tag = nonce.strip("@").replace("-", "_")  # harness names the candidate's code cannot guess
    program = (
        _ASSERT_PROLOGUE.format(tag=tag)
        + code
        + _ASSERT_HARNESS.format(tag=tag, tests=json.dumps(asserts), nonce=nonce)
    )
    results = _run_harness(program, nonce, timeout_s, memory_mb)
    return sum(1 for ok in results[: len(asserts)] if ok is True) / len(asserts)


# Captured before the candidate's code runs, under names it cannot know, so that rebinding
# ``exec`` or ``sys.stdout`` cannot turn failing asserts into passes.
_ASSERT_PROLOGUE = """import builtins as _b_{tag}, json as _j_{tag}, sys as _s_{tag}
_exec_{tag}, _dumps_{tag}, _write_{tag} = _b_{tag}.exec, _j_{tag}.dumps, _s_{tag}.stdout.write
"""
_ASSERT_HARNESS = """

def _check_{tag}(tests, nonce, scope):
    out = []
    for test in tests:
        try:
            _exec_{tag}(test, scope)
            out.append(True)
        except BaseException:
            out.append(False)
    _write_{tag}("\\n" + nonce + _dumps_{tag}(out) + "\\n")

_check_{tag}(_j_{tag}.loads({tests!r}), {nonce!r}, globals())
"""


def _nonce() -> str:
    return "@@barkit-" + secrets.token_hex(8) + "@@"


def _run_harness(program: str, nonce: str, timeout_s: float, memory_mb: int) -> list[Any]:
    """Run a program with a harness in the sandbox; the harness's result list ([] on failure)."""
    result = run_python(program, timeout_s=timeout_s, memory_mb=memory_mb)
    if result.timed_out or result.returncode < 0:
        return []
    lines = [line for line in result.stdout.splitlines() if line.startswith(nonce)]
    if not lines:
        return []
    try:
        results = json.loads(lines[-1][len(nonce) :])
    except json.JSONDecodeError:  # a line cut by the sandbox's output cap: the program failed
        return []
    return results if isinstance(results, list) else []


class CodeCategory(Category):
    """Small Python functions from a spec, checked by running hidden tests in the sandbox."""

    name = "code"
    has_text = True
    #: Wall-clock seconds for one completion's run (interpreter start included).
    timeout_s: float = TEST_TIMEOUT_S
    memory_mb: int = TEST_MEMORY_MB

    def items(self, split: Split, n: int, seed: int = 0) -> list[Item]:
        rng = rng_for(self.name, split, seed)
        pairs = [(f, c) for f in FAMILIES for c in _constants(f, split)]
        items = []
        for i in range(n):
            # every (family, constant) pair once per round, in a fresh order each round
            if i % len(pairs) == 0:
                rng.shuffle(pairs)
            family, constant = pairs[i % len(pairs)]
            items.append(_make_item(family, constant, split, rng, i))
        return items

    def text(self, n: int, seed: int = 0) -> list[str]:
        """Documented snippets from train-side families and constants, with example calls."""
        rng = rng_for(self.name, "train", seed, salt="text")
        pairs = [(f, c) for f in FAMILIES for c in _constants(f, "train")]
        return [self._snippet(*rng.choice(pairs), rng) for _ in range(n)]

    @staticmethod
    def _snippet(family: Family, constant: int | None, rng: random.Random) -> str:
        name = _render(rng.choice(family.names), constant, word=True)
        doc = _render(family.spec, constant).replace("returns", "Return", 1)
        lines = [f"def {name}({family.params}):", f'    """{doc}."""', _render(family.body, constant), ""]
        for _ in range(2):
            args = _draw_args(family.inputs, rng)
            call = ", ".join(repr(a) for a in args)
            lines.append(f"print({name}({call}))  # {family.reference(constant, *args)!r}")
        return "\n".join(lines) + "\n"

    def score(self, item: Item, completion: str) -> float:
        """Fraction of hidden tests passed; 0.0 for anything malformed, hostile or slow."""
        try:
            return self._score(item, completion)
        except Exception:
            return 0.0

    def _score(self, item: Item, completion: str) -> float:
        code = extract_code(completion)
        tests = item.meta["tests"]
        return run_tests(
            code, item.meta["function"], tests, timeout_s=self.timeout_s, memory_mb=self.memory_mb
        )


CATEGORY = CodeCategory()
