"""Per-architecture knowledge, kept as data: one :class:`Family` entry per dense/MoE pair.

A family says which dense model types it accepts, which native transformers MoE architecture a
branch of them becomes, how to build that MoE config without losing a single field that changes
the computation, which parameter names form which group (expert, router, embeddings, ...), and
which tensor names ``save_pretrained`` writes on disk. Nothing else in barkit should test model
type strings; adding a family means adding one entry to :data:`FAMILIES`.

How transformers 5.23 holds MoE weights in memory (every family)::

    model.layers.N.mlp.gate.weight               [E, H]      router, one row per expert
    model.layers.N.mlp.experts.gate_up_proj      [E, 2I, H]  gate rows first, then up rows
    model.layers.N.mlp.experts.down_proj         [E, H, I]

On disk ``save_pretrained`` splits the fused tensors back into per-expert matrices, under the
family's historical names (see ``disk_expert_proj`` / ``disk_moe_prefix``).
"""

from __future__ import annotations

import copy
import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Literal

from barkit.errors import BarkitError, IncompatibleError

if TYPE_CHECKING:
    import torch
    from transformers import PretrainedConfig

GROUPS = ("expert", "router", "embeddings", "lm_head", "attention", "norms")

# Experts implementations that train on CPU within memory (eager was the faster of the two for
# barkit's 2-8 expert models on 2 cores, see barkit.modeling); `batched_mm` materialises one weight
# copy per token and ran out of 24 GiB on a small model here.
TRAINABLE_EXPERTS_IMPLEMENTATIONS = ("eager", "grouped_mm")
DEFAULT_EXPERTS_IMPLEMENTATION = "eager"

# Config keys that describe the file or the class rather than the computation; never copied.
_META_KEYS = frozenset(
    {
        "_name_or_path",
        "architectures",
        "model_type",
        "transformers_version",
        "auto_map",
        "experts_implementation",
        "_experts_implementation",
        "attn_implementation",
        "_attn_implementation",
    }
)


def _group_table(
    moe_prefix: str, attention: tuple[str, ...], norms: tuple[str, ...], embedding: str, *, moe: bool
) -> dict[str, tuple[str, ...]]:
    """Glob patterns per group; ``moe_prefix`` is the MLP module's name (``mlp`` in memory)."""
    layer = "model.layers.*."
    expert = (f"{layer}{moe_prefix}.experts.*",) if moe else (f"{layer}mlp.*",)
    router = (f"{layer}{moe_prefix}.gate.weight",) if moe else ()
    return {
        "expert": expert,
        "router": router,
        "embeddings": (embedding,),
        "lm_head": ("lm_head.weight",),
        "attention": tuple(f"{layer}self_attn.{a}" for a in attention),
        "norms": tuple(f"{layer}{n}.weight" for n in norms) + ("model.norm.weight",),
    }


