"""Micro models and data for the training tests (built from transformers configs, no barkit I/O)."""

from __future__ import annotations

import torch
from transformers import (
    FlexOlmoForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MixtralForCausalLM,
    Olmo2Config,
    Olmo2ForCausalLM,
)

import micro
from barkit.families import LLAMA, OLMO2, use_trainable_experts
from barkit.train.data import PackedData

VOCAB = micro.VOCAB


def dense_config(arch: str = "olmo2", hidden: int = 32) -> Olmo2Config | LlamaConfig:
    return micro.dense_config(
        arch,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        max_position_embeddings=128,
        tie_word_embeddings=False,
        pad_token_id=0,
    )


def dense_model(arch: str = "olmo2", seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    cls = Olmo2ForCausalLM if arch == "olmo2" else LlamaForCausalLM
    return cls(dense_config(arch)).eval()


def moe_model(arch: str = "olmo2", seed: int = 0, experts: int = 2, top_k: int = 2) -> torch.nn.Module:
    """A branch-shaped MoE: random weights, expert 1 initialised as a copy of expert 0."""
    family = OLMO2 if arch == "olmo2" else LLAMA
    config = family.moe_config(dense_config(arch), experts, top_k)
    torch.manual_seed(seed)
    cls = FlexOlmoForCausalLM if arch == "olmo2" else MixtralForCausalLM
    model = cls(config)
    use_trainable_experts(model, "eager")
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("experts.gate_up_proj", "experts.down_proj")):
                param[1:].copy_(param[0:1].expand_as(param[1:]))
    return model


def random_rows(n: int = 32, seq_len: int = 32, seed: int = 0, pad_tail: int = 0) -> PackedData:
    """Token rows drawn from a small repeating grammar so a few steps lower the loss."""
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(3, VOCAB - seq_len, (n, 1), generator=g)
    ids = starts + (torch.arange(seq_len)[None, :] % 7)
    attn = torch.ones_like(ids)
    if pad_tail:
        ids[:, -pad_tail:] = 0
        attn[:, -pad_tail:] = 0
    return PackedData(ids, attn.clone(), attn)
