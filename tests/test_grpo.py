"""GRPO: advantages and loss on hand-made cases, and a few real steps on a micro MoE."""

from __future__ import annotations

import math

import pytest
import torch

import micro
from barkit.errors import BarkitError
from barkit.suite.base import Item
from barkit.train.config import GRPOConfig, OptimConfig, default_stage
from barkit.train.grpo import (
    GRPOObjective,
    clipped_policy_loss,
    completion_logprobs,
    completion_mask,
    decode_completion,
    group_advantages,
)
from barkit.train.loop import run_stage


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Micro models run fastest on one thread; two threads thrash when the CPU is shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer():
    from barkit.tokenizer import train_tokenizer

    texts = ["the cat sat on the mat", "an owl ate up every insect", "what is two plus two", "hello world"]
    return train_tokenizer(300, texts=texts * 10)


def micro_moe(tokenizer, seed: int = 0):
    """A 2-expert Mixtral (hidden 32, 2 layers) whose experts start identical, like a branch."""
    model = micro.moe_model(
        "llama",
        seed=seed,
        tokenizer=tokenizer,
        intermediate_size=64,
        num_key_value_heads=4,
        max_position_embeddings=128,
        tie_word_embeddings=False,
        # MixtralConfig's own defaults, which this model was first built with
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6},
    )
    return micro.copy_expert(model)


def toy_items() -> list[Item]:
    prompts = ["what is two", "hello", "the cat sat", "plus two"]
    return [Item("toy", "train", str(i), p, "") for i, p in enumerate(prompts)]


def _even_start(text: str) -> bool:
    return bool(text) and ord(text[0]) % 2 == 0


def even_reward(item: Item, completion: str) -> float:
    """Toy verifier: 1 when the completion's first character has an even code point (about half)."""
    return 1.0 if _even_start(completion) else 0.0


# ----------------------------------------------------------------------------- pure functions


def test_group_advantages_known_values():
    rewards = torch.tensor([[1.0, 0.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 1.0]])
    adv, informative = group_advantages(rewards, eps=1e-4)
    assert informative.tolist() == [True, False, True]
    # group 0: mean 0.5, population std 0.5
    expected0 = torch.tensor([1.0, -1.0, 1.0, -1.0]) * 0.5 / (0.5 + 1e-4)
    assert torch.allclose(adv[0], expected0)
    assert torch.equal(adv[1], torch.zeros(4))
    std2 = math.sqrt(0.75 * 0.25)
    expected2 = torch.tensor([-0.25, -0.25, -0.25, 0.75]) / (std2 + 1e-4)
    assert torch.allclose(adv[2], expected2)
    assert torch.allclose(adv.sum(dim=1), torch.zeros(3), atol=1e-6)


def test_clipped_loss_at_ratio_one_is_minus_mean_advantage():
    logp = torch.log(torch.tensor([[0.5, 0.25, 0.1], [0.2, 0.3, 0.9]])).requires_grad_()
    adv = torch.tensor([2.0, -1.0])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    loss, stats = clipped_policy_loss(logp, logp.detach(), adv, mask, clip_eps=0.2)
    # tokens: 2 with advantage 2, 3 with advantage -1 -> mean advantage (4 - 3) / 5
    assert loss.item() == pytest.approx(-(4.0 - 3.0) / 5.0)
    assert stats["clip_frac"] == 0.0 and stats["policy_tokens"] == 5.0
    loss.backward()
    # d(-ratio*A)/d logp = -A / tokens at ratio 1; masked token gets nothing
    expected = torch.tensor([[-2.0, -2.0, 0.0], [1.0, 1.0, 1.0]]) / 5.0
    assert torch.allclose(logp.grad, expected)


def test_clipped_loss_stops_gradient_outside_the_trust_region():
    old = torch.zeros(1, 2)
    logp = torch.tensor([[math.log(1.5), math.log(0.5)]], requires_grad=True)
    loss, stats = clipped_policy_loss(logp, old, torch.tensor([1.0]), torch.ones(1, 2), clip_eps=0.2)
    # ratio 1.5 with A > 0 is clipped at 1.2 (no gradient); ratio 0.5 with A > 0 is not clipped
    assert loss.item() == pytest.approx(-(1.2 + 0.5) / 2)
    assert stats["clip_frac"] == 1.0
    loss.backward()
    assert logp.grad[0, 0].item() == 0.0
    assert logp.grad[0, 1].item() == pytest.approx(-0.5 / 2)


def test_kl_term_is_zero_at_reference_and_positive_away():
    logp = torch.log(torch.tensor([[0.5, 0.5]]))
    zero, _ = clipped_policy_loss(logp, logp, torch.tensor([0.0]), torch.ones(1, 2), 0.2, logp, beta=0.1)
    assert zero.item() == 0.0
    ref = torch.log(torch.tensor([[0.9, 0.1]]))
    loss, stats = clipped_policy_loss(logp, logp, torch.tensor([0.0]), torch.ones(1, 2), 0.2, ref, beta=0.1)
    assert loss.item() > 0 and stats["kl"] > 0


def test_completion_mask_keeps_first_eos_only():
    comp = torch.tensor([[5, 2, 7, 2], [5, 6, 7, 8], [2, 3, 3, 3]])
    assert completion_mask(comp, 2).tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]


def test_decode_completion_stops_at_eos_and_keeps_specials(tokenizer):
    ids = tokenizer("hello", add_special_tokens=False)["input_ids"]
    user = tokenizer.convert_tokens_to_ids("<|user|>")
    text = decode_completion(tokenizer, [*ids, user, tokenizer.eos_token_id, *ids])
    assert text == "hello<|user|>"


# ----------------------------------------------------------------------------- rollouts


