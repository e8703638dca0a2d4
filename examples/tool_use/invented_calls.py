"""Can a base learn to pick a listed tool and copy a request's values into its call?

The tool expert scores 0 on the micro-suite under BAR's schedule (attention frozen), so the
skill has to come from the base. Four commands:

``build OUT``
    Builds the ``tiny`` base with invented-tool calls in both phases: calls are three quarters
    of pre-training's copy documents (``copy_kinds``), the copy share ends at 0.25 instead of
    0.1, and post-training adds one invented-tool conversation per general conversation
    (``call_chat``). Resumable; about 50 minutes as one process at two threads here.

``check MODEL [MODEL ...]``
    Scores held-out invented-tool calls in chat form (the tool-use category's layout and call
    format; the called tool's name never occurs in training): the exact call (the category's
    AST check) and the right tool name, out of ``--n``.

``post MODEL OUT``
    Continues MODEL's post-training, every tensor, on invented-tool conversations mixed one to
    one with the suite's general conversations (lr 1e-3 with warmup and cosine decay, batch
    16, ``--steps`` 2000): a quick measure of what practice on invented calls gives a finished
    base. About 14 minutes at two threads here. By default it has no "repeat exactly"
    conversations and the copy probe of such a base falls to 0 (docs/results/README.md, "Tool
    use: augmented calls"); ``--copy 0.1`` adds them, ``--arithmetic 0.2`` keeps a share of
    worked-arithmetic rows (as the base recipe's post-training does) and ``--rich`` draws the
    calls from a grammar of many sentence shapes (:func:`rich_example`) instead of
    :mod:`barkit.copying`'s one (about 20 minutes with all three). ``--carriers FILE`` puts the
    calls' cue words and value phrases inside lines of everyday English instead
    (:func:`carried_example`; e.g. ``src/barkit/corpora/everyday.jsonl``).

``learn MODEL``
    Trains every tensor of MODEL on call documents alone (plain text, as in pre-training; batch
    16 x 256, AdamW, warmup and cosine decay) and prints :func:`barkit.copying.call_probe` (exact
    call and right tool on 100 held-out documents) every 400 steps: is the tool choice learnable
    at this shape, given a dedicated budget? ``--layers N`` starts instead from a fresh model of
    MODEL's shape with N layers, and ``--kinds`` draws other copy documents too (e.g.
    ``repeat,recall,record,signature,call,call,call,call``). About 0.5 s a step here at 4 layers.

::

    .venv/bin/python examples/tool_use/invented_calls.py build runs/call-base
    .venv/bin/python examples/tool_use/invented_calls.py check runs/call-base src/barkit/bases/tiny-olmo2

Results: docs/results/README.md, "Tool use: a base built with invented-tool calls".
"""

from __future__ import annotations

import argparse
import random
from dataclasses import replace
from typing import Any

from barkit.copying import CLASSIC_KINDS, call_example


def build(out: str) -> None:
    import barkit.base_recipe as base_recipe
    from barkit.base import train_base

    tiny = base_recipe.RECIPES["tiny"]
    base_recipe.RECIPES["tiny"] = replace(
        tiny, copy_kinds=CLASSIC_KINDS + ("call",) * 12, copy_end=0.25, call_chat=1.0
    )
    manifest = train_base(out, preset="tiny", eval_limit=50, work_dir=out + "-work")
    print(f"{manifest['tokens']:,} tokens in {manifest['seconds']:.0f} s; eval {manifest['eval']}")


def check(models: list[str], n: int) -> None:
    from barkit.generate import generate
    from barkit.loader import load_model
    from barkit.suite.tools import match_call, parse_call, tools_prompt

    rng = random.Random("invented-calls-check|0")
    rows = [call_example(rng, probe=True) for _ in range(n)]
    prompts = [[{"role": "user", "content": tools_prompt(listed, ask)}] for listed, _, ask, _ in rows]
    for path in models:
        model, tokenizer = load_model(path)
        replies = generate(model, tokenizer, prompts, max_new_tokens=64, batch_size=32)
        exact = named = 0
        for (_, tool, _, arguments), reply in zip(rows, replies, strict=True):
            call = parse_call(reply)
            if call is not None:
                named += call["name"] == tool.name
                exact += match_call(call, tool, arguments)
        print(f"{path}: exact call {exact} of {n}, right tool {named} of {n}")


