"""RLVR: GRPO with the micro-suite's verifiers as the reward, as an :class:`Objective`.

One micro-batch is one rollout: ``prompts_per_step`` prompts, ``group_size`` samples each,
drawn from the current policy with the KV cache (``model.generate``) under a seed fixed by the
batch index, so a resumed run samples exactly what an uninterrupted one would. Each sample is
scored by its own category's verifier; advantages are normalised within each prompt's group,
so a group where every sample got the same reward carries no signal and is left out of the
loss entirely. The loss is PPO's clipped ratio objective averaged over completion tokens, with
an optional KL penalty to the starting policy (``beta``; BAR used none, and no reference copy
is built unless ``beta > 0``).

The behaviour policy's log-probs are computed at sampling time without gradient. With one
optimizer step per rollout the ratio starts at 1, so clipping only bites when a rollout is
reused (gradient accumulation across rollouts does not reuse; it is there for correctness and
for callers that take several steps on one rollout).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from barkit.errors import BarkitError
from barkit.suite.base import Item
from barkit.train.data import RowSampler
from barkit.train.objectives import moe_shape, router_stats, unwrap, weight_shares

if TYPE_CHECKING:
    # a type only: importing the config at run time would close a cycle through the registry
    from barkit.train.config import GRPOConfig

#: (prompt, completion) -> reward; a prompt is a suite Item or a user's RlRow
Reward = Callable[[Any, str], float]
#: prompt -> token ids of the generation prompt
PromptEncoder = Callable[[Any], list[int]]


def group_advantages(rewards: Tensor, eps: float = 1e-4) -> tuple[Tensor, Tensor]:
    """``(r - mean) / (std + eps)`` within each group, and which groups carry signal.

    ``rewards`` is ``[groups, group_size]``; std is the population std of the group. A group
    whose rewards are all equal gets advantage 0 and ``informative == False``.
    """
    mean = rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, unbiased=False, keepdim=True)
    informative = (rewards.max(dim=1).values - rewards.min(dim=1).values) > 0
    adv = torch.where(informative[:, None], (rewards - mean) / (std + eps), torch.zeros_like(rewards))
    return adv, informative


def clipped_policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_eps: float,
    ref_logp: Tensor | None = None,
    beta: float = 0.0,
) -> tuple[Tensor, dict[str, float]]:
    """PPO-clipped objective (negated, to minimise), averaged over the tokens where ``mask`` is 1.

    ``logp``/``old_logp``/``ref_logp``/``mask`` are ``[samples, tokens]``; ``advantages`` is
    ``[samples]``. The KL term uses the non-negative estimator ``exp(d) - d - 1`` with
    ``d = ref - logp``. With no unmasked token the loss is an exact zero that still has a graph.
    """
    mask = mask.to(logp.dtype)
    ratio = torch.exp(logp - old_logp)
    adv = advantages[:, None].to(logp.dtype)
    surrogate = torch.minimum(ratio * adv, torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * adv)
    per_token = -surrogate
    kl = torch.zeros_like(logp)
    if ref_logp is not None and beta > 0:
        delta = ref_logp - logp
        kl = torch.exp(delta) - delta - 1
        per_token = per_token + beta * kl
    tokens = mask.sum()
    loss = (per_token * mask).sum() / tokens.clamp_min(1.0)
    clipped = ((ratio < 1 - clip_eps) | (ratio > 1 + clip_eps)).to(logp.dtype)
    denom = float(tokens.clamp_min(1.0))
    stats = {
        "clip_frac": float((clipped * mask).sum()) / denom,
        "kl": float((kl.detach() * mask).sum()) / denom,
        "policy_tokens": float(tokens),
    }
    return loss, stats


def completion_mask(completions: Tensor, eos_id: int | None) -> Tensor:
    """1 on each completion's tokens up to and including its first ``eos_id``, 0 after."""
    if eos_id is None:
        return torch.ones_like(completions)
    is_eos = (completions == eos_id).long()
    # Tokens strictly after the first eos have a positive count of earlier eos tokens.
    before = torch.cumsum(is_eos, dim=1) - is_eos
    return (before == 0).long()


def position_ids(attention_mask: Tensor) -> Tensor:
    """Positions that skip left padding, as ``generate`` assigns them."""
    return (torch.cumsum(attention_mask, dim=1) - 1).clamp_min(0)


def completion_logprobs(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor, prompt_len: int, temperature: float
) -> tuple[Tensor, Any]:
    """Log-prob of every completion token (positions ``prompt_len..``) under ``model``.

    Returns ``[samples, completion_tokens]`` and the raw model output (for router logits).
    """
    moe = moe_shape(unwrap(model).config)
    kwargs: dict[str, Any] = {"output_router_logits": True} if moe else {}
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids(attention_mask),
        use_cache=False,
        **kwargs,
    )
    logits = out.logits[:, prompt_len - 1 : -1].float() / temperature
    targets = input_ids[:, prompt_len:]
    logp = torch.log_softmax(logits, dim=-1).gather(-1, targets[..., None]).squeeze(-1)
    return logp, out


