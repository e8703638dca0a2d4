"""The base shipped inside the package: current with its recipe, and used by recipes."""

from __future__ import annotations

from pathlib import Path

import pytest

from barkit import shipped
from barkit.suite import SUITE_VERSION


def test_shipped_bases_match_the_recipe_that_would_rebuild_them() -> None:
    present = {key: name for key, name in shipped.SHIPPED.items() if shipped.shipped_manifest(*key)}
    if not present:
        pytest.skip(
            "no base is shipped yet: build it with `barkit base --preset tiny --out "
            "src/barkit/bases/tiny-olmo2` (see README); this test then guards it against going stale"
        )
    for key in present:
        manifest = shipped.shipped_manifest(*key)
        assert manifest is not None
        assert manifest["recipe_fingerprint"] == shipped.expected_fingerprint(*key), (
            f"shipped base {key} is stale: its recipe or the suite changed; rebuild it"
        )
        assert manifest["suite_version"] == SUITE_VERSION
        assert shipped.find_shipped(*key) is not None


def test_a_recipe_starts_from_the_shipped_base(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from barkit.base import train_base
    from barkit.pipeline import Runner, build_base
    from barkit.recipe import parse_recipe

    train_base(tmp_path / "bases" / "micro-olmo2", preset="micro", seed=0, progress=False)
    monkeypatch.setattr(shipped, "shipped_folder", lambda name: tmp_path / "bases" / name)
    monkeypatch.setitem(shipped.SHIPPED, ("olmo2", "micro", 0), "micro-olmo2")
    recipe = parse_recipe(
        {"name": "t", "preset": "micro", "experts": {"m": {"domain": "math", "stages": [{"kind": "sft"}]}}},
        "test",
    )
    log: list[str] = []
    base = build_base(Runner(tmp_path / "run", recipe, log.append))
    assert (base / "model.safetensors").read_bytes() == (
        tmp_path / "bases" / "micro-olmo2" / "model.safetensors"
    ).read_bytes()
    assert any("[run ] base" in line for line in log)
    # A stale shipped base (another recipe fingerprint) is never used in its place.
    monkeypatch.setattr(shipped, "expected_fingerprint", lambda *key: "other")
    assert shipped.find_shipped("olmo2", "micro", 0) is None