def learn(path: str, steps: int, lr: float, layers: int | None, kinds: tuple[str, ...]) -> None:
    import math

    import torch

    from barkit.copying import DOCUMENT_KINDS, call_probe, copy_document
    from barkit.loader import load_model

    torch.manual_seed(0)
    model, tokenizer = load_model(path)
    if layers is not None:  # a fresh model of MODEL's shape with this many layers
        from transformers import AutoModelForCausalLM

        config = model.config
        config.num_hidden_layers = layers
        config.layer_types = None
        model = AutoModelForCausalLM.from_config(config)
        print(f"fresh model, {layers} layers, {sum(p.numel() for p in model.parameters()):,} parameters")
    rng = random.Random(0)
    pending: list[int] = []

    def batch(rows: int = 16, length: int = 256) -> torch.Tensor:
        out = []
        while len(out) < rows:
            while len(pending) < length:
                # (one kind: no draw, so the default keeps the documented runs' data)
                doc = DOCUMENT_KINDS[kinds[0]](rng) if len(kinds) == 1 else copy_document(rng, kinds)
                text = doc + "\n\n"
                pending.extend(
                    tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
                )
            out.append(pending[:length])
            del pending[:length]
        return torch.tensor(out)

    def rate(step: int) -> float:  # 100 warmup steps, then cosine down to a tenth
        return min(1.0, (step + 1) / 100) * (0.1 + 0.45 * (1 + math.cos(math.pi * step / steps)))

    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.95))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, rate)
    model.train()
    for step in range(1, steps + 1):
        rows = batch()
        loss = model(input_ids=rows, labels=rows).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        if step % 400 == 0 or step == steps:
            model.eval()
            probe = call_probe(model, tokenizer, n=100)
            model.train()
            print(
                f"step {step}: loss {loss.item():.3f}, exact call {probe['call']}, right tool {probe['name']}"
            )


# Generic filler for the rich grammar: common words, never a value, written without the suite's
# request templates in view of any particular tool.
_FILL = ("me", "my", "the", "a", "some", "that", "it", "just", "also", "again", "today", "soon")
_RICH_OPENERS = (
    "",
    "please",
    "can you",
    "could you",
    "would you",
    "I want to",
    "I would like to",
    "go ahead and",
    "hey,",
    "ok,",
    "I need to",
    "time to",
    "let us",
    "help me",
    "you should",
    "one more thing:",
)
_RICH_CLOSERS = ("", "", " please", " now", " for me", " thanks", " today", " if you can", " again", " soon")


def rich_value(rng: random.Random, param: Any) -> tuple[Any, str]:
    """Like barkit.copying's values, with more shapes for strings: capitals, letters, times."""
    from barkit.copying import CONSONANTS, VOWELS, _value, invented_words

    if param.enum or param.type != "string":
        return _value(rng, param)
    kind = rng.random()
    if kind < 0.15:  # an upper-case code of letters
        text = "".join(rng.choice(CONSONANTS + VOWELS).upper() for _ in range(rng.randint(3, 5)))
    elif kind < 0.25:  # a time of day
        text = f"{rng.randint(6, 23)}:{rng.choice(('00', '15', '30', '45'))}"
    else:
        text = invented_words(rng)
    return text, text


def _rich_phrase(rng: random.Random, param: Any, said: str) -> str:
    """One way of stating a value in a sentence (the slot's name is said in about half)."""
    from barkit.copying import _LINKS

    link = rng.choice(_LINKS)
    if param.type == "boolean":
        forms = (
            "{link} {name} {said}",
            "{name} {said}",
            "{name}: {said}",
            "{name} set {said}",
            "with {name} {said}",
            "{name} turned {said}",
        )
    else:
        forms = (
            "{link} {said}",
            "{link} {said}",
            "{said}",
            "{said}",
            "{link} the {name} {said}",
            "{name} {said}",
            "{name}: {said}",
            "{name} = {said}",
            "{name} is {said}",
            "{said} as {name}",
            "{said} for the {name}",
            "called {said}",
            "named {said}",
            "the {said} one",
            "{link} {fill} {said}",
            "{name} of {said}",
        )
    return rng.choice(forms).format(link=link, name=param.name, said=said, fill=rng.choice(_FILL))


