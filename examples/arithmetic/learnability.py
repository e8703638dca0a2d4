"""How fast does a base learn held-out two-digit arithmetic? Measures what the base recipe's
``arithmetic`` share rests on.

Trains every tensor of a dense base (default: the shipped one) on the math category's raw text
alone (worked sums, differences and times tables; train-split operand triples only) and prints
:func:`barkit.base.arithmetic_probe` (exact results on 300 *test-split* triples) every 250
steps, at each learning rate given::

    OMP_NUM_THREADS=1 .venv/bin/python examples/arithmetic/learnability.py --lr 1e-3 3e-3 --steps 1500

About 0.8 s a step on one thread here (tiny preset, 16 x 256 tokens a step).
"""

from __future__ import annotations

import argparse
import math
import random
import time

import torch

from barkit.base import arithmetic_probe
from barkit.modeling import load_model
from barkit.shipped import shipped_folder
from barkit.suite import get_category


def rows(tokenizer, seed: int, seq_len: int = 256):  # type: ignore[no-untyped-def]
    """An endless stream of packed rows of arithmetic text."""
    docs = get_category("math").text(40000, seed)
    rng = random.Random(seed)
    stream: list[int] = []
    while True:
        while len(stream) < seq_len:
            doc = rng.choice(docs)
            stream += [tokenizer.bos_token_id] + tokenizer(doc, add_special_tokens=False)["input_ids"]
            stream.append(tokenizer.eos_token_id)
        yield stream[:seq_len]
        stream = stream[seq_len:]


def run(base: str, lr: float, steps: int, batch: int, every: int) -> None:
    torch.manual_seed(0)
    model, tokenizer = load_model(base)
    model.train()
    source = rows(tokenizer, seed=1)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    print(f"lr {lr:g}: step 0 probe {arithmetic_probe(model, tokenizer, n=300)}", flush=True)
    started = time.perf_counter()
    for step in range(1, steps + 1):
        warm = min(1.0, step / 100)
        decay = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps))
        for group in opt.param_groups:
            group["lr"] = lr * warm * decay
        ids = torch.tensor([next(source) for _ in range(batch)])
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        if step % every == 0:
            probe = arithmetic_probe(model, tokenizer, n=300)
            seconds = time.perf_counter() - started
            print(
                f"lr {lr:g}: step {step} loss {loss.item():.3f} probe {probe} ({seconds:.0f} s)", flush=True
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default=None, help="dense base folder (default: the shipped base)")
    parser.add_argument("--lr", type=float, nargs="+", default=[1e-3, 3e-3])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--every", type=int, default=250)
    args = parser.parse_args()
    base = args.base or str(shipped_folder("tiny-olmo2"))
    for lr in args.lr:
        run(base, lr, args.steps, args.batch, args.every)


if __name__ == "__main__":
    main()