def decode_completion(tokenizer: Any, ids: Sequence[int]) -> str:
    """Text of one completion up to its first eos, decoded exactly as evaluation decodes it.

    Added special tokens stay in the text: the tool verifier reads the ``<tool_call>`` markers.
    """
    from barkit.generate import decode_completion as decode_for_eval

    eos = tokenizer.eos_token_id
    kept = list(ids)
    if eos is not None and eos in kept:
        kept = kept[: kept.index(eos)]
    return decode_for_eval(tokenizer, kept)


def suite_reward(item: Item, completion: str) -> float:
    """The item's own category verifier (math items by the math verifier, and so on)."""
    from barkit.suite import get_category

    return float(get_category(item.category).score(item, completion))


class GRPOObjective:
    """GRPO on a fixed pool of RL prompts, run by the ordinary training loop.

    ``model`` is the policy being trained (the same object the loop optimises); ``prompts``
    are suite items, domain and general already mixed. ``reward`` defaults to the suite's
    verifiers and ``encode`` to barkit's chat format; a user's rows bring a named verifier and
    the model's own chat template instead (:mod:`barkit.train.file_data`).
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        prompts: Sequence[Any],
        cfg: GRPOConfig,
        *,
        batch_size: int,
        seq_len: int,
        seed: int = 0,
        reward: Reward = suite_reward,
        encode: PromptEncoder | None = None,
        aux_loss_coef: float | None = None,
    ) -> None:
        if not prompts:
            raise BarkitError("rlvr: no RL prompts to train on")
        if seq_len <= cfg.max_new_tokens:
            raise BarkitError(
                f"rlvr: seq_len {seq_len} leaves no room for a prompt of max_new_tokens {cfg.max_new_tokens}"
            )
        self.model, self.tokenizer, self.cfg = model, tokenizer, cfg
        self.prompts = list(prompts)
        self.prompts_per_step = cfg.prompts_per_step or batch_size
        self.max_prompt_len = seq_len - cfg.max_new_tokens
        self.sampler = RowSampler(len(self.prompts), self.prompts_per_step, seed)
        self.seed, self.reward, self.aux_loss_coef = seed, reward, aux_loss_coef
        self.encode = encode or self._suite_prompt
        self.reference = self._reference(model) if cfg.beta > 0 else None
        #: batch index -> mean reward of that rollout (the reward curve)
        self.reward_curve: dict[int, float] = {}
        self._encoded: dict[int, list[int]] = {}

    @staticmethod
    def _reference(model: nn.Module) -> nn.Module:
        ref = copy.deepcopy(unwrap(model))
        ref.eval()
        ref.requires_grad_(False)
        return ref

    # ------------------------------------------------------------------ rollout
    def _prompt_ids(self, index: int) -> list[int]:
        if index not in self._encoded:
            ids = self.encode(self.prompts[index])
            # Keep the end of an over-long prompt: it holds the question and the assistant header.
            self._encoded[index] = ids[-self.max_prompt_len :]
        return self._encoded[index]

    def _suite_prompt(self, item: Item) -> list[int]:
        from barkit.tokenizer import prompt_ids

        return prompt_ids(self.tokenizer, [{"role": "user", "content": item.prompt}])

    def _left_pad(self, rows: list[list[int]]) -> tuple[Tensor, Tensor]:
        width = max(len(r) for r in rows)
        pad = self._pad_id()
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
            mask[i, width - len(row) :] = 1
        return ids, mask

    def _pad_id(self) -> int:
        tok = self.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        return int(pad if pad is not None else 0)

    def _sample(self, prompt: Tensor, prompt_mask: Tensor, index: int) -> Tensor:
        """``group_size`` completions per prompt row, seeded by the batch index."""
        from transformers import GenerationConfig

        model: Any = unwrap(self.model)  # a transformers model: it has ``generate``
        device = next(model.parameters()).device
        gen = GenerationConfig(
            do_sample=True,
            temperature=self.cfg.temperature,
            top_k=0,
            top_p=1.0,
            max_new_tokens=self.cfg.max_new_tokens,
            eos_token_id=self.tokenizer.eos_token_id,
            pad_token_id=self._pad_id(),
            use_cache=True,
        )
        g = self.cfg.group_size
        ids, mask = prompt.repeat_interleave(g, 0).to(device), prompt_mask.repeat_interleave(g, 0).to(device)
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            torch.manual_seed(_mix_seed(self.seed, index))
            out = model.generate(input_ids=ids, attention_mask=mask, generation_config=gen)
        completions: Tensor = out[:, ids.shape[1] :].cpu()
        return completions

    def _score(self, items: list[Any], completions: Tensor) -> Tensor:
        g = self.cfg.group_size
        rewards = [
            self.reward(items[i // g], decode_completion(self.tokenizer, completions[i].tolist()))
            for i in range(completions.shape[0])
        ]
        for r in rewards:
            if not math.isfinite(r):
                raise BarkitError(f"rlvr: reward function returned {r}")
        return torch.tensor(rewards, dtype=torch.float32).view(len(items), g)

    def batch(self, step: int) -> dict[str, Tensor]:
        """Rollout number ``step``: sample, score, and record behaviour log-probs."""
        indices = self.sampler.indices(step)
        items = [self.prompts[i] for i in indices]
        prompt, prompt_mask = self._left_pad([self._prompt_ids(i) for i in indices])
        model = unwrap(self.model)
        was_training = model.training
        model.eval()  # no dropout while sampling and scoring the behaviour policy
        try:
            completions = self._sample(prompt, prompt_mask, step)
            rewards = self._score(items, completions)
            batch = self._assemble(prompt, prompt_mask, completions, rewards)
            batch.update(self._behaviour_logprobs(batch))
        finally:
            model.train(was_training)
        self.reward_curve[step] = float(rewards.mean())
        return batch

    def _assemble(
        self, prompt: Tensor, prompt_mask: Tensor, completions: Tensor, rewards: Tensor
    ) -> dict[str, Tensor]:
        g = self.cfg.group_size
        comp_mask = completion_mask(completions, self.tokenizer.eos_token_id)
        advantages, informative = group_advantages(rewards, self.cfg.adv_eps)
        # Samples of zero-variance groups are masked out of the loss altogether.
        policy_mask = comp_mask * informative.repeat_interleave(g)[:, None].long()
        return {
            "input_ids": torch.cat([prompt.repeat_interleave(g, 0), completions], dim=1),
            "attention_mask": torch.cat([prompt_mask.repeat_interleave(g, 0), comp_mask], dim=1),
            "completion_mask": comp_mask,
            "policy_mask": policy_mask,
            "advantages": advantages.reshape(-1),
            "rewards": rewards,
        }

    @torch.no_grad()
    def _behaviour_logprobs(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        device = next(unwrap(self.model).parameters()).device
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        prompt_len = ids.shape[1] - batch["completion_mask"].shape[1]
        out = {
            "old_logp": completion_logprobs(self.model, ids, mask, prompt_len, self.cfg.temperature)[0].cpu()
        }
        if self.reference is not None:
            ref = completion_logprobs(self.reference, ids, mask, prompt_len, self.cfg.temperature)[0]
            out["ref_logp"] = ref.cpu()
        return out

    # ------------------------------------------------------------------ loss
    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        prompt_len = batch["input_ids"].shape[1] - batch["completion_mask"].shape[1]
        logp, out = completion_logprobs(
            model, batch["input_ids"], batch["attention_mask"], prompt_len, self.cfg.temperature
        )
        loss, stats = clipped_policy_loss(
            logp,
            batch["old_logp"].to(logp.device),
            batch["advantages"].to(logp.device),
            batch["policy_mask"].to(logp.device),
            self.cfg.clip_eps,
            batch["ref_logp"].to(logp.device) if "ref_logp" in batch else None,
            self.cfg.beta,
        )
        metrics = {"policy_loss": float(loss.detach()), **stats, **self._rollout_metrics(batch)}
        moe = moe_shape(unwrap(model).config)
        if moe is not None:
            aux, fractions = router_stats(out.router_logits, *moe, batch["attention_mask"])
            coef = self._coef(unwrap(model).config)
            metrics["aux_loss"] = float(aux.detach())
            metrics.update({f"expert_frac/{i}": float(f) for i, f in enumerate(fractions)})
            shares = weight_shares(out.router_logits, moe[1], batch["attention_mask"])
            metrics.update({f"expert_weight/{i}": float(w) for i, w in enumerate(shares)})
            if coef > 0:
                loss = loss + coef * aux
        return loss, metrics

    def _coef(self, config: Any) -> float:
        if self.aux_loss_coef is not None:
            return self.aux_loss_coef
        return float(getattr(config, "router_aux_loss_coef", 0.0) or 0.0)

    @staticmethod
    def _rollout_metrics(batch: dict[str, Tensor]) -> dict[str, float]:
        rewards = batch["rewards"]
        _, informative = group_advantages(rewards)
        metrics = {
            "reward_mean": float(rewards.mean()),
            "reward_std": float(rewards.std(unbiased=False)),
            "zero_var_frac": 1.0 - float(informative.float().mean()),
            "completion_len": float(batch["completion_mask"].sum(dim=1).float().mean()),
        }
        metrics.update({f"group_reward/{i}": float(r) for i, r in enumerate(rewards.mean(dim=1))})
        return metrics


def _mix_seed(seed: int, index: int) -> int:
    """A sampling seed per (stage seed, batch index), spread so that neighbours differ."""
    return (seed * 1_000_003 + index * 7_919 + 12_345) % (2**63 - 1)