def rich_example(rng: random.Random) -> tuple[list[Any], Any, str, dict[str, Any]]:
    """An invented-tool call whose request uses many sentence shapes (barkit.copying's has one)."""
    from barkit.copying import invented_call

    listed, tool, cue, arguments, phrases = invented_call(rng, rich_value, _rich_phrase)
    shape = rng.random()
    if shape < 0.45:  # opener, cue and phrases in any order
        where = rng.randint(0, len(phrases))
        words = [rng.choice(_RICH_OPENERS), *phrases[:where], cue, *phrases[where:]]
        request = (
            " ".join(w for w in words if w) + rng.choice(_RICH_CLOSERS) + rng.choice((".", "?", "!", ""))
        )
    elif shape < 0.6:  # terse: cue, then the values in a comma list
        request = f"{cue}{rng.choice((':', ','))} " + ", ".join(phrases) + rng.choice((".", ""))
    elif shape < 0.75:  # the values first, then the ask
        request = ", ".join(phrases) + f" - {rng.choice(_RICH_OPENERS)} {cue} {rng.choice(_FILL)}".replace(
            "  ", " "
        )
        request += rng.choice((".", "?", "!"))
    elif shape < 0.9:  # a question
        head = rng.choice(("what is the", "how is the", "can I get the", "what about the", "is there a"))
        request = f"{head} {cue} " + " ".join(phrases) + "?"
    else:  # two sentences
        request = (
            f"{rng.choice(_RICH_OPENERS)} {cue} {rng.choice(_FILL)}.".strip()
            + " "
            + " and ".join(phrases)
            + "."
        )
    rng.shuffle(listed)
    request = request.strip()
    return listed, tool, request[0].upper() + request[1:], arguments


def rich_conversation(rng: random.Random) -> list[dict[str, str]]:
    from barkit.copying import call_turn

    return call_turn(*rich_example(rng))


def carried_example(rng: random.Random, lines: list[str]) -> tuple[list[Any], Any, str, dict[str, Any]]:
    """An invented-tool call whose cue and value phrases stand inside an everyday English line
    (e.g. from barkit's everyday corpus): the values must be found among ordinary words, as in
    the suite's requests, not among other invented ones."""
    from barkit.copying import invented_call

    listed, tool, cue, arguments, phrases = invented_call(rng, rich_value, _rich_phrase)
    words = rng.choice(lines).rstrip(".!?").split()
    inserts = [cue, *phrases]
    rng.shuffle(inserts)
    if rng.random() < 0.5:  # each phrase at its own place inside the line
        for phrase in inserts:
            words.insert(rng.randint(1, len(words)), phrase)
        request = " ".join(words) + rng.choice((".", "?", "!"))
    else:  # the line, then the phrases
        request = (
            " ".join(words) + rng.choice((", ", ". ", " - ")) + " ".join(inserts) + rng.choice((".", ""))
        )
    rng.shuffle(listed)
    return listed, tool, request[0].upper() + request[1:], arguments