@dataclass(frozen=True)
class Family:
    """One dense architecture family and the native MoE architecture its branches become."""

    name: str
    dense_model_types: tuple[str, ...]
    moe_model_type: str
    #: attention parameters (globs under ``self_attn.``), including OLMo-2's q/k norms
    attention: tuple[str, ...]
    #: per-layer norm module names
    norms: tuple[str, ...]
    #: MLP module prefix in the on-disk MoE checkpoint (Mixtral keeps its original name)
    disk_moe_prefix: str
    #: on-disk per-expert projection names, in the order gate, up, down
    disk_expert_proj: tuple[str, str, str]
    #: config.json key of the number of experts in the MoE (the config object maps ``num_experts``)
    experts_key: str
    #: the input embedding matrix (its rows are the vocabulary)
    embedding_tensor: str = "model.embed_tokens.weight"
    #: dense config fields that the MoE architecture cannot express, with the only value it computes
    dense_requirements: dict[str, Any] = field(default_factory=dict)
    #: MoE config fields fixed by barkit (router behaviour); set after copying the dense fields
    moe_fixed: dict[str, Any] = field(default_factory=dict)
    #: MoE config field -> the dense field it takes its value from (a field renamed by the MoE class)
    moe_from_dense: dict[str, str] = field(default_factory=dict)
    #: whether the router renormalises its top-k weights: always, or as ``config.norm_topk_prob`` says
    topk_renorm: Literal["always", "config"] = "config"
    #: whether the router hands its weights to the experts in the logits' dtype (else float32)
    scores_in_logit_dtype: bool = True

    # ------------------------------------------------------------------ config
    def moe_config(self, dense_config: PretrainedConfig, num_experts: int, top_k: int) -> PretrainedConfig:
        """The MoE config of a branch of ``dense_config`` with ``num_experts`` experts.

        Every field the two config classes share is copied from the dense config (the MoE
        classes have different defaults: FlexOlmo's rope theta is 5e5 and rms eps 1e-6 against
        OLMo-2's 1e4 and 1e-5, so a config built from defaults is silently a different model).
        """
        from transformers import AutoConfig

        self._check_dense(dense_config)
        if not 1 <= top_k <= num_experts:
            raise BarkitError(f"top_k={top_k} must be between 1 and num_experts={num_experts}")
        moe_cls = type(AutoConfig.for_model(self.moe_model_type))
        shared = set(moe_cls().to_dict()) - _META_KEYS
        dense = dense_config.to_dict()
        kwargs = {k: copy.deepcopy(v) for k, v in dense.items() if k in shared}
        # head_dim may be an extra attribute (OLMo-2 has no field for it but honours it).
        if getattr(dense_config, "head_dim", None) is not None:
            kwargs["head_dim"] = dense_config.head_dim
        if "sliding_window" in shared:  # Llama has none: the MoE must not invent Mistral's
            kwargs["sliding_window"] = getattr(dense_config, "sliding_window", None)
        for moe_key, dense_key in self.moe_from_dense.items():
            kwargs[moe_key] = copy.deepcopy(getattr(dense_config, dense_key))
        kwargs.update(copy.deepcopy(self.moe_fixed))
        kwargs.update(num_experts_per_tok=top_k, output_router_logits=False)
        config = moe_cls(**kwargs)
        config.num_experts = num_experts  # both classes map this name onto their own field
        return config

    def _check_dense(self, dense_config: PretrainedConfig) -> None:
        if dense_config.model_type not in self.dense_model_types:
            raise IncompatibleError(
                f"{dense_config.model_type} is not a dense {self.name} model ({', '.join(self.dense_model_types)})"
            )
        for key, required in self.dense_requirements.items():
            value = getattr(dense_config, key, required)
            if value != required:
                raise IncompatibleError(
                    f"{dense_config.model_type} with {key}={value!r} cannot become {self.moe_model_type} "
                    f"(it only computes {key}={required!r})"
                )

    @property
    def names(self) -> tuple[str, ...]:
        """Every model type of the family, dense and MoE."""
        return (*self.dense_model_types, self.moe_model_type)

    def renormalises_topk(self, config: PretrainedConfig) -> bool:
        """Whether the router rescales its top-k weights to sum to one."""
        return self.topk_renorm == "always" or bool(getattr(config, "norm_topk_prob", False))

    # ------------------------------------------------------------------ groups (in memory)
    @property
    def group_patterns(self) -> dict[str, tuple[str, ...]]:
        """Groups -> globs over in-memory parameter names of the MoE model."""
        return _group_table("mlp", self.attention, self.norms, self.embedding_tensor, moe=True)

    @property
    def dense_group_patterns(self) -> dict[str, tuple[str, ...]]:
        """Groups -> globs over parameter names of the dense model (``router`` matches nothing)."""
        return _group_table("mlp", self.attention, self.norms, self.embedding_tensor, moe=False)

    @property
    def disk_group_patterns(self) -> dict[str, tuple[str, ...]]:
        """Groups -> globs over the tensor names ``save_pretrained`` writes for the MoE model."""
        return _group_table(self.disk_moe_prefix, self.attention, self.norms, self.embedding_tensor, moe=True)

    def tensor_group(self, name: str) -> str:
        """The group of a tensor name: on-disk or in-memory, MoE or dense.

        MoE tables are tried first so that a router (``mlp.gate.weight``) is not taken for a
        dense MLP tensor. An unknown name raises: silently dropping a tensor in a merge is worse.
        """
        tables = (self.disk_group_patterns, self.group_patterns, self.dense_group_patterns)
        for table in tables:
            for group, patterns in table.items():
                if any(fnmatch.fnmatchcase(name, p) for p in patterns):
                    return group
        raise IncompatibleError(f"tensor {name!r} belongs to no {self.name} group ({', '.join(GROUPS)})")

    # ------------------------------------------------------------------ on-disk names
    def expert_tensor_names(self, layer: int, expert: int) -> list[str]:
        """On-disk names of one expert's matrices in one layer: gate, up, down."""
        base = f"model.layers.{layer}.{self.disk_moe_prefix}.experts.{expert}"
        return [f"{base}.{proj}.weight" for proj in self.disk_expert_proj]

    def router_tensor_name(self, layer: int) -> str:
        """On-disk name of one layer's router (one row per expert)."""
        return f"model.layers.{layer}.{self.disk_moe_prefix}.gate.weight"

    def dense_mlp_tensor_names(self, layer: int) -> list[str]:
        """Names of the dense model's MLP matrices in one layer: gate, up, down."""
        return [f"model.layers.{layer}.mlp.{p}_proj.weight" for p in ("gate", "up", "down")]

    # ------------------------------------------------------------------ expert slices
    def per_expert_parameters(self, model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
        """The in-memory parameters whose first dimension is the expert index: the fused expert
        tensors and the routers (empty for a dense model)."""
        suffixes = ("mlp.experts.gate_up_proj", "mlp.experts.down_proj", "mlp.gate.weight")
        return [(n, p) for n, p in model.named_parameters() if n.endswith(suffixes)]

    def expert_slices(self, model: torch.nn.Module, expert: int) -> list[tuple[str, torch.Tensor]]:
        """Views of one expert's weights in every MoE layer (empty for a dense model).

        Names read ``<param>[<expert>]`` so that logs and checks can point at the exact slice.
        """
        return [(f"{name}[{expert}]", param[expert]) for name, param in self.per_expert_parameters(model)]

    def anchor_slices(self, model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
        """Views of the anchor (expert 0) in every layer: fused FFN slices and router row 0."""
        return self.expert_slices(model, 0)


OLMO2 = Family(
    name="olmo2",
    dense_model_types=("olmo2",),
    moe_model_type="flex_olmo",
    attention=("q_proj.*", "k_proj.*", "v_proj.*", "o_proj.*", "q_norm.*", "k_norm.*"),
    norms=("post_attention_layernorm", "post_feedforward_layernorm"),
    disk_moe_prefix="mlp",
    disk_expert_proj=("gate_proj", "up_proj", "down_proj"),
    experts_key="num_experts",
    moe_fixed={"norm_topk_prob": False, "router_aux_loss_coef": 0.01},
    topk_renorm="config",
    scores_in_logit_dtype=True,
)

LLAMA = Family(
    name="llama",
    dense_model_types=("llama", "mistral"),
    moe_model_type="mixtral",
    attention=("q_proj.*", "k_proj.*", "v_proj.*", "o_proj.*"),
    norms=("input_layernorm", "post_attention_layernorm"),
    disk_moe_prefix="block_sparse_moe",
    disk_expert_proj=("w1", "w3", "w2"),
    experts_key="num_local_experts",
    # Mixtral's projections have no biases; a biased Llama would lose them silently.
    dense_requirements={"attention_bias": False, "mlp_bias": False},
    moe_fixed={"router_aux_loss_coef": 0.001, "router_jitter_noise": 0.0},
    topk_renorm="always",
    scores_in_logit_dtype=False,
)

QWEN3 = Family(
    name="qwen3",
    dense_model_types=("qwen3",),
    moe_model_type="qwen3_moe",
    attention=("q_proj.*", "k_proj.*", "v_proj.*", "o_proj.*", "q_norm.*", "k_norm.*"),
    norms=("input_layernorm", "post_attention_layernorm"),
    disk_moe_prefix="mlp",
    disk_expert_proj=("gate_proj", "up_proj", "down_proj"),
    experts_key="num_local_experts",
    # Qwen3-MoE applies one sliding window to every layer, dense Qwen3 only to the layers past
    # max_window_layers: only the full-attention form computes the same in both.
    dense_requirements={"use_sliding_window": False},
    # Every layer sparse (none kept a dense MLP). The router renormalises its top-k weights, as
    # Mixtral's does: with 2 experts at top-2 the weights sum to one however the router drifts.
    moe_fixed={
        "decoder_sparse_step": 1,
        "mlp_only_layers": [],
        "norm_topk_prob": True,
        "router_aux_loss_coef": 0.001,
    },
    # The experts' width is its own field; intermediate_size only sizes an mlp_only layer.
    moe_from_dense={"moe_intermediate_size": "intermediate_size"},
    topk_renorm="config",
    scores_in_logit_dtype=True,
)

FAMILIES: tuple[Family, ...] = (OLMO2, LLAMA, QWEN3)
# Where transformers' MoE configs of families barkit does not know keep their expert count.
_FOREIGN_EXPERT_KEYS = ("num_local_experts", "num_experts")


def supported_description() -> str:
    """e.g. ``olmo2 (-> flex_olmo), llama/mistral (-> mixtral)``."""
    return ", ".join(f"{'/'.join(f.dense_model_types)} (-> {f.moe_model_type})" for f in FAMILIES)


def _model_type(model_or_config: Any) -> str:
    if isinstance(model_or_config, str):
        return model_or_config
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", None)
    if not isinstance(model_type, str):
        raise BarkitError(
            f"{type(model_or_config).__name__} has no model_type; supported: {supported_description()}"
        )
    return model_type


def family_of(model_or_config: Any) -> Family:
    """The family of a model, config or model-type string, dense or MoE."""
    model_type = _model_type(model_or_config)
    for family in FAMILIES:
        if model_type in family.dense_model_types or model_type == family.moe_model_type:
            return family
    raise BarkitError(f"{model_type} is not supported; supported: {supported_description()}")


def is_moe(model_or_config: Any) -> bool:
    """True for a barkit MoE (branch or merge), False for a supported dense model."""
    model_type = _model_type(model_or_config)
    return model_type == family_of(model_type).moe_model_type


def expert_count(model_or_config: Any) -> int:
    """Experts of a model, config object or ``config.json`` dict; 0 for a dense model.

    A family's MoE reads the family's own key; an architecture no family knows (a user's own
    MoE checkpoint) is read through the two keys transformers' MoE configs use.
    """
    config = getattr(model_or_config, "config", model_or_config)
    get = config.get if isinstance(config, Mapping) else partial(getattr, config)
    family = next((f for f in FAMILIES if get("model_type", None) in f.names), None)
    if family is not None and get("model_type", None) in family.dense_model_types:
        return 0
    keys = (family.experts_key,) if family is not None else _FOREIGN_EXPERT_KEYS
    return max((int(get(k, 0) or 0) for k in keys), default=0)


num_experts = expert_count  # the older name, kept for its callers


def use_trainable_experts(model: Any, implementation: str = DEFAULT_EXPERTS_IMPLEMENTATION) -> None:
    """Switch a MoE model's experts to an implementation that trains on CPU within memory.

    transformers picks ``grouped_mm`` by default when the kernel can dispatch and ``eager``
    otherwise; the choice lives in ``config._experts_implementation`` and can also be passed
    as ``from_pretrained(..., experts_implementation=...)``. A dense model is left alone.
    """
    if implementation not in TRAINABLE_EXPERTS_IMPLEMENTATIONS:
        raise BarkitError(
            f"experts implementation {implementation!r} is not one of {', '.join(TRAINABLE_EXPERTS_IMPLEMENTATIONS)}"
        )
    if is_moe(model) and model.config._experts_implementation != implementation:
        model.set_experts_implementation(implementation)
