"""Stage configuration: what a training stage does, validated when it is built.

A stage is one run of the training loop with one objective. Its defaults (trainable set, step
counts, learning rates per preset, general-data share) come from its kind's entry in
:mod:`barkit.train.kinds`; every field can be overridden by a recipe or a command's options.

Overrides are typed: :class:`StageOverrides` is derived from :class:`StageConfig` itself (every
field optional, the same constraints), so a misspelt or mistyped field fails where the recipe is
loaded, and a nested override (``optim: {shared_lr_scale: 1.0}``) changes that field alone.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
    model_serializer,
    model_validator,
)

from barkit.errors import ConfigError

#: a stage kind's name; the registry (:mod:`barkit.train.kinds`) holds the valid ones
StageKind = str
PresetName = Literal["micro", "tiny", "small"]


class OptimConfig(BaseModel):
    """AdamW and its learning-rate schedule."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    lr: float = Field(default=1e-3, gt=0, description="Peak learning rate, reached after warmup.")
    weight_decay: float = Field(default=0.0, ge=0, description="Decoupled (AdamW) weight decay.")
    betas: tuple[float, float] = Field(default=(0.9, 0.95), description="Adam's (beta1, beta2).")
    eps: float = Field(default=1e-8, gt=0, description="Adam's epsilon.")
    warmup_steps: int = Field(default=0, ge=0, description="Linear warmup from 0 to lr over this many steps.")
    schedule: Literal["cosine", "constant"] = Field(
        default="cosine", description="After warmup: cosine decay to min_lr_ratio * lr, or constant lr."
    )
    min_lr_ratio: float = Field(
        default=0.1, ge=0, le=1, description="Final lr of the cosine schedule, as a share of lr."
    )
    shared_lr_scale: float = Field(
        1.0,
        gt=0,
        le=1,
        description="Learning-rate multiplier for an MoE model's shared tensors (embeddings, LM head, "
        "attention, norms); expert and router tensors use lr. Below 1 keeps behaviour in the expert.",
    )
    grad_clip: float | None = Field(
        default=1.0, gt=0, description="Clip the global gradient norm to this; None = off."
    )

    @model_validator(mode="after")
    def _betas_in_range(self) -> OptimConfig:
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must lie in [0, 1), got {self.betas}")
        return self


