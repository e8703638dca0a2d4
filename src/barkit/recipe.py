"""Recipes: the declarative description of a whole BAR pipeline, validated by pydantic.

A recipe names the base, each expert's domain and stages (with per-stage overrides of the
stage defaults), the merge policy, the router stage and the evaluation. Validation happens at
load time; an error names the field and the file.

Options that may keep more of each expert through the merge, all off by default (BAR's
pipeline): ``router_init: domain`` (FlexOlmo's router rows from domain hidden-state means), a
stage's ``trainable: [..., embeddings:new, lm_head:new]`` (only the added tokens' rows train),
a top-level ``recover:`` block (:class:`RecoverSpec`, a low-rate recovery of shared tensors and
router after the merge) and ``route: {domain_loss: C}`` (a domain-label router loss).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from barkit.errors import BarkitError, ConfigError
from barkit.merge.policies import SharedPolicy, check_weights  # the merge's policy table
from barkit.train.config import StageOverrides

if TYPE_CHECKING:
    from barkit.train.stages import StagePlan

Preset = Literal["micro", "tiny", "small"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BaseSpec(_Strict):
    """The dense base: trained by barkit (``arch``) or an existing HF folder (``path``)."""

    path: str | None = Field(None, description="existing dense HF checkpoint; if unset barkit trains one")
    arch: Literal["olmo2", "llama"] = Field("olmo2", description="architecture of the embedded base")
    steps: int | None = Field(None, ge=1, description="override the preset's step count")


class StageSpec(_Strict):
    """One stage of an expert's pipeline; ``overrides`` are StageConfig fields (lr, steps, ...),
    typed: a nested field (``optim: {shared_lr_scale: 1.0}``) changes that field alone."""

    kind: str = Field(description="a stage kind a recipe may list (barkit.train.kinds)")
    steps: int | None = Field(None, ge=1)
    general_mix: float | None = Field(None, ge=0.0, le=1.0, description="share of general data")
    trainable: list[str] | None = Field(None, description="groups or globs; default: BAR's schedule")
    add_special_tokens: list[str] = Field(default_factory=list)
    overrides: StageOverrides = Field(
        default_factory=StageOverrides, description="further StageConfig fields"
    )

    @field_validator("kind")
    @classmethod
    def _recipe_kind(cls, v: str) -> str:
        from barkit.train.kinds import recipe_kinds

        if v not in recipe_kinds():
            raise ValueError(f"unknown stage kind {v!r}; a recipe lists: {', '.join(recipe_kinds())}")
        return v

    def plan(self, domain: str, preset: str, seed: int) -> StagePlan:
        """This stage resolved (ConfigError naming the bad field); the one place a recipe stage
        becomes a runnable plan."""
        from barkit.train.stages import resolve_stage

        fields: dict[str, Any] = self.overrides.model_dump()
        if self.general_mix is not None:
            fields["general_mix"] = self.general_mix
        if self.trainable is not None:
            fields["trainable"] = list(self.trainable)
        if self.add_special_tokens:
            fields["add_special_tokens"] = list(self.add_special_tokens)
        return resolve_stage(self.kind, domain, preset, self.steps, seed, fields)


class ExpertSpec(_Strict):
    """An expert: a domain of the micro-suite and its ordered stages."""

    domain: str
    stages: list[StageSpec] = Field(min_length=1)
    version: str = Field("v1", description="free label; changing it rebuilds nothing by itself")

    @field_validator("domain")
    @classmethod
    def _known_domain(cls, v: str) -> str:
        from barkit.suite import CATEGORIES

        if v not in CATEGORIES:
            raise ValueError(f"unknown domain {v!r}; known: {', '.join(CATEGORIES)}")
        return v

    @field_validator("stages")
    @classmethod
    def _ordered(cls, v: list[StageSpec]) -> list[StageSpec]:
        from barkit.train.kinds import get_kind, recipe_kinds

        kinds = [s.kind for s in v]
        if len(set(kinds)) != len(kinds) or kinds != sorted(kinds, key=lambda k: get_kind(k).order):
            order = ", ".join(recipe_kinds())
            raise ValueError(f"stages must be distinct and in the order {order}; got {kinds}")
        return v


class MergeSpec(_Strict):
    top_k: int | None = Field(None, ge=1, description="experts per token; default: all")
    shared: SharedPolicy = "mean"
    weights: list[float] | None = Field(None, description="one per expert, for the 'weighted' policy")
    overrides: dict[str, SharedPolicy] = Field(default_factory=dict, description="glob -> policy")

    @model_validator(mode="after")
    def _weights_fit_policies(self) -> MergeSpec:
        self.check(experts=None)
        return self

    def check(self, experts: int | None) -> None:
        """The merge's own weights rule, at load time; ``experts`` when the recipe knows it."""
        try:
            check_weights(self.shared, self.overrides, self.weights, experts, field="merge.weights")
        except ConfigError as e:
            raise ValueError(str(e)) from None


