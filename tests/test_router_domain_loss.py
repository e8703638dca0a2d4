"""The router stage's domain-label loss: each token's router logits against its sample's expert.

Deterministic micro setup: a 3-expert MoE (anchor, math, safety) with distinct experts, routed
twice from the same weights on the same router sample, with and without the loss.

What is measured is the router's *selectivity*: the weight domain-d tokens give expert d minus
the mean weight the other categories' tokens give it. The absolute weight is not a fair test
on a random micro model: its router inputs barely tell domains apart, and three of the five
sampled categories are general (their tokens target the anchor), so the loss first pulls every
token towards the anchor (measured: math tokens' weight on the math expert fell from 0.41 to
0.26 after 40 steps, while the other categories' fell further).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch

from barkit.families import LLAMA, family_of, use_trainable_experts
from barkit.route import routing_fractions
from barkit.train.data import NO_TAG, pack_examples
from barkit.train.objectives import domain_label_loss
from barkit.train.stage_data import expert_index, routed_categories, router_sample, stratified_sample
from barkit.train.stages import resolve_stage, run_stage_on

EXPERTS = ["math", "safety"]


@pytest.fixture(scope="module")
def merged() -> tuple[Any, Any]:
    """A micro merged-shaped model: anchor + two experts that differ, zero router."""
    from transformers import MixtralForCausalLM

    from _train_micro import dense_config
    from barkit.tokenizer import train_tokenizer

    torch.set_num_threads(1)
    tok = train_tokenizer(400, per_category=60)
    config = LLAMA.moe_config(dense_config("llama"), 3, 3)
    config.vocab_size = len(tok)
    torch.manual_seed(0)
    model = MixtralForCausalLM(config)
    use_trainable_experts(model, "eager")
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.gate.weight.zero_()
    return model, tok


def _route(model: Any, tok: Any, coef: float, work: Path) -> Any:
    plan = resolve_stage(
        "router", routed_categories(EXPERTS), "micro", 20, 0, {"optim": {"lr": 3e-2}}, on="merged"
    )
    data = router_sample(0.1, domain_loss=coef, experts=EXPERTS)
    trained = run_stage_on((copy.deepcopy(model), tok), plan, work, data=data, progress=False)
    if coef:
        assert all("domain_loss" in h for h in trained.result.history)
    trained.cleanup()
    return trained.result.model


def _selectivity(fractions: dict[str, list[float]]) -> list[float]:
    """Per expert domain d: weight of d's tokens on expert d minus the other categories' mean."""
    out = []
    for expert, domain in enumerate(EXPERTS, start=1):
        others = [f[expert] for c, f in fractions.items() if c != domain]
        out.append(fractions[domain][expert] - sum(others) / len(others))
    return out


def test_domain_loss_sends_each_domain_to_its_expert(merged: tuple[Any, Any], tmp_path: Path) -> None:
    model, tok = merged
    plain = _route(model, tok, 0.0, tmp_path / "plain")
    labelled = _route(model, tok, 1.0, tmp_path / "labelled")
    sample = stratified_sample(routed_categories(EXPERTS), 0.1, 0, 48)  # the router's own sample
    without = _selectivity(routing_fractions(plain, tok, sample, 64))
    with_loss = _selectivity(routing_fractions(labelled, tok, sample, 64))
    # measured: [-0.032, -0.026] without, [0.043, 0.068] with
    for domain, off, on in zip(EXPERTS, without, with_loss, strict=True):
        assert on > 0.02 and on > off + 0.03, (domain, without, with_loss)
    # only the router trained, and not its anchor row
    before = dict(model.named_parameters())
    for name, param in labelled.named_parameters():
        if name.endswith("mlp.gate.weight"):
            assert torch.equal(param[0], before[name][0]) and not torch.equal(param, before[name])
        else:
            assert torch.equal(param, before[name]), f"non-router {name} moved"
    assert family_of(labelled).name == "llama"


def test_labels_and_loss() -> None:
    assert [expert_index(c, EXPERTS) for c in ("math", "safety", "chat")] == [1, 2, 0]
    rows = pack_examples([([5, 6], [0, 1]), ([7], [1]), ([8, 9, 10], [0, 1, 1])], 4, 0, tags=[1, 2, 0])
    assert rows.tags is not None
    assert rows.tags.tolist() == [[1, 1, 2, NO_TAG], [0, 0, 0, NO_TAG]]
    assert pack_examples([([5], [1])], 4, 0).tags is None
    logits = [torch.tensor([[0.0, 9.0], [9.0, 0.0]]), torch.tensor([[0.0, 9.0], [0.0, 9.0]])]
    loss = domain_label_loss(logits, torch.tensor([1, NO_TAG]))
    assert loss == pytest.approx(torch.nn.functional.cross_entropy(logits[0][:1], torch.tensor([1])).item())
    assert domain_label_loss(logits, torch.tensor([NO_TAG, NO_TAG])) == 0


def test_cli_refuses_a_negative_coefficient(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from barkit.cli import main

    assert main(["route", str(tmp_path), "--out", str(tmp_path / "o"), "--domain-loss", "-1"]) == 2
    assert "--domain-loss" in capsys.readouterr().err