class StageConfig(BaseModel):
    """One training stage. ``batch_size`` is per process and per micro-step; the global batch
    is ``batch_size * grad_accum * world_size`` sequences of ``seq_len`` tokens."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: StageKind = Field(description="Which stage of the recipe this is; sets the default trainable set.")
    steps: int = Field(gt=0, description="Optimizer steps.")
    batch_size: int = Field(default=8, gt=0, description="Sequences per micro-batch per process.")
    grad_accum: int = Field(default=1, gt=0, description="Micro-batches accumulated per optimizer step.")
    seq_len: int = Field(default=256, ge=8, description="Tokens per packed sequence.")
    optim: OptimConfig = Field(default_factory=lambda: OptimConfig(), description="Optimizer and schedule.")
    trainable: list[str] | None = Field(
        default=None,
        description="Group names (expert, router, embeddings, lm_head, attention, norms), "
        "embeddings:new / lm_head:new (only the rows of the tokens this stage adds train) or fnmatch "
        "globs over parameter names; None = the default of this kind (barkit.train.kinds).",
    )
    aux_loss_coef: float | None = Field(
        default=None, ge=0, description="MoE load-balancing loss coefficient; None = the model config's."
    )
    checkpoint_every: int = Field(
        default=0, ge=0, description="Save a resumable checkpoint every N steps; 0 = at the end only."
    )
    log_every: int = Field(default=1, gt=0, description="Write a metrics line every N steps.")
    seed: int = Field(default=0, description="Seeds data order and the per-step RNG.")
    general_mix: float = Field(
        default=0.0, ge=0, le=1, description="Share of general (non-domain) data mixed into the stage's data."
    )
    synthetic: dict[str, float] = Field(
        default_factory=dict,
        description="Synthetic conversations added to an SFT stage's domain data: generator name "
        "(barkit.copying.SYNTHETIC: invented_calls, repeat) -> how many per domain item.",
    )
    augment: dict[str, float] = Field(
        default_factory=dict,
        description="Augmented copies of an SFT stage's domain conversations: augmentation name "
        "(barkit.augment.AUGMENT: tool_calls) -> copies per domain conversation.",
    )
    dtype: Literal["float32", "bfloat16"] = Field(
        default="float32",
        description="Dtype the model is loaded and trained in; bfloat16 halves memory for models that "
        "do not fit in float32 (the anchor stays bit-exact at that dtype).",
    )
    gradient_checkpointing: bool = Field(
        default=False,
        description="Recompute activations in the backward pass (the model's activation checkpointing): "
        "less memory, more time, the same loss.",
    )

    @model_serializer(mode="wrap")
    def _omit_new_defaults(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Fields added after runs were keyed on the dump are left out at their default, so the
        # fingerprints of every config that does not use them stay what they were.
        data: dict[str, Any] = handler(self)
        for name, default in _LATER_DEFAULTS.items():
            if data.get(name) == default:
                data.pop(name, None)
        return data

    @field_validator("synthetic", "augment")
    @classmethod
    def _known_generators(cls, v: dict[str, float], info: ValidationInfo) -> dict[str, float]:
        """Each named generator exists and adds 0 < ratio <= 10 conversations per domain item."""
        if info.field_name == "synthetic":
            from barkit.copying import SYNTHETIC

            known = list(SYNTHETIC)
            unknown, per_item = "unknown synthetic data", "synthetic {}: per domain item"
        else:
            from barkit.augment import AUGMENT

            known = list(AUGMENT)
            unknown, per_item = "unknown augmentation", "augment {}: copies per domain item"
        for name, ratio in v.items():
            if name not in known:
                raise ValueError(f"{unknown} {name!r}; known: {', '.join(known)}")
            if not 0.0 < ratio <= 10.0:
                raise ValueError(f"{per_item.format(name)} must be in (0, 10], got {ratio}")
        return v

    @field_validator("kind")
    @classmethod
    def _registered(cls, v: str) -> str:
        from barkit.train.kinds import KINDS, kind_names

        if v not in KINDS:
            raise ValueError(f"unknown stage kind {v!r}; known: {', '.join(kind_names())}")
        return v

    def trainable_patterns(self) -> list[str]:
        """The trainable set this stage asks for: explicit, or its kind's default."""
        from barkit.train.kinds import get_kind

        return list(self.trainable) if self.trainable is not None else list(get_kind(self.kind).trainable)


#: StageConfig fields added after pipelines first keyed on its dump, with their defaults
_LATER_DEFAULTS: dict[str, Any] = {
    "dtype": "float32",
    "gradient_checkpointing": False,
    "synthetic": {},
    "augment": {},
}


class GRPOConfig(BaseModel):
    """Sampling and loss settings of the ``rlvr`` stage."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    group_size: int = Field(
        4, ge=2, description="Samples per prompt; advantages are normalised within a group."
    )
    prompts_per_step: int | None = Field(
        None, gt=0, description="Prompts per rollout; None = the stage's batch_size."
    )
    max_new_tokens: int = Field(48, gt=0, description="Longest sampled completion, in tokens.")
    temperature: float = Field(
        1.0, gt=0, description="Sampling temperature (log-probs use the same scaling)."
    )
    beta: float = Field(0.0, ge=0, description="KL penalty to the starting policy; 0 = off (BAR's setting).")
    clip_eps: float = Field(0.2, gt=0, lt=1, description="PPO ratio clip: [1 - eps, 1 + eps].")
    adv_eps: float = Field(1e-4, gt=0, description="Added to the group std before dividing.")

    @classmethod
    def for_preset(cls, preset: str, **overrides: Any) -> GRPOConfig:
        """Defaults sized to a preset's ``seq_len`` (micro: 64 tokens, so short completions)."""
        group, new_tokens = _PRESET_SAMPLING.get(preset, _PRESET_SAMPLING["tiny"])
        fields: dict[str, Any] = {"group_size": group, "max_new_tokens": new_tokens}
        fields.update({k: v for k, v in overrides.items() if v is not None})
        return cls.model_validate(fields)


# (group_size, max_new_tokens) per model preset: sampling sized to each preset's seq_len.
_PRESET_SAMPLING: dict[str, tuple[int, int]] = {"micro": (4, 16), "tiny": (4, 48), "small": (8, 96)}


# ----------------------------------------------------------------------------- overrides