class RouteSpec(_Strict):
    sample: float = Field(0.05, gt=0.0, le=1.0, description="stratified share of all experts' SFT data")
    steps: int | None = Field(None, ge=1)
    domain_loss: float = Field(
        0.0,
        ge=0.0,
        description="coefficient of the domain-label router loss: cross-entropy of each token's router "
        "logits against its sample's expert (general categories: the anchor); 0 = off (BAR)",
    )


class RecoverSpec(_Strict):
    """An optional step between merge and route (absent = off, BAR's pipeline): a short low-rate
    training of the merged model's shared tensors and router on the router sample, experts
    frozen (the ``recover`` stage kind; :mod:`barkit.recover`). Writes ``OUT/recovered/``."""

    steps: int | None = Field(None, ge=1, description="override the preset's step count")
    sample: float = Field(0.05, gt=0.0, le=1.0, description="stratified share of all experts' SFT data")
    trainable: list[str] | None = Field(
        None, description="groups or globs; default: router, embeddings, lm_head, norms (add attention)"
    )
    overrides: StageOverrides = Field(
        default_factory=StageOverrides, description="further StageConfig fields (optim: {lr: ...})"
    )

    def plan(self, domains: list[str], preset: str, seed: int) -> StagePlan:
        """This step resolved (ConfigError naming the bad field)."""
        from barkit.recover import recover_plan

        fields: dict[str, Any] = self.overrides.model_dump()
        if self.trainable is not None:
            fields["trainable"] = list(self.trainable)
        return recover_plan(domains, preset=preset, steps=self.steps, seed=seed, overrides=fields)


class EvalSpec(_Strict):
    limit: int = Field(100, ge=1, description="test items per category")
    categories: list[str] | None = None


class Recipe(_Strict):
    """A whole pipeline: base -> experts (branch + stages) -> merge -> route -> eval."""

    name: str = "bar"
    preset: Preset = "tiny"
    seed: int = 0
    base: BaseSpec = Field(default_factory=BaseSpec)
    router_init: Literal["equal", "domain", "random"] = Field(
        "equal", description="branch router rows: equal (BAR), domain (FlexOlmo: domain means), random"
    )
    experts: dict[str, ExpertSpec] = Field(min_length=1)
    merge: MergeSpec = Field(default_factory=MergeSpec)
    recover: RecoverSpec | None = Field(None, description="optional recovery after the merge; absent = off")
    route: RouteSpec = Field(default_factory=RouteSpec)
    eval: EvalSpec = Field(default_factory=EvalSpec)

    @model_validator(mode="after")
    def _names(self) -> Recipe:
        for name in self.experts:
            if name == "anchor" or not name.replace("_", "").isalnum():
                raise ValueError(f"experts.{name}: expert names are identifiers other than 'anchor'")
        return self

    @model_validator(mode="after")
    def _stages_resolve(self) -> Recipe:
        """Resolve every stage now, so that what only the whole config can tell (betas out of
        range, GRPO settings on a stage that is not RL, mid-training a domain without text)
        fails at load time, before the base trains."""
        for name, spec in self.experts.items():
            for i, stage in enumerate(spec.stages):
                try:
                    stage.plan(spec.domain, self.preset, self.seed)
                except BarkitError as e:
                    raise ValueError(f"experts.{name}.stages.{i}: {e}") from None
        if self.recover is not None:
            try:
                self.recover.plan(self.domains(), self.preset, self.seed)
            except BarkitError as e:
                raise ValueError(f"recover: {e}") from None
        return self

    def domains(self) -> list[str]:
        """The merged model's experts after the anchor, in recipe order (their domains)."""
        return [spec.domain for spec in self.experts.values()]

    @model_validator(mode="after")
    def _merge_weights_per_expert(self) -> Recipe:
        self.merge.check(experts=len(self.experts))
        return self


def _field_path(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc) or "(top level)"


def parse_recipe(data: Any, source: str) -> Recipe:
    """Validate a recipe dict; ConfigError names the first bad field and the source."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a recipe is a mapping at the top level")
    try:
        return Recipe.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        msg = str(err["msg"]).removeprefix("Value error, ")
        where = ".".join(str(p) for p in err["loc"])
        raise ConfigError(f"{source}: {where}: {msg}" if where else f"{source}: {msg}") from None


def load_recipe(path: str | Path) -> Recipe:
    """Load and validate a YAML recipe file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such recipe file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    return parse_recipe(data, str(path))


def builtin_recipe(name: str = "default") -> Recipe:
    """A recipe shipped with barkit (``barkit/recipes/NAME.yaml``)."""
    text = resources.files("barkit.recipes").joinpath(f"{name}.yaml").read_text()
    return parse_recipe(yaml.safe_load(text), f"barkit/recipes/{name}.yaml")


def to_yaml(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)


def quick_variant(recipe: Recipe) -> Recipe:
    """The same recipe at micro size with a short evaluation (``--quick``: tests, smoke runs)."""
    return recipe.model_copy(
        update={"preset": "micro", "eval": EvalSpec(limit=8, categories=recipe.eval.categories)}
    )
