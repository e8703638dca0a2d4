"""Stage kinds: the one registry. Everything that lists, orders or sizes stages reads it.

Each :class:`KindSpec` carries what makes a stage kind itself: its default trainable set (BAR's
progressive unfreezing), its share of general data, the learning-rate scale of an MoE's shared
tensors, its objective, its place in an expert's pipeline, the input kinds it runs on, and its
per-preset numbers (:class:`Sizes`). Recipes, ``barkit train --stage``, the baselines, the
reproduction and the reports derive their lists from :data:`KINDS`, so adding a stage kind is
one entry here plus its objective (in :mod:`barkit.train.stage_data`).

This module imports only the standard library at top level: the CLI reads it for its help text.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from barkit.errors import ConfigError
from barkit.train.stage_data import (
    ObjectiveFactory,
    chat_objective,
    general_objective,
    merged_sample,
    rl_objective,
    text_objective,
)

PRESET_NAMES = ("micro", "tiny", "small")


@dataclass(frozen=True)
class Sizes:
    """One preset's numbers for one stage kind.

    ``domain_items`` and ``general_items`` are items (or documents) drawn per domain and in all
    from the general categories; a kind that draws no suite data leaves them 0.
    """

    steps: int
    batch_size: int
    grad_accum: int
    seq_len: int
    lr: float
    warmup: int
    domain_items: int = 0
    general_items: int = 0


@dataclass(frozen=True)
class KindSpec:
    """One stage kind. ``inputs`` names the input kinds (:mod:`barkit.train.inputs`) it runs on."""

    name: str
    #: place in an expert's pipeline; recipes must list their stages in this order
    order: int
    trainable: tuple[str, ...]
    general_mix: float
    shared_lr_scale: float
    weight_decay: float
    objective: ObjectiveFactory
    sizes: Mapping[str, Sizes]
    inputs: frozenset[str]
    #: whether a recipe may list it among an expert's stages
    in_recipe: bool = False
    #: whether it reads raw domain text (a domain without any cannot run it)
    needs_text: bool = False
    #: whether it takes GRPO settings (``overrides.grpo``)
    rl: bool = False
    #: log every step at every preset (RL's reward curve is a result, not a diagnostic)
    log_every_step: bool = False
    #: the row kind it reads from a user's file (``barkit.userdata``: text, sft, rl); None: none
    data_kind: str | None = None

    def at(self, preset: str) -> Sizes:
        """This kind's numbers at ``preset`` (ConfigError naming the known presets otherwise)."""
        if preset not in self.sizes:
            raise ConfigError(f"unknown preset {preset!r}; known: {', '.join(self.sizes)}")
        return self.sizes[preset]


# Domain stages draw (domain, general) items per preset; micro keeps tests fast.
_DATA = {"micro": (48, 48), "tiny": (2000, 1500), "small": (8000, 6000)}


def _sizes(table: Mapping[str, tuple[int, int, int, int, float, int]], data: bool = True) -> dict[str, Sizes]:
    """(steps, batch_size, grad_accum, seq_len, lr, warmup) per preset, plus the domain data sizes."""
    return {p: Sizes(*row, *(_DATA[p] if data else (0, 0))) for p, row in table.items()}


