"""Objectives: where a stage's batches come from and how its loss is computed.

The training loop knows nothing about data. It asks an :class:`Objective` for micro-batch
``index`` (a pure function of the objective's seed and the index, so resumed and data-parallel
runs see exactly the batches an uninterrupted single process would) and for the loss on it.

For MoE models the objectives always request the router logits: from them come the per-expert
token fractions (logged every step) and the load-balancing loss, which is added explicitly with
the stage's coefficient. transformers adds ``router_aux_loss_coef * aux_loss`` only when
``output_router_logits`` is on and labels are passed, and branch configs turn that flag off, so
relying on the model would leave the loss silently disabled.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from barkit.errors import BarkitError
from barkit.families import expert_count
from barkit.train.data import (
    NO_TAG,
    Example,
    PackedData,
    RowSampler,
    concat_packed,
    mix_general,
    pack_examples,
    pack_stream,
)

if TYPE_CHECKING:
    # a type only: the config module reads the kind registry, whose factories build objectives
    from barkit.train.config import StageConfig

Conversation = list[dict[str, str]]
#: (tokenizer, conversation, max_len) -> (ids, loss mask)
Encode = Callable[[Any, Conversation, int], Example]


@runtime_checkable
class Objective(Protocol):
    """What a stage optimises.

    ``batch(index)`` returns micro-batch number ``index``; the loop asks for index
    ``(step * grad_accum + micro) * world_size + rank``, so the index alone fixes the data.
    ``loss(model, batch)`` returns the scalar to minimise and floats to log.
    """

    def batch(self, step: int) -> dict[str, Tensor]: ...

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]: ...


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper (or the model itself)."""
    inner = getattr(model, "module", model)
    assert isinstance(inner, nn.Module)
    return inner


def moe_shape(config: Any) -> tuple[int, int] | None:
    """(number of experts, top-k) for an MoE config; None for a dense model."""
    top_k = getattr(config, "num_experts_per_tok", None)
    experts = expert_count(config) or None
    if top_k is None or experts is None:
        return None
    return int(experts), int(top_k)


def router_stats(
    router_logits: Sequence[Tensor], num_experts: int, top_k: int, mask: Tensor | None
) -> tuple[Tensor, Tensor]:
    """Load-balancing loss and per-expert token fractions, averaged over layers.

    The loss is Switch-Transformer style, ``E * sum_i f_i * P_i`` with ``f_i`` the share of
    (token, top-k slot) assignments to expert ``i`` times ``top_k`` and ``P_i`` its mean router
    probability, as transformers computes it; padding (``mask == 0``) is left out. The fractions
    sum to 1 over experts.
    """
    counts = torch.zeros(num_experts)
    prob_sum = torch.zeros(num_experts)
    rows = torch.zeros(())
    weight = None if mask is None else mask.reshape(-1).to(torch.float32)
    for layer in router_logits:
        probs = torch.softmax(layer.float(), dim=-1)
        picked = F.one_hot(torch.topk(probs, top_k, dim=-1).indices, num_experts).sum(dim=1).float()
        if weight is not None:
            picked, probs = picked * weight[:, None], probs * weight[:, None]
        counts = counts + picked.sum(dim=0)
        prob_sum = prob_sum + probs.sum(dim=0)
        rows = rows + (weight.sum() if weight is not None else probs.shape[0])
    rows = rows.clamp_min(1.0)
    aux = num_experts * torch.sum((counts / rows) * (prob_sum / rows))
    return aux, (counts / (rows * top_k)).detach()


