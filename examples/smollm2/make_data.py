"""Write the SmolLM2 example's data: two small domains in TRL's formats, train and held-out test.

* ``arith``: two-digit additions and subtractions asked in words; SFT rows are ``messages``,
  test rows ``prompt`` + ``answer`` scored by the ``numeric`` verifier;
* ``tools``: requests that a tool call answers, in ``<tool_call>{json}</tool_call>`` form with
  two new special tokens; test rows are scored by the ``tool-call`` verifier (name and
  arguments must match).

Train and test use different phrasings and disjoint operand pairs / argument values.

    python make_data.py OUT_DIR
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

ARITH = {
    "train": ["What is {a} {op} {b}?", "Compute {a} {op} {b}.", "Work out {a} {op} {b}.", "{a} {op} {b} = ?"],
    "test": ["Calculate {a} {op} {b}.", "How much is {a} {op} {b}?"],
}
CITIES = ["Paris", "Oslo", "Lima", "Cairo", "Tokyo", "Quito", "Rome", "Dakar", "Hanoi", "Perth"]
TOOLS = {
    "train": [
        ("What's the weather in {c}?", "get_weather", "city"),
        ("Show me the time in {c}.", "get_time", "city"),
        ("Find flights to {c}.", "search_flights", "destination"),
    ],
    "test": [
        ("Is it raining in {c} right now?", "get_weather", "city"),
        ("What time is it in {c}?", "get_time", "city"),
    ],
}
CALL = '<tool_call>{"name": "%s", "arguments": {"%s": "%s"}}</tool_call>'


def arith_rows(split: str, n: int, rng: random.Random) -> list[tuple[str, str]]:
    rows = []
    while len(rows) < n:
        a, b, op = rng.randint(10, 99), rng.randint(10, 99), rng.choice("+-")
        if ((a + b) % 2 == 0) != (split == "train"):  # disjoint operand pairs by parity of the sum
            continue
        value = a + b if op == "+" else a - b
        rows.append((rng.choice(ARITH[split]).format(a=a, op=op, b=b), str(value)))
    return rows


def tool_rows(split: str, n: int, rng: random.Random) -> list[tuple[str, str]]:
    cities = CITIES[:7] if split == "train" else CITIES[7:]
    rows = []
    for _ in range(n):
        template, name, arg = rng.choice(TOOLS[split])
        city = rng.choice(cities)
        rows.append((template.format(c=city), CALL % (name, arg, city)))
    return rows


def write(path: Path, rows: list[dict[str, object]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    for name, make in (("arith", arith_rows), ("tools", tool_rows)):
        train = make("train", 400, rng)
        test = make("test", 40, rng)
        write(
            out / f"{name}-train.jsonl",
            [
                {"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": a}]}
                for p, a in train
            ],
        )
        write(out / f"{name}-test.jsonl", [{"prompt": p, "answer": a} for p, a in test])


if __name__ == "__main__":
    main(Path(sys.argv[1]))
