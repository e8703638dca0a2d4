"""The copy curriculum and the copy probe: held-out spans, annealed shares, exact scoring."""

from __future__ import annotations

import random

import pytest
import torch

from barkit import copying
from barkit.copying import copy_conversation, copy_document, copy_probe, is_probe_span, probe_items, span


@pytest.fixture(scope="module")
def micro_tokenizer() -> object:
    from barkit.tokenizer import train_tokenizer

    return train_tokenizer(600, seed=0, per_category=60)


def test_probe_spans_never_reach_training() -> None:
    rng = random.Random(0)
    assert not any(is_probe_span(span(rng)) for _ in range(2000))
    probe = [expected for _, expected in probe_items(200)]
    assert all(is_probe_span(s) for s in probe)
    assert len(set(probe)) > 190  # spans are random, not a handful of repeats


def test_every_document_kind_copies_something_from_its_context() -> None:
    rng = random.Random(1)
    for kind, make in copying.DOCUMENT_KINDS.items():
        doc = make(rng)
        head, _, tail = doc.rpartition("\n") if kind in ("record", "signature", "call") else (doc, "", doc)
        assert tail and head, kind
    chat = copy_conversation(rng)
    assert chat[1]["content"] in chat[0]["content"]
    assert isinstance(copy_document(rng), str)


def test_call_documents_copy_the_named_tool_and_every_value_from_the_request() -> None:
    import json

    from barkit.suite.tools import CATALOGUE, match_call

    rng = random.Random(3)
    catalogue = {t.name for t in CATALOGUE}
    for _ in range(200):
        listed, tool, request, arguments = copying.call_example(rng)
        assert 2 <= len(listed) <= 3 and tool in listed
        assert not {t.name for t in listed} & catalogue  # invented tools only, never the suite's
        assert len({t.name for t in listed}) == len(listed)
        # The request names the tool by a word of its name or description ...
        words = {w.strip(".?!,").lower() for w in request.split()}
        assert words & (set(tool.name.split("_")) | set(tool.description.split()))
        # ... and says every value the call carries (booleans as on/off).
        for value in arguments.values():
            said = ("on" if value else "off") if isinstance(value, bool) else str(value)
            assert said.lower() in request.lower()
        assert all(p.name in arguments for p in tool.params if p.required)
        # The call passes the suite's own BFCL-style check against the tool's schema.
        assert match_call({"name": tool.name, "arguments": arguments}, tool, arguments)
    doc = copying.DOCUMENT_KINDS["call"](random.Random(4))
    lines = doc.split("\n")
    assert lines[0] == "Tools:" and lines[-2].startswith("Request: ")
    assert set(json.loads(lines[-1])) == {"name", "arguments"}


def test_invented_call_conversations_have_the_suite_layout_and_a_checked_call() -> None:
    from barkit.suite.tools import TOOL_TOKENS, parse_call

    rng = random.Random(5)
    for _ in range(50):
        user, assistant = copying.call_conversation(rng)
        assert user["role"] == "user" and assistant["role"] == "assistant"
        assert user["content"].startswith("Tools:\n") and "\nRequest: " in user["content"]
        assert assistant["content"].startswith(TOOL_TOKENS[0]) and assistant["content"].endswith(
            TOOL_TOKENS[1]
        )
        call = parse_call(assistant["content"])
        assert call is not None and call["name"] + "(" in user["content"]


def test_recipe_copy_kinds_are_checked_and_keep_old_fingerprints() -> None:
    from dataclasses import replace

    from barkit.base_recipe import get_recipe
    from barkit.errors import BarkitError

    micro = get_recipe("micro")
    with pytest.raises(BarkitError, match="copy_kinds"):
        replace(micro, copy_kinds=("repeat", "nonsense"))
    classic = replace(micro, copy_kinds=copying.CLASSIC_KINDS)
    assert "copy_kinds" not in classic.to_dict()  # bases built before the field keep their fingerprint
    with_calls = replace(micro, copy_kinds=(*copying.CLASSIC_KINDS, "call"))
    assert with_calls.to_dict()["copy_kinds"][-1] == "call"
    assert with_calls.fingerprint("olmo2", "micro", 0) != classic.fingerprint("olmo2", "micro", 0)
    assert "call_chat" not in classic.to_dict()
    assert replace(micro, call_chat=0.5).to_dict()["call_chat"] == 0.5
    with pytest.raises(BarkitError, match="call_chat"):
        replace(micro, call_chat=-1.0)


def test_probe_scores_exact_copies_only(monkeypatch: pytest.MonkeyPatch, micro_tokenizer: object) -> None:
    import barkit.generate

    items = probe_items(10)
    right = [expected for _, expected in items]
    wrong = [expected + " x" for expected in right[:5]] + right[5:]
    for replies, score in ((right, 100.0), (wrong, 50.0)):
        monkeypatch.setattr(barkit.generate, "generate", lambda *a, r=replies, **k: list(r))
        assert copy_probe(None, micro_tokenizer, n=10)["copy"] == score


def test_curriculum_anneals_the_copy_share(micro_tokenizer: object) -> None:
    from barkit.train.curriculum import CopyCurriculumObjective
    from barkit.train.objectives import text_rows

    rows = text_rows(micro_tokenizer, ["Vozol lives in a town. " * 20] * 40, 64)
    objective = CopyCurriculumObjective(
        micro_tokenizer, rows, batch_size=8, seed=0, total_batches=100, start_share=1.0, end_share=0.0
    )
    general = rows.input_ids

    def copy_rows(index: int) -> int:
        batch = objective.batch(index)
        return sum(not any(torch.equal(r, g) for g in general) for r in batch["input_ids"])

    assert copy_rows(0) == 8 and copy_rows(100) == 0
    assert torch.equal(objective.batch(37)["input_ids"], objective.batch(37)["input_ids"])
    assert objective.share(50) == pytest.approx(0.5)
