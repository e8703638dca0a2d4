"""The stage-kind registry, typed and deep-merged overrides, and recipe errors at load time."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from barkit.errors import ConfigError
from barkit.recipe import load_recipe, parse_recipe
from barkit.train.config import default_stage
from barkit.train.kinds import KINDS, PRESET_NAMES, SFT, branch_kinds, get_kind, recipe_kinds
from barkit.train.stages import resolve_stage


def _recipe(stages: list[dict[str, Any]], domain: str = "math", preset: str = "micro") -> dict[str, Any]:
    return {"preset": preset, "experts": {"m": {"domain": domain, "stages": stages}}}


# ----------------------------------------------------------------------------- the registry


@pytest.mark.parametrize("name", list(KINDS))
def test_every_kind_is_complete_and_everywhere_it_belongs(name: str) -> None:
    kind = get_kind(name)
    for preset in PRESET_NAMES:
        cfg = default_stage(name, preset)
        sizes = kind.at(preset)
        assert (cfg.kind, cfg.steps, cfg.batch_size, cfg.seq_len) == (
            name,
            sizes.steps,
            sizes.batch_size,
            sizes.seq_len,
        )
        assert cfg.optim.lr == sizes.lr and cfg.general_mix == kind.general_mix
        assert cfg.trainable_patterns() == list(kind.trainable)
    assert callable(kind.objective)
    assert (name in branch_kinds()) == ("branch" in kind.inputs)
    if kind.in_recipe:
        assert parse_recipe(_recipe([{"kind": name}]), "t").experts["m"].stages[0].kind == name
    else:
        with pytest.raises(ConfigError, match=name):
            parse_recipe(_recipe([{"kind": name}]), "t")


def test_cli_and_reports_list_the_registry(capsys: pytest.CaptureFixture[str]) -> None:
    from barkit.cli import main

    assert main(["train", "--help"]) == 0
    help_text = capsys.readouterr().out
    assert all(kind in help_text for kind in branch_kinds())
    assert list(recipe_kinds()) == [k for k in branch_kinds() if get_kind(k).in_recipe]


def test_suite_categories_come_from_one_registration() -> None:
    from barkit.suite import CATEGORIES, DOMAINS, GENERAL, get_category

    assert CATEGORIES == GENERAL + DOMAINS and len(set(CATEGORIES)) == len(CATEGORIES)
    assert all(get_category(name).name == name for name in CATEGORIES)


# ----------------------------------------------------------------------------- overrides


def test_one_field_optim_override_changes_that_field_alone() -> None:
    default = resolve_stage("sft", "math", "micro").cfg
    changed = resolve_stage("sft", "math", "micro", overrides={"optim": {"shared_lr_scale": 1.0}}).cfg
    assert default.optim.shared_lr_scale == 0.1 and changed.optim.shared_lr_scale == 1.0
    assert changed.optim.model_dump(exclude={"shared_lr_scale"}) == default.optim.model_dump(
        exclude={"shared_lr_scale"}
    )
    assert changed.model_dump(exclude={"optim"}) == default.model_dump(exclude={"optim"})
    # the same through a recipe, the way the README writes it
    recipe = parse_recipe(_recipe([{"kind": "sft", "overrides": {"optim": {"shared_lr_scale": 1.0}}}]), "t")
    assert recipe.experts["m"].stages[0].plan("math", "micro", 0).cfg == changed


@pytest.mark.parametrize(
    ("stage", "needle"),
    [
        ({"kind": "sft", "overrides": {"optim": {"lrr": 1}}}, "lrr"),
        ({"kind": "sft", "overrides": {"optim": {"betas": [1.5, 0.9]}}}, "betas"),
        ({"kind": "sft", "overrides": {"steps": "many"}}, "steps"),
        ({"kind": "sft", "overrides": {"grpo": {"beta": 0.1}}}, "grpo"),
        ({"kind": "rlvr", "overrides": {"grpo": {"group_size": 1}}}, "group_size"),
        ({"kind": "sft", "overrides": {"trainable": ["expert"], "kind": "rlvr"}}, "kind"),
    ],
)
def test_bad_override_fails_at_load_naming_the_field(
    tmp_path: Path, stage: dict[str, Any], needle: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(_recipe([stage])))
    with pytest.raises(ConfigError) as info:
        load_recipe(path)
    assert needle in str(info.value) and str(path) in str(info.value) and "\n" not in str(info.value)


def test_midtrain_on_a_domain_without_text_fails_at_load() -> None:
    with pytest.raises(ConfigError, match="tool_use"):
        parse_recipe(_recipe([{"kind": "midtrain"}], domain="tool_use"), "t")


# ----------------------------------------------------------------------------- a new kind


@pytest.fixture(scope="module")
def micro_branch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from barkit.branch import branch
    from barkit.modeling import build_dense, save_model
    from barkit.presets import get_preset
    from barkit.suite import get_category
    from barkit.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("kinds")
    texts = [t for item in get_category("math").items("train", 40, 0) for t in (item.prompt, item.answer)]
    tok = train_tokenizer(400, texts=texts)
    save_model(build_dense("llama", get_preset("micro"), tok, seed=0), tok, root / "base", {"stage": "base"})
    branch(root / "base", root / "branch", domain="math")
    # from a trained expert, so that expert 1 differs from the anchor and the router gets a gradient
    from barkit.train.stages import run_domain_stage

    run_domain_stage(
        root / "branch", stage="sft", domain="math", out_dir=root / "sft", preset="micro", progress=False
    )
    return root / "sft"


def test_a_registered_kind_is_accepted_and_runs(
    micro_branch: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One registry entry (here a copy of SFT that trains only the expert) is all a new kind needs."""
    from barkit.cli import main
    from barkit.modeling import load_model

    cooldown = dataclasses.replace(SFT, name="cooldown", order=25, trainable=("expert",), shared_lr_scale=1.0)
    monkeypatch.setitem(KINDS, "cooldown", cooldown)
    recipe = parse_recipe(_recipe([{"kind": "sft"}, {"kind": "cooldown"}, {"kind": "rlvr"}]), "t")
    assert [s.kind for s in recipe.experts["m"].stages] == ["sft", "cooldown", "rlvr"]
    with pytest.raises(ConfigError, match="order"):
        parse_recipe(_recipe([{"kind": "cooldown"}, {"kind": "sft"}]), "t")

    out = tmp_path / "cooldown"
    args = ["train", str(micro_branch), "--stage", "cooldown", "--domain", "math", "--out", str(out)]
    assert main([*args, "--preset", "micro", "--steps", "2", "--no-progress"]) == 0
    before, _ = load_model(micro_branch)
    after, _ = load_model(out)
    moved = {n for n, p in after.named_parameters() if not torch.equal(p, before.get_parameter(n))}
    assert moved and all(".experts." in n for n in moved), moved
    for name in moved:  # the anchor stays bit-exact
        assert torch.equal(after.get_parameter(name)[0], before.get_parameter(name)[0])
