"""Recipes: every shipped recipe validates; errors name the field and the file."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest
import yaml

from barkit.errors import ConfigError
from barkit.recipe import builtin_recipe, load_recipe, parse_recipe, quick_variant, to_yaml


def shipped_recipes() -> list[str]:
    folder = resources.files("barkit.recipes")
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


@pytest.mark.parametrize("name", shipped_recipes())
def test_every_shipped_recipe_validates(name: str) -> None:
    recipe = builtin_recipe(name)
    assert recipe.experts
    # Round trip through YAML gives the same recipe.
    assert parse_recipe(yaml.safe_load(to_yaml(recipe)), "roundtrip") == recipe


def test_default_recipe_follows_bar() -> None:
    recipe = builtin_recipe("default")
    stages = {name: [s.kind for s in e.stages] for name, e in recipe.experts.items()}
    assert stages == {
        "math": ["midtrain", "sft", "rlvr"],
        "code": ["midtrain", "sft", "rlvr"],
        "tool_use": ["sft"],
        "safety": ["sft"],
    }
    assert recipe.experts["tool_use"].stages[0].add_special_tokens == ["<tool_call>", "</tool_call>"]
    assert recipe.route.sample == 0.05
    # the two measured deviations from BAR (docs/results/README.md)
    assert recipe.merge.shared == "sum" and recipe.route.lr == 0.02


def test_quick_variant_is_micro() -> None:
    full = builtin_recipe()
    quick = quick_variant(full)
    assert quick.preset == "micro" and list(quick.experts) == list(full.experts)
    for name, spec in quick.experts.items():  # the micro preset's step counts, all else as it was
        assert [s.steps for s in spec.stages] == [None] * len(spec.stages)
        assert [s.model_copy(update={"steps": None}) for s in full.experts[name].stages] == spec.stages
    assert any(s.steps for spec in full.experts.values() for s in spec.stages), "the test needs one set"
    assert quick.route.steps is None and quick.route.lr == builtin_recipe().route.lr


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"experts": {"m": {"domain": "geometry", "stages": [{"kind": "sft"}]}}}, "experts.m.domain"),
        (
            {"experts": {"m": {"domain": "math", "stages": [{"kind": "sft", "lr": 1}]}}},
            "experts.m.stages.0.lr",
        ),
        (
            {"experts": {"m": {"domain": "math", "stages": [{"kind": "sft"}, {"kind": "midtrain"}]}}},
            "experts.m.stages",
        ),
        ({"preset": "huge", "experts": {"m": {"domain": "math", "stages": [{"kind": "sft"}]}}}, "preset"),
        ({"experts": {}}, "experts"),
        (
            {"experts": {"m": {"domain": "math", "stages": [{"kind": "sft", "general_mix": 1.5}]}}},
            "general_mix",
        ),
        (
            {"experts": {"t": {"domain": "tool_use", "stages": [{"kind": "sft", "synthetic": {"nope": 1}}]}}},
            "synthetic",
        ),
    ],
)
def test_errors_name_field_and_file(tmp_path: Path, data: dict, field: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as info:
        load_recipe(path)
    message = str(info.value)
    assert str(path) in message and field in message and "\n" not in message


def test_stage_synthetic_data_reaches_its_config() -> None:
    stages = [{"kind": "sft", "synthetic": {"invented_calls": 1.0}, "augment": {"tool_calls": 2}}]
    recipe = parse_recipe({"experts": {"t": {"domain": "tool_use", "stages": stages}}}, "r.yaml")
    plan = recipe.experts["t"].stages[0].plan("tool_use", recipe.preset, recipe.seed)
    assert plan.cfg.synthetic == {"invented_calls": 1.0}
    assert plan.cfg.augment == {"tool_calls": 2.0}
    assert parse_recipe(yaml.safe_load(to_yaml(recipe)), "roundtrip") == recipe


def test_not_yaml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "r.yaml"
    bad.write_text("experts: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(bad)
    with pytest.raises(ConfigError, match="no such recipe"):
        load_recipe(tmp_path / "missing.yaml")


_TWO = {
    "m": {"domain": "math", "stages": [{"kind": "sft"}]},
    "c": {"domain": "code", "stages": [{"kind": "sft"}]},
}


@pytest.mark.parametrize(
    ("merge", "needle"),
    [
        ({"shared": "weighted"}, "needs one weight per input"),
        ({"overrides": {"*embed*": "weighted"}}, "needs one weight per input"),
        ({"weights": [0.5, 0.5]}, "no policy in use takes weights"),
        ({"overrides": {"*embed*": "weighted"}, "weights": [1, 1, 1]}, "3 weights for 2 inputs"),
        ({"shared": "weighted", "weights": [1, -1]}, "non-negative"),
    ],
)
def test_merge_spec_checks_its_fields_at_load_time(merge: dict, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_recipe({"experts": _TWO, "merge": merge}, "r.yaml")
    assert needle in str(info.value) and "merge.weights" in str(info.value)


def test_weighted_override_recipe_loads() -> None:
    merge = {"overrides": {"*embed*": "weighted"}, "weights": [0.7, 0.3]}
    assert parse_recipe({"experts": _TWO, "merge": merge}, "r.yaml").merge.weights == [0.7, 0.3]
