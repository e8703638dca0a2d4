"""Verifiers by name: the built-ins, a user function, and their errors."""

from __future__ import annotations

import json

import pytest

from barkit.errors import BarkitError, ConfigError, VerifierError
from barkit.suite.code import CATEGORY as CODE
from barkit.suite.export import records as suite_records
from barkit.suite.tools import CATEGORY as TOOLS_CAT
from barkit.userdata import RlRow, rl_row
from barkit.verifiers import BUILTIN, final_number, get_verifier


def row(answer, **meta):
    return RlRow(prompt=[{"role": "user", "content": "q"}], answer=answer, meta=meta, where="d.jsonl line 3")


def score(name, completion, answer, **meta):
    return get_verifier(name).score(completion, row(answer, **meta))


def test_exact():
    assert score("exact", "  Paris \n", "Paris") == 1.0
    assert score("exact", "New   York", "New York") == 1.0
    assert score("exact", "paris", "Paris") == 0.0


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("17 + 25 = 42. Answer: 42", 42.0),
        ("answer: 42. Check: 6 * 7 = 42, so 7 is a factor", 42.0),
        ("The total is 1,234.", 1234.0),
        ("it drops to -3.5e2 degrees", -350.0),
        ("roughly .5 of them", 0.5),
        ("no digits here", None),
    ],
)
def test_final_number(text, number):
    assert final_number(text) == number


def test_numeric():
    assert score("numeric", "So the result is 1,234", "1234") == 1.0
    assert score("numeric", "pi is about 3.14159", "3.1416", tolerance=1e-4) == 1.0
    assert score("numeric", "pi is about 3.14159", "3.1416") == 0.0
    assert score("numeric", "I do not know", "7") == 0.0


def test_regex_matches_the_whole_completion():
    assert score("regex", " 42 ", r"4\d") == 1.0
    assert score("regex", "it is 42", r"4\d") == 0.0
    assert score("regex", "it is 42\nyes", r".*4\d.*") == 1.0


def test_tool_call_on_suite_rows_agrees_with_the_suite():
    for record in suite_records("tool_use", "test", "rl", 6):
        item_row = rl_row(record, "tools.jsonl")
        good, bad = (
            item_row.answer,
            item_row.answer.replace('"arguments": {', '"arguments": {"bogus": 1, ', 1),
        )
        for completion in (good, bad, "no call"):
            item = next(i for i in TOOLS_CAT.items("test", 6) if i.id == record["id"])
            expected = TOOLS_CAT.score(item, completion)
            assert get_verifier("tool-call").score(completion, item_row) == expected
        assert get_verifier("tool-call").score(good, item_row) == 1.0


def call(name, **arguments):
    return "<tool_call>" + json.dumps({"name": name, "arguments": arguments}) + "</tool_call>"


def test_tool_call_on_a_users_tools():
    answer = call("get_weather", city="Paris", days=3)
    assert score("tool-call", "sure " + call("get_weather", days=3, city=" paris"), answer) == 1.0
    assert score("tool-call", call("get_weather", city="Paris", days="3"), answer) == 0.0
    assert score("tool-call", call("get_weather", city="Paris"), answer) == 0.0
    assert score("tool-call", call("get_weather", city="Paris", days=3, unit="c"), answer) == 0.0
    bare = json.dumps({"name": "get_weather", "arguments": {"city": "Paris", "days": 3}})
    assert score("tool-call", call("get_weather", city="Paris", days=3), bare) == 1.0
    schema = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string"},
                    "days": {"type": "integer"},
                    "unit": {"type": ["string", "null"], "enum": ["Celsius", "Fahrenheit"]},
                },
                "required": ["city", "days"],
            },
        },
    }
    tools = [schema]
    assert (
        score("tool-call", call("get_weather", city="Paris", days=3, unit="celsius"), answer, tools=tools)
        == 1.0
    )
    assert (
        score("tool-call", call("get_weather", city="Paris", days=3, unit="kelvin"), answer, tools=tools)
        == 0.0
    )


