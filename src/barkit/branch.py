"""Branch: a dense model becomes a 2-expert MoE whose experts are both the base FFN.

Expert 0 is the *anchor* (the base FFN, kept bit-exact by every later stage), expert 1 a copy
that the domain stages train. Both experts are always active (top_k = 2), so with identical
experts the branch computes what the base computes whatever the router says: the routing
weights sum to one. The router init only decides how the two start to diverge:

* ``equal``: zero rows, both experts get the same logit (the invariant tests use this);
* ``domain``: row 1 points at the mean hidden state that domain samples produce at each MLP's
  input (what the router sees), row 0 at the mean over general samples, as FlexOlmo
  initialises router rows from domain embeddings;
* ``random``: a small normal init, as mergekit's ``random`` gate mode does.
"""

from __future__ import annotations

import copy
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

import torch

from barkit.artifacts import content_fingerprint, read_manifest, require_model_dir
from barkit.errors import ArtifactError, BarkitError, IncompatibleError
from barkit.families import Family, family_of, is_moe, use_trainable_experts

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

RouterInit = Literal["equal", "domain", "random"]
ROUTER_INITS: tuple[str, ...] = get_args(RouterInit)
BRANCH_EXPERTS = 2
DOMAIN_SAMPLES = 48
_BATCH = 8


def branch_model(
    dense_model: PreTrainedModel,
    router_init: RouterInit = "equal",
    *,
    tokenizer: PreTrainedTokenizerBase | None = None,
    domain: str | None = None,
    seed: int = 0,
    num_samples: int = DOMAIN_SAMPLES,
) -> PreTrainedModel:
    """The 2-expert MoE branch of ``dense_model`` (same dtype; the dense model is not changed).

    ``domain`` init needs ``tokenizer`` and ``domain`` (a micro-suite category name).
    """
    from transformers import AutoModelForCausalLM

    if router_init not in ROUTER_INITS:
        raise BarkitError(f"router init {router_init!r} is not one of {', '.join(ROUTER_INITS)}")
    family = family_of(dense_model)
    if is_moe(dense_model):
        raise IncompatibleError(
            f"{dense_model.config.model_type} is already a MoE; branch needs a dense model"
        )
    config = family.moe_config(dense_model.config, BRANCH_EXPERTS, BRANCH_EXPERTS)
    # The fresh model's random init is overwritten below; fork the RNG so that building it
    # does not shift the caller's random stream.
    with torch.random.fork_rng(devices=[]):
        moe = AutoModelForCausalLM.from_config(config, dtype=dense_model.dtype)
    _copy_weights(dense_model, moe, family)
    rows = _router_rows(
        dense_model, router_init, tokenizer=tokenizer, domain=domain, seed=seed, num_samples=num_samples
    )
    with torch.no_grad():
        for layer, row in enumerate(rows):
            moe.model.layers[layer].mlp.gate.weight.copy_(row)
    moe.generation_config = copy.deepcopy(dense_model.generation_config)
    use_trainable_experts(moe)
    moe.train(dense_model.training)
    return moe


def _copy_weights(dense: PreTrainedModel, moe: PreTrainedModel, family: Family) -> None:
    """Shared tensors by name; each layer's dense FFN into every expert slot of the fused tensors.

    Every dense tensor must be used and every MoE tensor but the routers filled: a tensor
    left at its random init would make a branch that only looks right.
    """
    dense_sd = dense.state_dict()
    moe_params = dict(moe.named_parameters())
    unused = set(dense_sd)
    unfilled = {n for n in moe_params if family.tensor_group(n) != "router"}
    with torch.no_grad():
        for name, param in moe_params.items():
            if name in dense_sd:
                _copy_checked(param, dense_sd[name], name)
                unused.discard(name)
                unfilled.discard(name)
        for layer in range(dense.config.num_hidden_layers):
            gate, up, down = (dense_sd[n] for n in family.dense_mlp_tensor_names(layer))
            prefix = f"model.layers.{layer}.mlp.experts."
            for expert in range(BRANCH_EXPERTS):
                _copy_checked(
                    moe_params[prefix + "gate_up_proj"][expert],
                    torch.cat([gate, up]),
                    prefix + "gate_up_proj",
                )
                _copy_checked(moe_params[prefix + "down_proj"][expert], down, prefix + "down_proj")
            unused.difference_update(family.dense_mlp_tensor_names(layer))
            unfilled.difference_update({prefix + "gate_up_proj", prefix + "down_proj"})
    # A tied LM head appears in the dense state dict but is the embedding parameter in the MoE.
    if moe.config.tie_word_embeddings:
        unused.discard("lm_head.weight")
    if unused or unfilled:
        raise IncompatibleError(
            f"{dense.config.model_type} -> {moe.config.model_type}: unmatched tensors "
            f"(dense unused: {sorted(unused)[:3]}, MoE unfilled: {sorted(unfilled)[:3]})"
        )


def _copy_checked(dst: torch.Tensor, src: torch.Tensor, name: str) -> None:
    if dst.shape != src.shape:
        raise IncompatibleError(f"{name}: shape {tuple(src.shape)} does not fit {tuple(dst.shape)}")
    dst.copy_(src)