def routing_weights(router_logits: Sequence[Tensor], top_k: int) -> Tensor:
    """Per token (rows), the weight each expert gets in the MoE output, averaged over layers.

    That is the router softmax restricted to the top-k experts and renormalised. When top-k
    equals the number of experts (BAR's branches, a default merge) every expert is *selected*
    for every token, so selection counts are uniform by construction; these weights show
    where the router really sends the mass.
    """
    total = torch.zeros(())
    for layer in router_logits:
        probs = torch.softmax(layer.float(), dim=-1)
        top = torch.topk(probs, top_k, dim=-1)
        kept = torch.zeros_like(probs).scatter(-1, top.indices, top.values)
        total = total + kept / kept.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    return (total / max(len(router_logits), 1)).detach()


def weight_shares(router_logits: Sequence[Tensor], top_k: int, mask: Tensor | None) -> Tensor:
    """Share of all (non-padding) tokens' routing weight that each expert receives."""
    weights = routing_weights(router_logits, top_k)
    if mask is not None:
        weights = weights * mask.reshape(-1, 1).to(weights.dtype)
    return weights.sum(dim=0) / weights.sum().clamp_min(1e-12)


def next_token_loss(logits: Tensor, input_ids: Tensor, loss_mask: Tensor) -> Tensor:
    """Mean cross-entropy over the target positions where ``loss_mask`` is 1."""
    targets = input_ids[:, 1:].masked_fill(loss_mask[:, 1:] == 0, -100)
    if not bool((targets != -100).any()):
        # No target in the batch (e.g. every answer truncated away): a zero loss that keeps
        # the graph, instead of cross_entropy's NaN mean over nothing.
        return logits.sum() * 0.0
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))


class PackedObjective:
    """Next-token loss on packed rows; the base of :class:`LMObjective` and :class:`SFTObjective`."""

    def __init__(
        self, data: PackedData, batch_size: int, seed: int, aux_loss_coef: float | None = None
    ) -> None:
        self.data = data
        self.sampler = RowSampler(len(data), batch_size, seed)
        self.aux_loss_coef = aux_loss_coef

    def batch(self, step: int) -> dict[str, Tensor]:
        return self.data.rows(self.sampler.indices(step))

    def _coef(self, config: Any) -> float:
        if self.aux_loss_coef is not None:
            return self.aux_loss_coef
        return float(getattr(config, "router_aux_loss_coef", 0.0) or 0.0)

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        loss, metrics, _ = self.forward(model, batch)
        return loss, metrics

    def forward(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float], Any]:
        """(loss, metrics, model output): subclasses add terms computed from the output."""
        config = unwrap(model).config
        moe = moe_shape(config)
        # No attention_mask: padding is only ever at the right end of a row, where causal
        # attention keeps it from touching real tokens, and SDPA keeps its fast causal path.
        kwargs: dict[str, Any] = {"output_router_logits": True} if moe else {}
        out = model(input_ids=batch["input_ids"], use_cache=False, **kwargs)
        lm = next_token_loss(out.logits, batch["input_ids"], batch["loss_mask"])
        metrics = {"lm_loss": float(lm.detach())}
        if moe is None:
            return lm, metrics, out
        aux, fractions = router_stats(out.router_logits, *moe, batch["attention_mask"])
        coef = self._coef(config)
        metrics["aux_loss"] = float(aux.detach())
        metrics.update({f"expert_frac/{i}": float(f) for i, f in enumerate(fractions)})
        shares = weight_shares(out.router_logits, moe[1], batch["attention_mask"])
        metrics.update({f"expert_weight/{i}": float(w) for i, w in enumerate(shares)})
        return (lm + coef * aux if coef > 0 else lm), metrics, out


def domain_label_loss(router_logits: Sequence[Tensor], targets: Tensor) -> Tensor:
    """Cross-entropy between each token's router logits and its target expert, averaged over
    the MoE layers (each layer's router is told where the token belongs); tokens tagged
    :data:`~barkit.train.data.NO_TAG` (padding) are left out."""
    flat = targets.reshape(-1)
    if not bool((flat != NO_TAG).any()):
        return router_logits[0].sum() * 0.0  # keeps the graph, as next_token_loss does
    losses = [F.cross_entropy(layer.float(), flat, ignore_index=NO_TAG) for layer in router_logits]
    return torch.stack(losses).mean()


