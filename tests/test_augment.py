"""Augmented tool-call conversations: the same tool and argument names, fresh values that the
request states and the call copies, a consistent renaming of enum members."""

from __future__ import annotations

import random
import re

from barkit.augment import fresh_value, tool_call_variant, with_augmented
from barkit.suite.tools import CATEGORY, TOOLS, parse_call

ITEMS = CATEGORY.items("train", 300)


def _request(conversation: list[dict[str, str]]) -> str:
    return conversation[0]["content"].rsplit("Request: ", 1)[1]


def _listed_members(listing: str, name: str) -> list[str] | None:
    found = re.search(re.escape(name) + r"\??: ([\w ]+(?:\|[\w ]+)+)", listing)
    return found.group(1).split("|") if found else None


def test_variants_keep_the_call_and_state_every_value() -> None:
    rng = random.Random(0)
    renamed = enums = rebuilt = 0
    for item in ITEMS:
        variant = tool_call_variant(item.messages(), rng)
        assert variant is not None
        call, old = parse_call(variant[1]["content"]), parse_call(item.answer)
        assert call is not None and old is not None
        assert call["name"] == old["name"] and call["arguments"].keys() == old["arguments"].keys()
        request, listing = _request(variant), variant[0]["content"].rsplit("Request: ", 1)[0]
        # the other listed tools and the prompt's layout are untouched
        assert listing.count("\n") == item.prompt.rsplit("Request: ", 1)[0].count("\n")
        tool = TOOLS[call["name"]]
        for name, value in call["arguments"].items():
            param = tool.by_name[name]
            if isinstance(value, bool):
                assert value == old["arguments"][name]
                continue
            spoken = str(value)
            if param.enum:
                members = _listed_members(listing, name)
                assert members is not None and spoken in members  # the call uses a listed member
                renamed += members != list(param.enum)
                enums += 1
            else:
                assert spoken != str(old["arguments"][name])  # a fresh value, not the suite's
                assert type(value) is type(old["arguments"][name])
            assert re.search(r"(?<![\w])" + re.escape(spoken) + r"(?![\w])", request), (request, spoken)
        rebuilt += _request(item.messages()).split()[0] not in request
    assert 0.3 * enums < renamed < 0.7 * enums  # half the copies rename their enum members
    assert rebuilt > 0.2 * len(ITEMS)


def test_fresh_values_keep_their_shape() -> None:
    rng = random.Random(1)
    assert isinstance(fresh_value(12, rng), int) and fresh_value(True, rng) is True
    assert re.fullmatch(r"\d\d:\d\d", fresh_value("19:30", rng))
    two = fresh_value("Tom Bell", rng)
    assert len(two.split()) == 2 and all(w[0].isupper() and w[1:].islower() for w in two.split())
    assert fresh_value("ACME", rng).isupper() and fresh_value("kitchen", rng).islower()


def test_conversations_without_a_call_are_left_alone() -> None:
    chat = [{"role": "user", "content": "Hello?"}, {"role": "assistant", "content": "Hi there."}]
    assert tool_call_variant(chat, random.Random(0)) is None
    counts: dict[str, int] = {}
    assert list(with_augmented([chat], {"tool_calls": 3.0}, 0, counts)) == [chat]
    assert counts == {}


def test_with_augmented_is_seeded_and_counts_its_copies() -> None:
    convs = [item.messages() for item in ITEMS[:40]]
    counts: dict[str, int] = {}
    first = list(with_augmented(convs, {"tool_calls": 1.5}, 7, counts))
    assert first == list(with_augmented(convs, {"tool_calls": 1.5}, 7))
    assert first != list(with_augmented(convs, {"tool_calls": 1.5}, 8))
    assert len(first) == len(convs) + counts["tool_calls"]
    assert len(convs) < counts["tool_calls"] < 2 * len(convs)  # one each, plus a coin flip
    assert [c for c in first if c in convs] == convs  # the originals stay, in order