def post(
    path: str,
    out: str,
    steps: int,
    lr: float,
    rich: bool = False,
    copy: float = 0.0,
    arithmetic: float = 0.0,
    text: str | None = None,
    text_share: float = 0.5,
    carriers: str | None = None,
) -> None:
    """Continue MODEL's post-training, every tensor, on invented-tool conversations mixed one to
    one with the suite's general ones (knowledge, reasoning, chat); write a base to OUT.

    ``rich`` draws the calls from :func:`rich_example`; ``copy`` adds that share (of the general
    conversations) of "repeat exactly" conversations to the general side; ``arithmetic`` makes
    that share of the rows worked arithmetic (the base recipe's ``arithmetic_post``); ``text`` (a
    JSONL file of ``{"text": ...}`` rows, e.g. from ``everyday_requests.py``) takes the calls'
    place: rows of those texts one after another, the loss on every token, ``text_share`` of the
    rows that are not arithmetic; ``carriers`` (a JSONL file of ``{"text": ...}`` rows) puts the
    calls' cues and values inside its lines (:func:`carried_example`)."""
    import hashlib
    import json
    import math
    import shutil
    from pathlib import Path

    import torch

    from barkit.base import arithmetic_rows
    from barkit.copying import call_conversation, call_turn, copy_conversation
    from barkit.loader import load_model
    from barkit.suite import draw_items
    from barkit.userdata import encode_chat

    torch.manual_seed(0)
    model, tokenizer = load_model(path)
    rng = random.Random(0)
    general = [
        i.messages() for c in ("knowledge", "reasoning", "chat") for i in draw_items(c, "train", 1000, 0)
    ]
    general += [copy_conversation(rng) for _ in range(round(len(general) * copy))]

    def texts(file: str) -> list[str]:
        return [json.loads(line)["text"] for line in Path(file).read_text().splitlines() if line.strip()]

    held = texts(carriers) if carriers else []

    def carried_conversation(r: random.Random) -> list[dict[str, str]]:
        return call_turn(*carried_example(r, held))

    make = carried_conversation if carriers else rich_conversation if rich else call_conversation
    # drawn even when --text takes their place, so that every run draws its rows the same way
    calls = [make(rng) for _ in range(8 * steps)]
    sums = arithmetic_rows(tokenizer, arithmetic, 16 * steps, 256, 1) if arithmetic else None
    lines = texts(text) if text else []
    encoded = [tokenizer(t + "\n", add_special_tokens=False)["input_ids"] for t in lines]

    def text_row() -> tuple[list[int], list[int]]:
        ids: list[int] = []
        while len(ids) < 256:
            ids += rng.choice(encoded)
        return ids[:256], [1] * 256

    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.95))
    pad = tokenizer.pad_token_id
    model.train()
    for step in range(steps):
        rate = min(1.0, (step + 1) / 50) * (0.1 + 0.45 * (1 + math.cos(math.pi * step / steps)))
        for group in optimizer.param_groups:
            group["lr"] = lr * rate
        rows = []
        for _ in range(16):
            if sums is not None and rng.random() < arithmetic:
                k = rng.randrange(len(sums.input_ids))
                ids_k = sums.input_ids[k][sums.attention_mask[k].bool()].tolist()
                rows.append((ids_k, [1] * len(ids_k)))
            elif encoded and rng.random() < text_share:
                rows.append(text_row())
            else:
                pool = general if encoded else (calls, general)[rng.randrange(2)]
                rows.append(encode_chat(tokenizer, rng.choice(pool), 256))
        width = max(len(ids) for ids, _ in rows)
        ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in rows])
        labels = torch.tensor(
            [
                [t if m else -100 for t, m in zip(i, k, strict=True)] + [-100] * (width - len(i))
                for i, k in rows
            ]
        )
        mask = (torch.arange(width)[None, :] < torch.tensor([len(i) for i, _ in rows])[:, None]).long()
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        if (step + 1) % 250 == 0:
            print(f"step {step + 1}: loss {loss.item():.3f}", flush=True)
    partial = Path(out + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    manifest = json.loads((Path(path) / "barkit.json").read_text())
    settings = {
        "parent": manifest["fingerprint"],
        "invented_calls": 0.0 if text else 0.5,
        "steps": steps,
        "lr": lr,
    }
    extra = (
        ("rich", rich),
        ("copy", copy),
        ("arithmetic", arithmetic),
        ("text", text and Path(text).name),
        ("text_share", text_share if text else 0.0),
        ("carriers", carriers and Path(carriers).name),
    )
    settings.update({k: v for k, v in extra if v})
    manifest.update(
        continued=settings,
        fingerprint=hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16],
    )
    manifest.pop("eval", None)  # the parent's scores are not this model's
    (partial / "barkit.json").write_text(json.dumps(manifest, indent=1))
    partial.rename(out)
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("build").add_argument("out")
    checking = sub.add_parser("check")
    checking.add_argument("models", nargs="+")
    checking.add_argument("--n", type=int, default=100)
    learning = sub.add_parser("learn")
    learning.add_argument("model")
    learning.add_argument("--steps", type=int, default=1000)
    learning.add_argument("--lr", type=float, default=1e-3)
    learning.add_argument("--layers", type=int, help="start from scratch with this many layers")
    learning.add_argument(
        "--kinds",
        default="call",
        help="copy-document kinds to draw, comma-separated (repeat one to weigh it)",
    )
    posting = sub.add_parser("post")
    posting.add_argument("model")
    posting.add_argument("out")
    posting.add_argument("--steps", type=int, default=2000)
    posting.add_argument("--lr", type=float, default=1e-3)
    posting.add_argument("--rich", action="store_true", help="calls with many sentence shapes")
    posting.add_argument("--copy", type=float, default=0.0, help="share of 'repeat exactly' conversations")
    posting.add_argument("--arithmetic", type=float, default=0.0, help="share of worked-arithmetic rows")
    posting.add_argument("--text", help="JSONL of {'text': ...} rows to train on in place of the calls")
    posting.add_argument("--text-share", type=float, default=0.5, help="share of the --text rows")
    posting.add_argument("--carriers", help="JSONL of {'text': ...} lines that carry the calls' values")
    args = parser.parse_args()
    if args.command == "build":
        build(args.out)
    elif args.command == "post":
        post(
            args.model,
            args.out,
            args.steps,
            args.lr,
            args.rich,
            args.copy,
            args.arithmetic,
            args.text,
            args.text_share,
            args.carriers,
        )
    elif args.command == "check":
        check(args.models, args.n)
    else:
        learn(args.model, args.steps, args.lr, args.layers, tuple(args.kinds.split(",")))


if __name__ == "__main__":
    main()
