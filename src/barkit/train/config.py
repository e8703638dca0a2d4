"""Stage configuration: what a training stage does, validated when it is built.

A stage is one run of the training loop with one objective. Its trainable set defaults to
BAR's progressive unfreezing (``DEFAULT_TRAINABLE``); every field can be overridden by a recipe
or a command's options. Step counts and learning rates per model preset live in ``_PRESET_TABLE``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from barkit.errors import ConfigError

StageKind = Literal["pretrain", "midtrain", "sft", "rlvr", "router"]
STAGE_KINDS: tuple[StageKind, ...] = ("pretrain", "midtrain", "sft", "rlvr", "router")
PresetName = Literal["micro", "tiny", "small"]

# BAR's progressive unfreezing: each stage trains a superset of the previous one; "*" = all.
# Group names are resolved per architecture by ``barkit.families`` (see ``barkit.train.freeze``).
DEFAULT_TRAINABLE: dict[StageKind, tuple[str, ...]] = {
    "pretrain": ("*",),
    "midtrain": ("expert", "router"),
    "sft": ("expert", "router", "embeddings", "lm_head"),
    "rlvr": ("*",),
    "router": ("router",),
}


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
        description="Group names (expert, router, embeddings, lm_head, attention, norms) or fnmatch "
        "globs over parameter names; None = the default for this kind (DEFAULT_TRAINABLE).",
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

    def trainable_patterns(self) -> list[str]:
        """The trainable set this stage asks for (explicit, or the kind's default)."""
        return list(self.trainable) if self.trainable is not None else list(DEFAULT_TRAINABLE[self.kind])


# (steps, batch_size, grad_accum, seq_len, lr, warmup) per preset and kind. The tiny numbers are
# sized so that the whole demo (base, 6 expert stages, router, evals) fits in about 15 minutes
# on an otherwise idle 2-core CPU (measured: dense pretrain about 5 steps/s, a branch's SFT
# about 3.2 steps/s); the micro numbers make a stage run in a second or two for tests.
_PRESET_TABLE: dict[str, dict[StageKind, tuple[int, int, int, int, float, int]]] = {
    "micro": {
        "pretrain": (6, 4, 1, 64, 3e-3, 1),
        "midtrain": (4, 4, 1, 64, 1e-3, 1),
        "sft": (4, 4, 1, 64, 1e-3, 1),
        "rlvr": (2, 4, 1, 64, 1e-5, 0),
        "router": (4, 4, 1, 64, 1e-3, 0),
    },
    "tiny": {
        "pretrain": (1200, 8, 1, 256, 1e-2, 30),
        "midtrain": (80, 8, 1, 256, 2e-3, 5),
        "sft": (250, 8, 1, 256, 2e-3, 10),
        "rlvr": (20, 4, 1, 256, 5e-5, 0),
        "router": (40, 8, 1, 256, 3e-3, 4),
    },
    "small": {
        "pretrain": (3000, 16, 2, 256, 1e-3, 100),
        "midtrain": (600, 16, 1, 256, 5e-4, 30),
        "sft": (600, 16, 1, 256, 5e-4, 30),
        "rlvr": (150, 8, 1, 256, 5e-6, 0),
        "router": (300, 16, 1, 256, 1e-3, 10),
    },
}

# Shares of general data per kind (BAR mixes general data into every domain stage so experts
# do not drift away from what the anchor already does well).
_GENERAL_MIX: dict[StageKind, float] = {
    "pretrain": 0.0,
    "midtrain": 0.3,
    "sft": 0.3,
    "rlvr": 0.0,
    "router": 0.0,
}


# Learning-rate multiplier for an MoE's shared tensors, per kind. BAR trains them at the same
# rate as the experts; at 7B an SFT run moves embeddings and LM head by a small fraction of
# their size, so averaging them over experts costs little. A few-million-parameter model at a
# tiny-model learning rate moves them by a large fraction, and the average of four experts'
# shared tensors then matches none of their FFNs: the merge lost what each expert learned. At
# a tenth of the rate for shared tensors during SFT (expert FFN and router at the full rate), a
# tool-use + safety merge kept safety at 12 (18 with only anchor and safety expert switched
# on) where the full rate gave 0 and 0 (300 SFT steps, tiny base; docs/results/README.md).
# It is not enough at four experts: the demo's merged model still scores 0 on safety.
# Set it back to 1.0 in a recipe (``optim.shared_lr_scale``) for BAR's single rate.
_SHARED_LR_SCALE: dict[StageKind, float] = {
    "pretrain": 1.0,
    "midtrain": 1.0,
    "sft": 0.1,
    "rlvr": 1.0,
    "router": 1.0,
}


def default_stage(kind: StageKind, preset: str, **overrides: object) -> StageConfig:
    """The default :class:`StageConfig` of ``kind`` for a model preset, with field overrides."""
    if preset not in _PRESET_TABLE:
        raise ConfigError(f"unknown preset {preset!r}; known: {', '.join(_PRESET_TABLE)}")
    if kind not in _PRESET_TABLE[preset]:
        raise ConfigError(f"unknown stage kind {kind!r}; known: {', '.join(STAGE_KINDS)}")
    steps, batch, accum, seq_len, lr, warmup = _PRESET_TABLE[preset][kind]
    fields: dict[str, object] = {
        "kind": kind,
        "steps": steps,
        "batch_size": batch,
        "grad_accum": accum,
        "seq_len": seq_len,
        "optim": OptimConfig(
            lr=lr,
            warmup_steps=warmup,
            weight_decay=0.0 if kind == "router" else 0.01,
            shared_lr_scale=_SHARED_LR_SCALE[kind],
        ),
        "general_mix": _GENERAL_MIX[kind],
        # RL logs every step: its reward curve is a result, not a diagnostic.
        "log_every": 1 if preset == "micro" or kind == "rlvr" else 10,
    }
    fields.update({k: v for k, v in overrides.items() if v is not None})
    return validate_stage(fields)


def validate_stage(fields: dict[str, object], *, source: str = "stage config") -> StageConfig:
    """Build a :class:`StageConfig`, turning pydantic's report into one ConfigError line."""
    from pydantic import ValidationError

    try:
        return StageConfig.model_validate(fields)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(root)"
        raise ConfigError(f"{source}: field {where!r}: {first['msg']}") from None
