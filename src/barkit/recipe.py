"""Recipes: the declarative description of a whole BAR pipeline, validated by pydantic.

A recipe names the base, each expert's domain and stages (with per-stage overrides of the
stage defaults), the merge policy, the router stage and the evaluation. Validation happens at
load time; an error names the field and the file.

Options that may keep more of each expert through the merge, all off by default (BAR's
pipeline): ``router_init: domain`` (FlexOlmo's router rows from domain hidden-state means), a
stage's ``trainable: [..., embeddings:new, lm_head:new]`` (only the added tokens' rows train),
a top-level ``recover:`` block (:class:`RecoverSpec`, a low-rate recovery of shared tensors and
router after the merge) and ``route: {domain_loss: C}`` (a domain-label router loss).

A stage may train on the user's own file instead of the suite (``data:``, with ``general_data``,
``general_mix`` and, for rlvr, ``verifier``), and an expert whose stages all have ``data`` needs
no suite ``domain``: its name is the expert's. Relative paths are read from the recipe's folder.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from barkit.errors import BarkitError, ConfigError
from barkit.merge.policies import SharedPolicy, check_weights  # the merge's policy table
from barkit.train.config import StageOverrides

if TYPE_CHECKING:
    from barkit.train.file_data import UserData
    from barkit.train.stages import StagePlan

Preset = Literal["micro", "tiny", "small"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _existing(value: str, info: ValidationInfo) -> str:
    """An existing data path, made absolute (relative to the recipe's folder when it has one)."""
    path = Path(value).expanduser()
    root = (info.context or {}).get("root")
    if not path.is_absolute() and root is not None:
        path = Path(root) / path
    if not path.exists():
        raise ValueError(f"{value}: no such file or folder")
    return str(path.resolve())


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
    synthetic: dict[str, float] | None = Field(
        None,
        description="sft: synthetic conversations per domain item, by generator (invented_calls, repeat)",
    )
    augment: dict[str, float] | None = Field(
        None,
        description="sft: augmented copies per domain conversation, by augmentation (tool_calls)",
    )
    data: str | None = Field(None, description="the user's file for this stage instead of the suite")
    general_data: str | None = Field(None, description="general data mixed into data (same format)")
    verifier: str | None = Field(None, description="rlvr on data: a verifier name or module:function")
    overrides: StageOverrides = Field(
        default_factory=StageOverrides, description="further StageConfig fields"
    )

    @field_validator("data", "general_data")
    @classmethod
    def _data_exists(cls, v: str | None, info: ValidationInfo) -> str | None:
        return None if v is None else _existing(v, info)

    @model_validator(mode="after")
    def _with_data(self) -> StageSpec:
        if self.data is None and (self.general_data is not None or self.verifier is not None):
            raise ValueError("general_data and verifier go with data (the stage's own file)")
        return self

    def user_data(self) -> UserData | None:
        """The stage's files, hashed, and its verifier; None on the suite."""
        if self.data is None:
            return None
        from barkit.train.file_data import user_data

        return user_data(self.data, general=self.general_data, verifier=self.verifier)

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
        if self.synthetic is not None:
            fields["synthetic"] = dict(self.synthetic)
        if self.augment is not None:
            fields["augment"] = dict(self.augment)
        return resolve_stage(self.kind, domain, preset, self.steps, seed, fields, data=self.user_data())


class ExpertSpec(_Strict):
    """An expert: a domain of the micro-suite (or none, when every stage has ``data``) and its
    ordered stages."""

    domain: str | None = None
    stages: list[StageSpec] = Field(min_length=1)
    version: str = Field("v1", description="free label; changing it rebuilds nothing by itself")

    @field_validator("domain")
    @classmethod
    def _known_domain(cls, v: str | None) -> str | None:
        from barkit.suite import CATEGORIES

        if v is not None and v not in CATEGORIES:
            raise ValueError(f"unknown domain {v!r}; known: {', '.join(CATEGORIES)}")
        return v

    @model_validator(mode="after")
    def _data_without_domain(self) -> ExpertSpec:
        if self.domain is None:
            for i, stage in enumerate(self.stages):
                if stage.data is None:
                    raise ValueError(
                        f"stages.{i}: an expert without a suite domain needs data in every stage"
                    )
        return self

    def suite_domain(self) -> str:
        """The suite domain; the baselines and the reproduction compare methods on the suite only."""
        if self.domain is None:
            raise ConfigError("an expert on the user's data has no suite domain to compare methods on")
        return self.domain

    def label(self, name: str) -> str:
        """What the expert is called in its stages and the merge: its domain, else its name."""
        return self.domain or name

    def sft_data(self) -> str | None:
        """The file of its sft stage, if it has one: its share of the router sample."""
        return next((s.data for s in self.stages if s.kind == "sft" and s.data is not None), None)

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
    lr: float | None = Field(None, gt=0.0, description="peak learning rate; default: the preset's")
    domain_loss: float = Field(
        0.0,
        ge=0.0,
        description="coefficient of the domain-label router loss: cross-entropy of each token's router "
        "logits against its sample's expert (general categories: the anchor); 0 = off (BAR)",
    )
    data: list[str] | None = Field(
        None,
        min_length=1,
        description="SFT files to sample instead of the suite; default: the suite when every expert "
        "has a suite domain, else each expert's sft file",
    )

    @field_validator("data")
    @classmethod
    def _files_exist(cls, v: list[str] | None, info: ValidationInfo) -> list[str] | None:
        return None if v is None else [_existing(p, info) for p in v]


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
                    stage.plan(spec.label(name), self.preset, self.seed)
                except BarkitError as e:
                    raise ValueError(f"experts.{name}.stages.{i}: {e}") from None
        if self.recover is not None:
            try:
                self.recover.plan(self.domains(), self.preset, self.seed)
            except BarkitError as e:
                raise ValueError(f"recover: {e}") from None
        return self

    def domains(self) -> list[str]:
        """The merged model's experts after the anchor, in recipe order (their domains, or for
        an expert trained on the user's files, its name)."""
        return [spec.label(name) for name, spec in self.experts.items()]

    @model_validator(mode="after")
    def _merge_weights_per_expert(self) -> Recipe:
        self.merge.check(experts=len(self.experts))
        return self

    @model_validator(mode="after")
    def _data_experts(self) -> Recipe:
        """What experts without a suite domain need: no domain router init, a router sample."""
        named = [n for n, e in self.experts.items() if e.domain is None]
        if named and self.router_init == "domain":
            raise ValueError(f"router_init 'domain' needs a suite domain; experts {named} have none")
        self.route_files()
        return self

    def route_files(self) -> list[str] | None:
        """The SFT files the router samples: ``route.data``, else None (the suite) when every
        expert has a suite domain, else each expert's sft file."""
        if self.route.data is not None:
            return list(self.route.data)
        if all(e.domain is not None for e in self.experts.values()):
            return None
        files = {name: e.sft_data() for name, e in self.experts.items()}
        missing = [name for name, f in files.items() if f is None]
        if missing:
            raise ValueError(
                f"route.data: experts {missing} have no sft data to sample; list the router's SFT files"
            )
        return [str(f) for f in files.values()]


def parse_recipe(data: Any, source: str, root: str | Path | None = None) -> Recipe:
    """Validate a recipe dict; ConfigError names the first bad field and the source. Relative
    data paths are read from ``root`` (the recipe's folder), else the working directory."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a recipe is a mapping at the top level")
    try:
        return Recipe.model_validate(data, context={"root": root})
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
    return parse_recipe(data, str(path), root=path.parent)


def builtin_recipe(name: str = "default") -> Recipe:
    """A recipe shipped with barkit (``barkit/recipes/NAME.yaml``)."""
    text = resources.files("barkit.recipes").joinpath(f"{name}.yaml").read_text()
    return parse_recipe(yaml.safe_load(text), f"barkit/recipes/{name}.yaml")


def to_yaml(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)


def quick_variant(recipe: Recipe) -> Recipe:
    """The same recipe at micro size with a short evaluation (``--quick``: tests, smoke runs); the
    experts' stages, the router and the recovery keep their learning rates but take the micro
    preset's step counts."""
    recover = None if recipe.recover is None else recipe.recover.model_copy(update={"steps": None})
    experts = {
        name: spec.model_copy(update={"stages": [s.model_copy(update={"steps": None}) for s in spec.stages]})
        for name, spec in recipe.experts.items()
    }
    return recipe.model_copy(
        update={
            "preset": "micro",
            "experts": experts,
            "eval": EvalSpec(limit=8, categories=recipe.eval.categories),
            "recover": recover,
            "route": recipe.route.model_copy(update={"steps": None}),
        }
    )
