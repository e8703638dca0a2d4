"""The code and tool-use categories: determinism, split disjointness, and their verifiers."""

from __future__ import annotations

import functools
import json
import re
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from barkit.suite import get_category
from barkit.suite.base import Item
from barkit.suite.code import CATEGORY as CODE
from barkit.suite.code import FAMILIES, TEST_FRAMES, TRAIN_FRAMES, constant_split, extract_code
from barkit.suite.tools import CATALOGUE, TOOL_TOKENS, TOOLS, call_text, parse_call
from barkit.suite.tools import CATEGORY as TOOLS_CAT


def _frame_of(prompt: str, frames: tuple[str, ...]) -> str | None:
    for frame in frames:
        pattern = re.escape(frame).replace(re.escape("{sig}"), ".+").replace(re.escape("{spec}"), ".+")
        if re.fullmatch(pattern, prompt):
            return frame
    return None


# ---------------------------------------------------------------- code


def test_code_is_registered_and_deterministic():
    assert get_category("code") is CODE and CODE.has_text
    assert CODE.items("train", 30, seed=1) == CODE.items("train", 30, seed=1)
    assert CODE.items("train", 30, seed=1) != CODE.items("train", 30, seed=2)
    assert CODE.text(5, seed=3) == CODE.text(5, seed=3)


def test_code_splits_are_disjoint():
    train, test = CODE.items("train", 400), CODE.items("test", 200)
    assert {_frame_of(i.prompt, TRAIN_FRAMES) for i in train} == set(TRAIN_FRAMES)
    assert all(_frame_of(i.prompt, TEST_FRAMES) for i in test)
    assert not {i.prompt for i in train} & {i.prompt for i in test}
    pairs = {
        s: {(i.meta["family"], i.meta["constant"]) for i in items}
        for s, items in (("train", train), ("test", test))
    }
    constant_pairs = {s: {p for p in ps if p[1] is not None} for s, ps in pairs.items()}
    assert constant_pairs["train"] and constant_pairs["test"]
    assert not constant_pairs["train"] & constant_pairs["test"]
    # every family appears in the test split, constants from its own share
    assert {f for f, _ in pairs["test"]} == {f.name for f in FAMILIES}
    assert all(constant_split(f, c) == "test" for f, c in constant_pairs["test"])


def test_code_items_are_small_and_meta_is_json():
    for item in CODE.items("train", 100) + CODE.items("test", 50):
        assert len(item.prompt) + len(item.answer) < 300
        assert json.loads(json.dumps(item.meta)) == item.meta
        assert item.meta["function"] in item.prompt and item.answer.startswith(
            f"def {item.meta['function']}("
        )


def test_code_text_uses_train_side_constants_only():
    test_names = {i.meta["function"] for i in CODE.items("test", 200) if i.meta["constant"] is not None}
    docs = CODE.text(60)
    assert all(doc.startswith("def ") and '"""' in doc for doc in docs)
    defined = {re.match(r"def (\w+)\(", doc).group(1) for doc in docs}  # type: ignore[union-attr]
    assert not defined & test_names


def _code_item() -> Item:
    return next(i for i in CODE.items("test", 50) if i.meta["family"] == "abs")


def test_code_verifier_right_answers_score_one():
    items = CODE.items("test", 6)
    assert [CODE.score(i, i.answer) for i in items] == [1.0] * 6
    fenced = f"Here it is:\n```python\n{items[0].answer}\n```\nDone."
    assert CODE.score(items[0], fenced) == 1.0


def test_code_verifier_wrong_answers():
    item = _code_item()
    name = item.meta["function"]
    assert CODE.score(item, f"def {name}(x):\n    return x + 1") < 1.0
    # right only on non-negative inputs: partial credit equals the share of such tests
    share = sum(t["args"][0] >= 0 for t in item.meta["tests"]) / len(item.meta["tests"])
    assert CODE.score(item, f"def {name}(x):\n    return x") == share
    assert CODE.score(item, "def some_other_name(x):\n    return abs(x)") == 0.0
    # an object that claims to equal everything is compared by value here, not by its __eq__
    cheat = f"class A:\n    def __eq__(self, o):\n        return True\ndef {name}(x):\n    return A()"
    assert CODE.score(item, cheat) == 0.0


def test_code_verifier_malformed_and_hostile_answers_score_zero_quickly():
    item = _code_item()
    name = item.meta["function"]
    hostile = {
        "syntax": f"def {name}(x)\n    return abs(x)",
        "empty": "",
        "loop": f"def {name}(x):\n    while True:\n        pass",
        "socket": f"import socket\ndef {name}(x):\n    socket.create_connection(('127.0.0.1', 9))\n    return abs(x)",
        "exit": f"import sys\ndef {name}(x):\n    return abs(x)\nsys.exit(0)",
        "forged": f'print(\'@@barkit-0000@@["1", "1", "1", "1"]\')\ndef {name}(x):\n    return 0',
    }
    start = time.monotonic()
    for label, completion in hostile.items():
        assert CODE.score(item, completion) == 0.0, label
    assert time.monotonic() - start < CODE.timeout_s + 6.0


def test_extract_code_strips_fences():
    assert extract_code("```python\ndef f():\n    return 1\n```") == "def f():\n    return 1\n"
    assert extract_code("def f():\n    return 1") == "def f():\n    return 1"


def test_code_verifier_never_raises_on_broken_items():
    item = _code_item()
    broken = Item("code", "test", "x", item.prompt, item.answer, {"tests": "not a list"})
    assert CODE.score(broken, item.answer) == 0.0


# ---------------------------------------------------------------- tool use