class _Partial(BaseModel):
    """Every field optional; only the fields a user set are dumped (they are the patch)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_serializer(mode="wrap")
    def _only_set(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        return {k: v for k, v in data.items() if k in self.model_fields_set}


def _partial(
    model: type[BaseModel], name: str, *, skip: tuple[str, ...] = (), nested: dict[str, Any] | None = None
) -> Any:
    """``model`` with every field optional and its constraints kept (``nested`` swaps field types)."""
    fields: dict[str, Any] = {}
    for field, info in model.model_fields.items():
        if field in skip:
            continue
        annotation: Any = (nested or {}).get(field)
        if annotation is None:
            base = info.annotation
            annotation = Annotated[(base, *info.metadata)] if info.metadata else base
        fields[field] = (annotation | None, Field(None, description=info.description))
    return create_model(name, __base__=_Partial, **fields)


OptimOverrides = _partial(OptimConfig, "OptimOverrides")
GRPOOverrides = _partial(GRPOConfig, "GRPOOverrides")
_StageFields = _partial(StageConfig, "_StageFields", skip=("kind", "seed"), nested={"optim": OptimOverrides})


class StageOverrides(_StageFields):  # type: ignore[misc,valid-type]
    """A recipe stage's overrides: StageConfig's fields (``optim`` field by field), the special
    tokens to add and the GRPO settings (``rlvr`` only). Unset fields keep the kind's default."""

    add_special_tokens: list[str] | None = Field(
        None, description="Tokens to add before training; default: the domain's (tool markers at tool SFT)."
    )
    grpo: GRPOOverrides | None = Field(None, description="GRPO settings (rlvr only).")  # type: ignore[valid-type]


def _deep_merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``patch`` laid over it; a nested mapping changes only the keys it names."""
    out = dict(base)
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_overrides(overrides: StageOverrides | dict[str, Any] | None) -> StageOverrides:
    """Typed overrides from a mapping (ConfigError naming the bad field)."""
    if isinstance(overrides, StageOverrides):
        return overrides
    try:
        return StageOverrides.model_validate(overrides or {})
    except ValidationError as e:
        raise ConfigError(f"stage overrides: {_first_error(e)}") from None


def _defaults(kind: str, preset: str) -> dict[str, Any]:
    from barkit.train.kinds import get_kind

    spec = get_kind(kind)
    sizes = spec.at(preset)
    optim = {"lr": sizes.lr, "warmup_steps": sizes.warmup, "weight_decay": spec.weight_decay}
    return {
        "kind": kind,
        "steps": sizes.steps,
        "batch_size": sizes.batch_size,
        "grad_accum": sizes.grad_accum,
        "seq_len": sizes.seq_len,
        "optim": OptimConfig(**optim, shared_lr_scale=spec.shared_lr_scale).model_dump(),
        "general_mix": spec.general_mix,
        "log_every": 1 if preset == "micro" or spec.log_every_step else 10,
    }


def default_stage(kind: StageKind, preset: str, **overrides: Any) -> StageConfig:
    """The default :class:`StageConfig` of ``kind`` for a model preset, with field overrides.

    A keyword left None keeps the default. A mapping or a partial model (``optim={"lr": 1e-4}``,
    :data:`OptimOverrides`) changes only the fields it names; a whole :class:`OptimConfig` is
    complete by construction and replaces the default.
    """
    patch: dict[str, Any] = {}
    for key, value in overrides.items():
        if isinstance(value, BaseModel):
            value = value.model_dump()  # a partial dumps only the fields that were set
        if value is not None:
            patch[key] = value
    return validate_stage(_deep_merge(_defaults(kind, preset), patch))


def _first_error(e: ValidationError) -> str:
    first = e.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "(root)"
    return f"field {where!r}: {first['msg']}"


def validate_stage(fields: dict[str, object], *, source: str = "stage config") -> StageConfig:
    """Build a :class:`StageConfig`, turning pydantic's report into one ConfigError line."""
    try:
        return StageConfig.model_validate(fields)
    except ValidationError as e:
        raise ConfigError(f"{source}: {_first_error(e)}") from None


def grpo_config(preset: str, overrides: GRPOOverrides | None) -> GRPOConfig:  # type: ignore[valid-type]
    """GRPO settings at ``preset`` with the fields ``overrides`` sets."""
    fields: dict[str, Any] = overrides.model_dump() if overrides is not None else {}
    try:
        return GRPOConfig.for_preset(preset, **fields)
    except ValidationError as e:
        raise ConfigError(f"stage override 'grpo': {_first_error(e)}") from None
