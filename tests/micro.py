"""Micro models shared by the tests: dense OLMo-2/Llama/Qwen3 (hidden 32, 2 layers), MoEs and branches.

Built from transformers configs alone, with no barkit I/O, so a test of one module does not
depend on another module working. Each test passes the fields it cares about (a non-default
rope theta, a tokenizer's ids, a wider FFN) and gets the same model for the same seed.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, Olmo2Config, Qwen3Config

from barkit.families import family_of

VOCAB = 300
SIZES: dict[str, Any] = dict(
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
)


CONFIGS = {"olmo2": Olmo2Config, "llama": LlamaConfig, "qwen3": Qwen3Config}


def dense_config(arch: str = "olmo2", *, vocab: int = VOCAB, tokenizer: Any = None, **fields: Any) -> Any:
    """An OLMo-2, Llama or Qwen3 config of micro size; token ids (and vocabulary) from ``tokenizer``."""
    ids: dict[str, Any] = dict(pad_token_id=3, bos_token_id=1, eos_token_id=2)
    if tokenizer is not None:
        vocab = len(tokenizer)
        ids = {k: getattr(tokenizer, k) for k in ids}
    sizes = {**SIZES, **fields}
    if arch == "qwen3":  # Qwen3Config's head_dim defaults to 128 whatever the hidden size
        sizes.setdefault("head_dim", sizes["hidden_size"] // sizes["num_attention_heads"])
    return CONFIGS[arch](**{"vocab_size": vocab, **ids, **sizes})


def dense_model(arch: str = "olmo2", *, seed: int = 0, **config: Any) -> Any:
    """A randomly initialised dense micro model (seeded)."""
    built = dense_config(arch, **config)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(built)


def moe_model(arch: str = "olmo2", *, experts: int = 2, top_k: int = 2, seed: int = 0, **config: Any) -> Any:
    """A randomly initialised micro MoE of the family's native class (FlexOlmo or Mixtral)."""
    dense = dense_config(arch, **config)
    built = family_of(dense).moe_config(dense, experts, top_k)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(built)


def branch_of(dense: Any) -> Any:
    """A 2-expert MoE whose experts are both the dense FFN and whose router is zeros (by hand)."""
    family = family_of(dense.config)
    moe = AutoModelForCausalLM.from_config(family.moe_config(dense.config, 2, 2))
    state = dense.state_dict()
    with torch.no_grad():
        for name, p in moe.named_parameters():
            if name.endswith("mlp.experts.gate_up_proj"):
                prefix = name[: -len("experts.gate_up_proj")]
                fused = torch.cat([state[prefix + "gate_proj.weight"], state[prefix + "up_proj.weight"]])
                p.copy_(fused.expand_as(p))
            elif name.endswith("mlp.experts.down_proj"):
                p.copy_(state[name[: -len("experts.down_proj")] + "down_proj.weight"].expand_as(p))
            elif name.endswith("mlp.gate.weight"):
                p.zero_()
            else:
                p.copy_(state[name])
    return moe


@torch.no_grad()
def copy_expert(model: Any, src: int = 0, dst: int = 1) -> Any:
    """Make expert ``dst`` a copy of expert ``src`` in every layer, like a fresh branch."""
    for name, p in model.named_parameters():
        if ".experts." in name:
            p[dst].copy_(p[src])
    return model