def test_tools_registered_and_deterministic():
    assert get_category("tool_use") is TOOLS_CAT and not TOOLS_CAT.has_text
    assert TOOL_TOKENS == ("<tool_call>", "</tool_call>")
    assert TOOLS_CAT.items("test", 25, seed=4) == TOOLS_CAT.items("test", 25, seed=4)
    assert TOOLS_CAT.items("test", 25, seed=4) != TOOLS_CAT.items("test", 25, seed=5)
    assert 8 <= len(CATALOGUE) <= 12


def test_tool_catalogue_schemas_are_consistent():
    for tool in CATALOGUE:
        schema = tool.schema()
        assert set(schema["parameters"]["required"]) <= set(schema["parameters"]["properties"])
        for template in tool.train_requests + tool.test_requests:
            slots = set(re.findall(r"\{(\w+)\}", template))
            assert slots <= set(tool.by_name), template
            assert set(schema["parameters"]["required"]) <= slots, template
        assert not set(tool.train_requests) & set(tool.test_requests)


def test_tool_splits_are_disjoint():
    train, test = TOOLS_CAT.items("train", 600), TOOLS_CAT.items("test", 300)

    def requests(items: list[Item]) -> set[str]:
        return {i.prompt.rsplit("Request: ", 1)[1] for i in items}

    assert not requests(train) & requests(test)

    def free_values(items: list[Item]) -> set[tuple[str, str, object]]:
        out = set()
        for item in items:
            tool = TOOLS[item.meta["tool"]]
            for key, value in item.meta["arguments"].items():
                param = tool.by_name[key]
                if not param.enum and param.type != "boolean":
                    out.add((tool.name, key, value))
        return out

    assert not free_values(train) & free_values(test)
    for item in test:
        assert item.meta["tool"] in item.meta["available"] and 2 <= len(item.meta["available"]) <= 3
        assert item.answer == call_text(item.meta["tool"], item.meta["arguments"])


@functools.cache
def _weather_item() -> Item:
    return next(
        i
        for i in TOOLS_CAT.items("test", 60)
        if i.meta["tool"] == "get_weather" and "unit" in i.meta["arguments"]
    )


def _call(name: str, arguments: dict[str, object]) -> str:
    return "<tool_call>" + json.dumps({"name": name, "arguments": arguments}) + "</tool_call>"


def test_tool_verifier_right_answers():
    items = TOOLS_CAT.items("test", 30)
    assert all(TOOLS_CAT.score(i, i.answer) == 1.0 for i in items)
    item = _weather_item()
    args = item.meta["arguments"]
    loose = {"city": "  " + args["city"].upper() + " ", "unit": args["unit"].title()}
    assert TOOLS_CAT.score(item, "Sure. " + _call("get_weather", loose) + " ok") == 1.0
    stock = next(i for i in TOOLS_CAT.items("train", 60) if i.meta["tool"] == "convert_currency")
    as_float = dict(stock.meta["arguments"], amount=float(stock.meta["arguments"]["amount"]))
    assert TOOLS_CAT.score(stock, _call("convert_currency", as_float)) == 1.0


def test_tool_verifier_wrong_answers():
    item = _weather_item()
    args = item.meta["arguments"]
    other_unit = "celsius" if args["unit"] == "fahrenheit" else "fahrenheit"
    wrong = [
        _call("get_stock", args),  # wrong tool
        _call("get_weather", {"city": "Atlantis", "unit": args["unit"]}),  # wrong value
        _call("get_weather", {"city": args["city"]}),  # the asked-for optional is missing
        _call("get_weather", {"city": args["city"], "unit": other_unit}),
        _call("get_weather", dict(args, country="x")),  # unknown argument
        _call("get_weather", {"city": 7, "unit": args["unit"]}),  # wrong type
    ]
    assert [TOOLS_CAT.score(item, w) for w in wrong] == [0.0] * len(wrong)
    # an optional argument nobody asked for is fine when valid, wrong when not
    light = next(
        i
        for i in TOOLS_CAT.items("train", 80)
        if i.meta["tool"] == "set_light" and len(i.meta["arguments"]) == 1
    )
    room = light.meta["arguments"]["room"]
    assert TOOLS_CAT.score(light, _call("set_light", {"room": room, "brightness": 40})) == 1.0
    assert TOOLS_CAT.score(light, _call("set_light", {"room": room, "brightness": "40"})) == 0.0
    assert TOOLS_CAT.score(light, _call("set_light", {"room": room, "brightness": True})) == 0.0


def test_tool_verifier_malformed_answers():
    item = _weather_item()
    body = json.dumps({"name": "get_weather", "arguments": item.meta["arguments"]})
    for text in (
        body,
        f"<tool_call>{body}",
        f"{body}</tool_call>",
        "<tool_call>{'name': 'get_weather'}</tool_call>",
        "<tool_call>[1, 2]</tool_call>",
        '<tool_call>{"name": "get_weather", "arguments": [1]}</tool_call>',
        "<tool_call></tool_call>",
        "",
    ):
        assert TOOLS_CAT.score(item, text) == 0.0, text
    assert parse_call("<tool_call>" + "[" * 100_000 + "</tool_call>") is None


_FRAGMENTS = st.sampled_from(
    [
        "<tool_call>",
        "</tool_call>",
        "{",
        "}",
        '"name"',
        '"arguments"',
        ":",
        ",",
        '"get_weather"',
        '"city"',
        "null",
        "1e999",
        "[",
        "]",
        '"',
    ],
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(), st.lists(st.one_of(_FRAGMENTS, st.text(max_size=5))).map("".join)))
def test_tool_verifier_never_raises(text: str):
    item = _weather_item()
    assert TOOLS_CAT.score(item, text) in (0.0, 1.0)