class DomainRouterObjective(PackedObjective):
    """Packed rows whose ``tags`` hold each token's expert index: the LM loss (plus load
    balancing) and ``domain_loss`` times :func:`domain_label_loss` (the router stage's
    ``domain_loss`` option)."""

    def __init__(
        self, data: PackedData, batch_size: int, seed: int, aux_loss_coef: float | None, domain_loss: float
    ) -> None:
        if data.tags is None:
            raise BarkitError("the domain-label router loss needs tagged rows (an expert per sample)")
        super().__init__(data, batch_size, seed, aux_loss_coef)
        self.domain_loss = domain_loss

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        loss, metrics, out = self.forward(model, batch)
        domain = domain_label_loss(out.router_logits, batch["tags"])
        metrics["domain_loss"] = float(domain.detach())
        return loss + self.domain_loss * domain, metrics


def _encode_text(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    encoded = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    return [bos + ids + eos for ids in encoded]


def text_rows(tokenizer: Any, texts: Sequence[str], seq_len: int) -> PackedData:
    """Raw documents -> packed rows with the loss on every token."""
    return pack_stream(_encode_text(tokenizer, texts), seq_len)


def conversation_rows(
    tokenizer: Any,
    conversations: Sequence[Conversation],
    seq_len: int,
    encode: Encode | None = None,
    tags: Sequence[int] | None = None,
) -> PackedData:
    """Conversations -> packed rows with the loss on assistant tokens only.

    ``encode(tokenizer, conversation, max_len)`` gives ids and loss mask: barkit's own chat
    format by default, :func:`barkit.userdata.encode_chat` (the model's own template) for a
    user's data. ``tags`` (one per conversation) become :attr:`PackedData.tags`.
    """
    from barkit.tokenizer import encode_conversation

    encoder = encode or encode_conversation
    examples: list[Example] = [encoder(tokenizer, c, seq_len) for c in conversations]
    return pack_examples(examples, seq_len, pad_id_of(tokenizer), tags)


def pad_id_of(tokenizer: Any) -> int:
    """The id right padding uses: pad, else eos, else 0 (padding is masked out of the loss)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return int(pad if pad is not None else 0)


class LMObjective(PackedObjective):
    """Packed raw text, next-token loss on every token (pretrain, midtrain)."""

    @classmethod
    def from_texts(
        cls, tokenizer: Any, cfg: StageConfig, texts: Sequence[str], general: Sequence[str] = ()
    ) -> LMObjective:
        docs = mix_general(list(texts), list(general), cfg.general_mix, cfg.seed)
        return cls(text_rows(tokenizer, docs, cfg.seq_len), cfg.batch_size, cfg.seed, cfg.aux_loss_coef)


class SFTObjective(PackedObjective):
    """Conversations, loss on assistant tokens only via the assistant mask (sft, router)."""

    @classmethod
    def from_conversations(
        cls,
        tokenizer: Any,
        cfg: StageConfig,
        conversations: Sequence[Conversation],
        general: Sequence[Conversation] = (),
        encode: Encode | None = None,
    ) -> SFTObjective:
        convs = mix_general(list(conversations), list(general), cfg.general_mix, cfg.seed)
        data = conversation_rows(tokenizer, convs, cfg.seq_len, encode)
        return cls(data, cfg.batch_size, cfg.seed, cfg.aux_loss_coef)


def mixed_rows(
    tokenizer: Any, texts: Sequence[str], conversations: Sequence[Conversation], seq_len: int
) -> PackedData:
    """Raw-text rows and conversation rows in one set (the base model learns from both)."""
    parts = []
    if texts:
        parts.append(text_rows(tokenizer, texts, seq_len))
    if conversations:
        parts.append(conversation_rows(tokenizer, conversations, seq_len))
    return concat_packed(parts)