def _router_rows(
    dense: PreTrainedModel,
    router_init: RouterInit,
    *,
    tokenizer: PreTrainedTokenizerBase | None,
    domain: str | None,
    seed: int,
    num_samples: int,
) -> list[torch.Tensor]:
    """One [2, H] router weight per layer."""
    layers, hidden = dense.config.num_hidden_layers, dense.config.hidden_size
    std = float(dense.config.initializer_range)
    if router_init == "equal":
        return [torch.zeros(BRANCH_EXPERTS, hidden) for _ in range(layers)]
    if router_init == "random":
        gen = torch.Generator().manual_seed(seed)
        return [torch.randn(BRANCH_EXPERTS, hidden, generator=gen) * std for _ in range(layers)]
    if tokenizer is None or domain is None:
        raise BarkitError("router init 'domain' needs a tokenizer and a --domain")
    general = _mlp_input_means(dense, tokenizer, _general_texts(tokenizer, num_samples, seed))
    special = _mlp_input_means(dense, tokenizer, _domain_texts(tokenizer, domain, num_samples, seed))
    # Unit directions scaled to a random init's norm (std per element): the router starts by
    # preferring the expert whose data a token resembles, but only mildly.
    scale = std * hidden**0.5
    return [
        torch.stack([_direction(g), _direction(d)]) * scale for g, d in zip(general, special, strict=True)
    ]


def _direction(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm().clamp_min(1e-12)


def _as_text(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]]) -> str:
    if getattr(tokenizer, "chat_template", None):
        return str(tokenizer.apply_chat_template(messages, tokenize=False))
    return "\n".join(m["content"] for m in messages)


def _domain_texts(tokenizer: PreTrainedTokenizerBase, domain: str, n: int, seed: int) -> list[str]:
    from barkit.suite import get_category

    items = get_category(domain).items("train", n, seed=seed)
    return [_as_text(tokenizer, item.messages()) for item in items]


def _general_texts(tokenizer: PreTrainedTokenizerBase, n: int, seed: int) -> list[str]:
    from barkit.suite import GENERAL, get_category

    per = max(1, n // len(GENERAL))
    return [
        _as_text(tokenizer, item.messages())
        for name in GENERAL
        for item in get_category(name).items("train", per, seed=seed)
    ]


@torch.no_grad()
def _mlp_input_means(
    dense: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: list[str]
) -> list[torch.Tensor]:
    """Mean over real (non-pad) tokens of each layer's MLP input, in float32."""
    layers = dense.model.layers
    sums = [torch.zeros(dense.config.hidden_size) for _ in layers]
    count = 0
    mask_box: list[torch.Tensor] = []

    def hook_for(i: int) -> Callable[..., None]:
        def hook(_module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            sums[i] += (args[0].float() * mask_box[0]).sum(dim=(0, 1))

        return hook

    handles = [layer.mlp.register_forward_pre_hook(hook_for(i)) for i, layer in enumerate(layers)]
    was_training = dense.training
    dense.eval()
    try:
        for start in range(0, len(texts), _BATCH):
            batch = tokenizer(
                texts[start : start + _BATCH],
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=256,
            )
            mask_box[:] = [batch["attention_mask"].unsqueeze(-1).float()]
            dense(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            count += int(batch["attention_mask"].sum())
    finally:
        for handle in handles:
            handle.remove()
        dense.train(was_training)
    return [s / max(count, 1) for s in sums]


def base_fingerprint(dense_dir: str | os.PathLike[str]) -> str:
    """The base's identity: its manifest's fingerprint when barkit wrote it, else its content's."""
    try:
        manifest = read_manifest(dense_dir)
    except ArtifactError:
        manifest = {}
    return str(manifest.get("fingerprint") or content_fingerprint(dense_dir))


def _check_dense_folder(folder: Path) -> None:
    """Refuse an unsupported or MoE checkpoint from its config, before any weights load."""
    config = json.loads((folder / "config.json").read_text())
    model_type = str(config.get("model_type"))
    family_of(model_type)
    if is_moe(model_type):
        raise IncompatibleError(f"{folder}: already a {model_type} MoE; branch needs a dense model")


def branch(
    dense_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    router_init: RouterInit = "equal",
    domain: str | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Branch the dense checkpoint in ``dense_dir`` into ``out_dir``; returns the manifest."""
    from barkit.modeling import load_model, save_model

    start = time.perf_counter()
    folder = require_model_dir(dense_dir)
    _check_dense_folder(folder)
    if domain is not None:
        from barkit.suite import get_category

        get_category(domain)  # an unknown domain fails before the model is loaded
    dense, tokenizer = load_model(folder)
    moe = branch_model(dense, router_init, tokenizer=tokenizer, domain=domain, seed=seed)
    family = family_of(moe)
    resolved = {"router_init": router_init, "domain": domain, "seed": seed, "num_experts": BRANCH_EXPERTS}
    fingerprint = base_fingerprint(folder)
    manifest = {
        "stage": "branch",
        "family": family.name,
        "model_type": family.moe_model_type,
        "domain": domain,
        "experts": ["anchor", domain or "expert1"],
        "router_init": router_init,
        "config": resolved,
        "inputs": [{"path": str(Path(folder).resolve()), "fingerprint": fingerprint}],
        "base_fingerprint": fingerprint,
        "tokens": 0,
        "wall_time_s": round(time.perf_counter() - start, 3),
    }
    return save_model(moe, tokenizer, out_dir, manifest)
