"""Where does a merged model's routing go wrong? Two measurements on a merged or routed model.

1. ``weights``: per layer, the router's softmax at the last prompt position (the position that
   writes the answer's first token), averaged over test prompts of each expert domain.
2. ``probe``: can *any* router see the domain there? A bias-free linear map on the router's
   input (the MLP input, exactly a router's form) is trained as a classifier of the expert a
   prompt belongs to (general categories: the anchor) on train-split prompts with Adam at the
   router's rate, and tested on test-split prompts; accuracy per layer after 40, 160, 400 steps.

    OMP_NUM_THREADS=1 python examples/routing/diagnose.py runs/demo/routed weights
    OMP_NUM_THREADS=1 python examples/routing/diagnose.py runs/demo/merged probe

Figures from 2026-12-03 are in docs/results/README.md (section "Where the merge loses ...").
"""

from __future__ import annotations

import sys

import torch

from barkit.artifacts import read_manifest
from barkit.generate import encode_prompt
from barkit.modeling import load_model
from barkit.route import expert_domains
from barkit.suite import CATEGORIES, draw_items


def last_position_states(model, tokenizer, prompts: list[str]) -> torch.Tensor:
    """(prompts, layers, hidden): each layer's MLP input at the last prompt position."""
    layers = model.model.layers
    rows = []
    for prompt in prompts:
        store: dict[int, torch.Tensor] = {}
        hooks = [
            layer.mlp.register_forward_pre_hook(
                lambda m, a, i=i, s=store: s.__setitem__(i, a[0][0, -1].clone())
            )
            for i, layer in enumerate(layers)
        ]
        with torch.no_grad():
            model(input_ids=torch.tensor([encode_prompt(tokenizer, prompt)]), use_cache=False)
        for hook in hooks:
            hook.remove()
        rows.append(torch.stack([store[i] for i in range(len(layers))]))
    return torch.stack(rows)


def weights(model, tokenizer, experts: list[str], n: int = 30) -> None:
    for domain in experts:
        prompts = [it.prompt for it in draw_items(domain, "test", n, seed=0)]
        total = None
        for prompt in prompts:
            with torch.no_grad():
                out = model(
                    input_ids=torch.tensor([encode_prompt(tokenizer, prompt)]),
                    output_router_logits=True,
                    use_cache=False,
                )
            probs = torch.stack([torch.softmax(layer.float(), -1)[-1] for layer in out.router_logits])
            total = probs if total is None else total + probs
        assert total is not None
        total /= len(prompts)
        print(f"{domain} prompts, last position; columns: anchor, {', '.join(experts)}")
        for i, row in enumerate(total.tolist()):
            print(f"  layer {i}: " + "  ".join(f"{v:.2f}" for v in row))


def probe(model, tokenizer, experts: list[str], lr: float = 2e-2) -> None:
    target = {d: 1 + i for i, d in enumerate(experts)}

    def data(split: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        prompts, labels = [], []
        for name in CATEGORIES:
            for it in draw_items(name, split, n, seed=0):
                prompts.append(it.prompt)
                labels.append(target.get(name, 0))
        return last_position_states(model, tokenizer, prompts), torch.tensor(labels)

    x_train, y_train = data("train", 100)
    x_test, y_test = data("test", 40)
    gen = torch.Generator().manual_seed(0)
    for layer, block in enumerate(model.model.layers):
        w = block.mlp.gate.weight.detach().clone().requires_grad_(True)
        opt = torch.optim.Adam([w], lr=lr, betas=(0.9, 0.95))
        found = []
        for step in range(1, 401):
            idx = torch.randint(0, len(y_train), (64,), generator=gen)
            opt.zero_grad()
            torch.nn.functional.cross_entropy(x_train[idx, layer] @ w.T, y_train[idx]).backward()
            opt.step()
            if step in (40, 160, 400):
                with torch.no_grad():
                    pred = (x_test[:, layer] @ w.T).argmax(1)
                per = {
                    name: round(100 * (pred[y_test == k] == k).float().mean().item())
                    for name, k in [("general", 0), *target.items()]
                }
                found.append(f"{step} steps {100 * (pred == y_test).float().mean().item():.0f}% {per}")
        print(f"layer {layer}: " + " | ".join(found))


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    folder, what = sys.argv[1], sys.argv[2]
    model, tokenizer = load_model(folder)
    experts = expert_domains(read_manifest(folder))
    {"weights": weights, "probe": probe}[what](model, tokenizer, experts)


if __name__ == "__main__":
    main()
