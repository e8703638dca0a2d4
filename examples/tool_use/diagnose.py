"""Where does a tool expert go wrong: the tool's name, an argument's name, or its value?

Teacher-forced on the tool-use category's items: the model reads the prompt and the reference
call, and a part counts as right when the model's next-token choice is right at every one of
its tokens (given the reference before it). Free-running scores (``barkit eval``) mix the parts:
one wrong token ruins the rest of the call. Printed per split, in % of the parts:

* ``name``: the tool's name;
* ``key``: an argument's name;
* ``value`` / ``string``: an argument's value (all of them / the strings, enums included);
* ``call``: every token of the reference call.

::

    .venv/bin/python examples/tool_use/diagnose.py MODEL [MODEL ...] [--n 100] [--split test]

Results: docs/results/README.md, "Tool use: augmented calls".
"""

from __future__ import annotations

import argparse
import json
from typing import Any


def diagnose(path: str, split: str, n: int) -> dict[str, float]:
    import torch

    from barkit.generate import encode_prompt
    from barkit.loader import load_model
    from barkit.suite.tools import CATEGORY

    model, tok = load_model(path)
    model.eval()
    hits: dict[str, list[int]] = {k: [0, 0] for k in ("name", "key", "value", "string", "call")}
    for item in CATEGORY.items(split, n):
        prompt = encode_prompt(tok, item.prompt)
        ref = item.answer
        enc = tok(ref, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = enc["input_ids"], enc["offset_mapping"]
        with torch.no_grad():
            logits = model(torch.tensor([prompt + ids])).logits[0, len(prompt) - 1 : -1]
        right = [int(a) == b for a, b in zip(logits.argmax(-1).tolist(), ids, strict=True)]

        def count(kind: str, lo: int, hi: int, right: list[bool] = right, offsets: Any = offsets) -> None:
            tokens = [i for i, (s, e) in enumerate(offsets) if e > lo and s < hi]
            hits[kind][0] += all(right[i] for i in tokens)
            hits[kind][1] += 1

        name = item.meta["tool"]
        at = ref.index(f'"{name}"') + 1
        count("name", at, at + len(name))
        for key, value in item.meta["arguments"].items():
            at = ref.index(f'"{key}": ') + 1
            count("key", at, at + len(key))
            text, start = json.dumps(value), at + len(key) + 3
            count("value", start, start + len(text))
            if isinstance(value, str):
                count("string", start, start + len(text))
        hits["call"][0] += all(right)
        hits["call"][1] += 1
    return {k: round(100.0 * a / max(b, 1), 1) for k, (a, b) in hits.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--split", default="test", choices=("train", "test"))
    parser.add_argument("--n", type=int, default=100)
    args = parser.parse_args()
    for path in args.models:
        parts = diagnose(path, args.split, args.n)
        print(f"{path} ({args.split}, {args.n} items): " + "  ".join(f"{k} {v:g}" for k, v in parts.items()))


if __name__ == "__main__":
    main()