def test_python_tests_on_suite_rows_agree_with_the_suite():
    for record in suite_records("code", "test", "rl", 2):
        item_row = rl_row(record, "code.jsonl")
        item = next(i for i in CODE.items("test", 2) if i.id == record["id"])
        wrong = item.answer.replace("return", "return 1 +", 1)
        assert get_verifier("python-tests").score(f"```python\n{item.answer}\n```", item_row) == 1.0
        assert get_verifier("python-tests").score(wrong, item_row) == CODE.score(item, wrong) < 1.0


def test_python_tests_with_asserts():
    tests = ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"]
    assert score("python-tests", "def add(a, b):\n    return a + b", "", tests=tests) == 1.0
    assert score("python-tests", "def add(a, b):\n    return a + b if a > 0 else 5", "", tests=tests) == 0.5
    assert score("python-tests", "def add(a, b):\n    return a + b", "", tests=json.dumps(tests)) == 1.0
    # rebinding exec or stdout cannot make failing asserts pass
    for hostile in (
        "def add(a, b):\n    return -99\nexec = lambda *a, **k: None",
        "import builtins\nbuiltins.exec = lambda *a, **k: None\ndef add(a, b):\n    return -99",
        "import sys, json\ndef add(a, b):\n    return -99\nsys.stdout.write = lambda s: None",
    ):
        assert score("python-tests", hostile, "", tests=tests) == 0.0


def test_user_function(tmp_path, monkeypatch):
    (tmp_path / "myscore.py").write_text(
        "def score(completion, row):\n    return float(row.answer.lower() in completion.lower())\n"
        "def broken(completion, row):\n    raise KeyError('label')\n"
        "def too_big(completion, row):\n    return 2\n"
        "def yes(completion, row):\n    return True\n"
        "def nan(completion, row):\n    return float('nan')\n"
    )
    assert get_verifier(f"{tmp_path / 'myscore.py'}:score").score("it is PARIS", row("paris")) == 1.0
    monkeypatch.syspath_prepend(str(tmp_path))
    assert get_verifier("myscore:score").score("Rome", row("paris")) == 0.0
    with pytest.raises(VerifierError, match="verifier 'myscore:broken' failed on d.jsonl line 3: KeyError"):
        get_verifier("myscore:broken").score("x", row("y"))
    with pytest.raises(VerifierError, match=r"returned 2 on d.jsonl line 3, not a score in \[0, 1\]"):
        get_verifier("myscore:too_big").score("x", row("y"))
    assert get_verifier("myscore:yes").score("x", row("y")) == 1.0
    with pytest.raises(VerifierError, match="returned nan"):
        get_verifier("myscore:nan").score("x", row("y"))
    with pytest.raises(VerifierError, match="has no function 'nope'"):
        get_verifier("myscore:nope")
    with pytest.raises(VerifierError, match="cannot import 'no_such_module_xyz'"):
        get_verifier("no_such_module_xyz:score")


def test_unknown_verifier_names_the_known_ones():
    with pytest.raises(ConfigError, match="unknown verifier 'fuzzy'; known: " + ", ".join(BUILTIN)):
        get_verifier("fuzzy")


@pytest.mark.parametrize(
    ("name", "answer", "meta", "message"),
    [
        ("numeric", "seven", {}, "the answer 'seven' holds no number"),
        ("regex", "(", {}, "error: missing \\), unterminated subpattern"),
        ("tool-call", "not a call", {}, "the answer is not a tool call"),
        ("python-tests", "", {}, "the row has no 'tests' list"),
        ("python-tests", "", {"tests": [{"args": [1], "expected": 2}]}, "'tests' must be assert statements"),
    ],
)
def test_verifier_that_raises_names_verifier_and_row(name, answer, meta, message):
    with pytest.raises(VerifierError, match=f"verifier '{name}' failed on d.jsonl line 3: .*{message}"):
        score(name, "1", answer, **meta)
    assert issubclass(VerifierError, BarkitError)