def test_rollout_is_reproducible_per_index_and_differs_across_indices(tokenizer):
    model = micro_moe(tokenizer)
    cfg = GRPOConfig(group_size=4, max_new_tokens=6)
    obj = GRPOObjective(model, tokenizer, toy_items(), cfg, batch_size=2, seq_len=64, reward=even_reward)
    a, b, c = obj.batch(3), obj.batch(3), obj.batch(4)
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["old_logp"], b["old_logp"])
    assert not torch.equal(a["input_ids"], c["input_ids"])
    assert a["input_ids"].shape[0] == 8 and a["rewards"].shape == (2, 4)
    assert model.training  # the rollout restores train mode


def test_zero_variance_groups_give_zero_gradient(tokenizer):
    model = micro_moe(tokenizer)
    cfg = GRPOConfig(group_size=3, max_new_tokens=5)
    obj = GRPOObjective(
        model,
        tokenizer,
        toy_items(),
        cfg,
        batch_size=4,
        seq_len=64,
        reward=lambda i, t: 1.0,
        aux_loss_coef=0.0,
    )
    batch = obj.batch(0)
    loss, metrics = obj.loss(model, batch)
    assert metrics["zero_var_frac"] == 1.0 and loss.item() == 0.0
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.count_nonzero(g) == 0 for g in grads)


def test_seq_len_must_leave_room_for_the_prompt(tokenizer):
    with pytest.raises(BarkitError, match="seq_len"):
        GRPOObjective(
            micro_moe(tokenizer),
            tokenizer,
            toy_items(),
            GRPOConfig(max_new_tokens=64),
            batch_size=2,
            seq_len=64,
        )


def _rewarded_mass(model, tokenizer, items: list[Item]) -> float:
    """Exact probability that the first sampled token is rewarded, averaged over prompts."""
    from barkit.tokenizer import prompt_ids

    good = [t for t in range(len(tokenizer)) if _even_start(tokenizer.decode([t]))]
    total = 0.0
    with torch.no_grad():
        for item in items:
            ids = torch.tensor([prompt_ids(tokenizer, [{"role": "user", "content": item.prompt}])])
            probs = torch.softmax(model(input_ids=ids).logits[0, -1].float(), dim=-1)
            total += float(probs[good].sum())
    return total / len(items)


def test_one_gradient_step_favours_rewarded_samples(tokenizer):
    model = micro_moe(tokenizer)
    cfg = GRPOConfig(group_size=8, max_new_tokens=3)
    obj = GRPOObjective(
        model, tokenizer, toy_items(), cfg, batch_size=4, seq_len=64, reward=even_reward, aux_loss_coef=0.0
    )
    batch = obj.batch(0)
    loss, _ = obj.loss(model, batch)
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p -= 0.5 * p.grad
    prompt_len = batch["input_ids"].shape[1] - batch["completion_mask"].shape[1]
    with torch.no_grad():
        new_logp, _ = completion_logprobs(model, batch["input_ids"], batch["attention_mask"], prompt_len, 1.0)
    mask = batch["policy_mask"].float()
    gain = ((new_logp - batch["old_logp"]) * mask).sum(dim=1)
    adv = batch["advantages"]
    assert (adv > 0).any() and (adv < 0).any()
    assert gain[adv > 0].mean() > 0 > gain[adv < 0].mean()


def test_rlvr_stage_raises_reward_and_keeps_anchor(tokenizer, tmp_path):
    model = micro_moe(tokenizer)
    items = toy_items()
    before_mass = _rewarded_mass(model, tokenizer, items)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    # weight decay on: the anchor must survive it (it is restored, not merely left ungraded)
    optim = OptimConfig(lr=3e-2, weight_decay=0.1, schedule="constant")
    stage = default_stage("rlvr", "micro", steps=6, optim=optim)
    # one-token completions: the reward depends on the first token only, so no noise tokens
    cfg = GRPOConfig(group_size=8, max_new_tokens=1, prompts_per_step=4)
    obj = GRPOObjective(
        model, tokenizer, items, cfg, batch_size=stage.batch_size, seq_len=stage.seq_len, reward=even_reward
    )
    result = run_stage(model, tokenizer, stage, obj, tmp_path / "rlvr", progress=False)
    after_mass = _rewarded_mass(model, tokenizer, items)
    print(f"rewarded first-token mass {before_mass:.3f} -> {after_mass:.3f}")
    assert after_mass > before_mass + 0.2, (before_mass, after_mass)
    assert sorted(obj.reward_curve) == list(range(6))
    assert {"reward_mean", "reward_std", "zero_var_frac", "completion_len", "clip_frac"} <= set(
        result.history[0]
    )
    params = dict(model.named_parameters())
    for name, p in params.items():
        if ".experts." in name or name.endswith("mlp.gate.weight"):
            assert torch.equal(p[0], before[name][0]), f"anchor moved: {name}"
            assert not torch.equal(p[1], before[name][1]), f"expert 1 did not move: {name}"
        else:
            assert not torch.equal(p, before[name]), f"{name} did not move"


def test_reference_copy_only_when_beta_positive(tokenizer):
    model = micro_moe(tokenizer)
    off = GRPOObjective(model, tokenizer, toy_items(), GRPOConfig(), batch_size=2, seq_len=64)
    assert off.reference is None
    on = GRPOObjective(
        model,
        tokenizer,
        toy_items(),
        GRPOConfig(beta=0.05, max_new_tokens=4),
        batch_size=2,
        seq_len=64,
        reward=even_reward,
    )
    assert on.reference is not None and on.reference is not model
    batch = on.batch(0)
    # before any update the policy equals the reference, so the KL estimate is exactly 0
    assert torch.allclose(batch["ref_logp"], batch["old_logp"])