# The tiny numbers are sized so that the whole demo (base, 6 expert stages, router, evals) fits
# in about 15 minutes on an otherwise idle 2-core CPU (measured: dense pretrain about 5 steps/s,
# a branch's SFT about 3.2 steps/s); the micro numbers make a stage run in a second or two.
PRETRAIN = KindSpec(
    "pretrain",
    order=0,
    trainable=("*",),
    general_mix=0.0,
    shared_lr_scale=1.0,
    weight_decay=0.01,
    objective=general_objective,
    # its data sizes are the base's own (barkit.base)
    sizes=_sizes(
        {
            "micro": (6, 4, 1, 64, 3e-3, 1),
            "tiny": (1200, 8, 1, 256, 1e-2, 30),
            "small": (3000, 16, 2, 256, 1e-3, 100),
        },
        data=False,
    ),
    inputs=frozenset(),
)
# BAR mixes general data into every domain stage so experts do not drift away from what the
# anchor already does well.
MIDTRAIN = KindSpec(
    "midtrain",
    order=10,
    trainable=("expert", "router"),
    general_mix=0.3,
    shared_lr_scale=1.0,
    weight_decay=0.01,
    objective=text_objective,
    sizes=_sizes(
        {
            "micro": (4, 4, 1, 64, 1e-3, 1),
            "tiny": (80, 8, 1, 256, 2e-3, 5),
            "small": (600, 16, 1, 256, 5e-4, 30),
        }
    ),
    inputs=frozenset({"branch", "dense"}),
    in_recipe=True,
    needs_text=True,
    data_kind="text",
)
# shared_lr_scale 0.1 at SFT: BAR trains shared tensors at the experts' rate; at 7B an SFT run
# moves embeddings and LM head by a small fraction of their size, so averaging them over experts
# costs little. A few-million-parameter model at a tiny-model learning rate moves them by a large
# fraction, and the average of four experts' shared tensors then matches none of their FFNs. At
# a tenth of the rate a tool-use + safety merge kept safety at 12 (18 with only anchor and safety
# expert switched on) where the full rate gave 0 and 0 (300 SFT steps, tiny base;
# docs/results/README.md). It is not enough at four experts: the demo's merged model still scores
# 0 on safety. A recipe sets it back to 1.0 (``optim.shared_lr_scale``) for BAR's single rate.
SFT = KindSpec(
    "sft",
    order=20,
    trainable=("expert", "router", "embeddings", "lm_head"),
    general_mix=0.3,
    shared_lr_scale=0.1,
    weight_decay=0.01,
    objective=chat_objective,
    sizes=_sizes(
        {
            "micro": (4, 4, 1, 64, 1e-3, 1),
            "tiny": (250, 8, 1, 256, 2e-3, 10),
            "small": (600, 16, 1, 256, 5e-4, 30),
        }
    ),
    inputs=frozenset({"branch", "dense"}),
    in_recipe=True,
    data_kind="sft",
)
RLVR = KindSpec(
    "rlvr",
    order=30,
    trainable=("*",),
    general_mix=0.0,
    shared_lr_scale=1.0,
    weight_decay=0.01,
    objective=rl_objective,
    sizes=_sizes(
        {
            "micro": (2, 4, 1, 64, 1e-5, 0),
            "tiny": (20, 4, 1, 256, 5e-5, 0),
            "small": (150, 8, 1, 256, 5e-6, 0),
        }
    ),
    inputs=frozenset({"branch", "dense"}),
    in_recipe=True,
    rl=True,
    log_every_step=True,
    data_kind="rl",
)
# On a branch the router stage reads the SFT conversations (for studying one expert's routing);
# on a merged or stitched model its callers hand it the stratified router sample instead.
ROUTER = KindSpec(
    "router",
    order=40,
    trainable=("router",),
    general_mix=0.0,
    shared_lr_scale=1.0,
    weight_decay=0.0,
    objective=chat_objective,
    sizes=_sizes(
        {
            "micro": (4, 4, 1, 64, 1e-3, 0),
            "tiny": (40, 8, 1, 256, 3e-3, 4),
            "small": (300, 16, 1, 256, 1e-3, 10),
        }
    ),
    inputs=frozenset({"branch", "merged", "stitched"}),
    data_kind="sft",
)

# An option after the merge (recipe ``recover:``), off by default (BAR goes from merge to router).
# BTX trains the whole merged model briefly after merging; here the experts stay frozen and the
# tensors that averaging disturbed (embeddings, LM head, norms) re-fit them, with the router, at a
# low rate, on the router sample (all experts' SFT data plus general). Attention is left frozen by
# default (add ``attention`` to ``trainable`` to train it). No weight decay: a short recovery must
# not pull the averaged tensors towards zero. The default recipe (barkit/recipes/default.yaml)
# adds attention and trains at 1e-3 for 160 steps on a 20% sample: measured on the demo's merge
# (docs/results/README.md), attention is what lets the router's decision reach the answer's
# first token, while this kind's own defaults left every expert at 0 on the previous base.
RECOVER = KindSpec(
    "recover",
    order=35,
    trainable=("router", "embeddings", "lm_head", "norms"),
    general_mix=0.0,
    shared_lr_scale=1.0,
    weight_decay=0.0,
    objective=merged_sample,
    sizes=_sizes(
        {
            "micro": (4, 4, 1, 64, 1e-4, 0),
            "tiny": (40, 8, 1, 256, 1e-4, 4),
            "small": (150, 16, 1, 256, 3e-5, 10),
        },
        data=False,
    ),
    inputs=frozenset({"merged"}),
)

#: name -> kind, the one registry (tests add a kind with ``monkeypatch.setitem``)
KINDS: dict[str, KindSpec] = {k.name: k for k in (PRETRAIN, MIDTRAIN, SFT, RLVR, RECOVER, ROUTER)}


def get_kind(name: str) -> KindSpec:
    """The kind called ``name`` (ConfigError naming the known kinds otherwise)."""
    if name not in KINDS:
        raise ConfigError(f"unknown stage kind {name!r}; known: {', '.join(kind_names())}")
    return KINDS[name]


def sft_pool_size(preset: str) -> int:
    """Items per category an expert's SFT stage draws from: the pool the router sample shares."""
    return get_kind("sft").at(preset).domain_items


def kind_names(*, runs_on: str | None = None, in_recipe: bool | None = None) -> tuple[str, ...]:
    """Kind names in pipeline order, optionally only those that run on an input kind or that a
    recipe may list."""
    kinds = sorted(KINDS.values(), key=lambda k: k.order)
    return tuple(
        k.name
        for k in kinds
        if (runs_on is None or runs_on in k.inputs) and (in_recipe is None or k.in_recipe == in_recipe)
    )


def recipe_kinds() -> tuple[str, ...]:
    """The stages an expert's recipe may list, in order."""
    return kind_names(in_recipe=True)


def branch_kinds() -> tuple[str, ...]:
    """The stages that run on one expert's branch: ``barkit train --stage`` and the baselines' budgets."""
    return kind_names(runs_on="branch")
