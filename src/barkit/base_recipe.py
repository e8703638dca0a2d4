"""The base model's recipe, kept apart from its training code.

What decides the embedded base's weights (apart from architecture and seed): data sizes, the two
phases' schedules and the copy curriculum. Stage data, the shipped-base check and
:mod:`barkit.base` all read it from here, so none of them needs the training code.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

from barkit.errors import BarkitError
from barkit.suite import GENERAL, SUITE_VERSION


@dataclass(frozen=True)
class Phase:
    """One training phase of the base: optimizer steps and schedule (AdamW, warmup + cosine)."""

    steps: int
    batch_size: int
    seq_len: int
    lr: float
    warmup_steps: int
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01


@dataclass(frozen=True)
class BaseRecipe:
    """Everything that decides the base's weights, apart from architecture and seed."""

    #: train items per general category, and knowledge documents
    items: int
    texts: int
    #: knowledge questions are a closed set of facts; repeating them helps memorise (5x lifted
    #: the old tiny base's knowledge from 4 to 18 at the same budget)
    knowledge_repeats: int
    #: suite items per category the tokenizer learns from
    tokenizer_sample: int
    pretrain: Phase
    posttrain: Phase
    #: share of copy rows at the start and the end of pre-training (linear in between)
    copy_start: float
    copy_end: float
    #: "repeat exactly" conversations added to post-training, as a share of its conversations
    copy_chat: float
    probe_every: int
    checkpoint_every: int
    #: the tokenizer's pre-tokenisation scheme (:data:`barkit.tokenizer.SCHEMES`)
    tokenizer_scheme: str = "metaspace"
    #: share of the pre-training pool's rows (copy rows apart) that are worked arithmetic
    #: (the math category's raw text: train-split operand triples only)
    arithmetic: float = 0.0
    #: the same for post-training's rows, so that SFT on conversations does not erase it
    arithmetic_post: float = 0.0
    #: the copy-document kinds pre-training draws from (:data:`barkit.copying.DOCUMENT_KINDS`),
    #: uniformly; a kind listed twice is drawn twice as often
    copy_kinds: tuple[str, ...] = ("repeat", "recall", "record", "signature")
    #: tool-use conversations with invented tools (:func:`barkit.copying.call_conversation`)
    #: added to post-training, as a share of its conversations
    call_chat: float = 0.0
    #: share of pre-training's pool (copy rows apart) that is everyday English
    #: (:func:`everyday_lines`, the loss on every token), and the same for post-training's rows;
    #: a recipe that uses it also trains its tokenizer on those lines
    everyday: float = 0.0
    everyday_post: float = 0.0

    def __post_init__(self) -> None:
        from barkit.copying import DOCUMENT_KINDS

        unknown = sorted(set(self.copy_kinds) - set(DOCUMENT_KINDS))
        if unknown or not self.copy_kinds:
            raise BarkitError(
                f"copy_kinds {list(self.copy_kinds)}: unknown or empty; known: {', '.join(DOCUMENT_KINDS)}"
            )
        if not 0.0 <= self.call_chat <= 10.0:
            raise BarkitError(f"call_chat {self.call_chat}: expected a share between 0 and 10")
        for name in ("arithmetic", "arithmetic_post", "everyday", "everyday_post"):
            share = getattr(self, name)
            if not 0.0 <= share < 1.0:
                raise BarkitError(f"{name} {share}: expected a share from 0 up to (not including) 1")

    @property
    def uses_everyday(self) -> bool:
        return self.everyday > 0 or self.everyday_post > 0

    def to_dict(self) -> dict[str, Any]:
        keyed = asdict(self)
        # Absent at its default, so that bases built before the field existed keep their
        # fingerprint; any other scheme is part of what a rebuild must match.
        if keyed["tokenizer_scheme"] == "metaspace":
            del keyed["tokenizer_scheme"]
        for name in ("arithmetic", "arithmetic_post", "call_chat", "everyday", "everyday_post"):
            if not keyed[name]:
                del keyed[name]
        if tuple(keyed["copy_kinds"]) == BaseRecipe.copy_kinds:
            del keyed["copy_kinds"]
        else:
            keyed["copy_kinds"] = list(keyed["copy_kinds"])
        return keyed

    def fingerprint(self, arch: str, preset: str, seed: int) -> str:
        """What a rebuild must match: recipe, shape, architecture, seed and suite version."""
        from barkit.presets import get_preset

        keyed = {
            "recipe": self.to_dict(),
            "arch": arch,
            "preset": get_preset(preset).to_dict(),
            "seed": seed,
            "suite_version": SUITE_VERSION,
        }
        if self.uses_everyday:
            # the lines themselves decide the weights: another corpus is another base
            keyed["everyday_corpus"] = everyday_digest()
        return hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:16]


RECIPES: dict[str, BaseRecipe] = {
    # Seconds: for tests.
    "micro": BaseRecipe(
        items=120,
        texts=60,
        knowledge_repeats=1,
        tokenizer_sample=200,
        pretrain=Phase(steps=6, batch_size=4, seq_len=64, lr=3e-3, warmup_steps=1),
        posttrain=Phase(steps=3, batch_size=4, seq_len=64, lr=1e-3, warmup_steps=1),
        copy_start=0.5,
        copy_end=0.1,
        copy_chat=0.1,
        probe_every=3,
        checkpoint_every=0,
        tokenizer_scheme="glue",
        arithmetic=0.2,
        arithmetic_post=0.2,
    ),
    # The shipped base: 20M tokens of pre-training (copying forms after roughly 15-25M tokens
    # of ordinary text at this batch x context; the copy curriculum brings it at about 4M), a
    # lower peak rate than the old 1e-2 with warmup and cosine decay, then 4M tokens of
    # post-training. Worked arithmetic is a third of pre-training's non-copy rows: BAR's base
    # (an instruct model) already computes, and the math expert cannot learn the algorithm
    # under BAR's schedule at this size. From the previous base, everything trainable on
    # arithmetic text alone reached 54% of held-out triples after 1250 steps at lr 3e-3 and 28%
    # at 1e-3 (examples/arithmetic/learnability.py). Post-training on conversations alone took
    # the arithmetic probe from 28% to 6% in 500 steps, so a fifth of its rows stay arithmetic.
    # About 0.9 s a step on one thread here.
    "tiny": BaseRecipe(
        items=12000,
        texts=4000,
        knowledge_repeats=5,
        tokenizer_sample=1000,
        pretrain=Phase(steps=5000, batch_size=16, seq_len=256, lr=3e-3, warmup_steps=200),
        posttrain=Phase(steps=1000, batch_size=16, seq_len=256, lr=1e-3, warmup_steps=50),
        copy_start=0.5,
        copy_end=0.1,
        copy_chat=0.1,
        probe_every=250,
        checkpoint_every=250,
        tokenizer_scheme="glue",
        arithmetic=0.35,
        arithmetic_post=0.2,
    ),
    "small": BaseRecipe(
        items=20000,
        texts=8000,
        knowledge_repeats=3,
        tokenizer_sample=1000,
        pretrain=Phase(steps=8000, batch_size=16, seq_len=512, lr=1e-3, warmup_steps=300),
        posttrain=Phase(steps=2000, batch_size=16, seq_len=512, lr=3e-4, warmup_steps=50),
        copy_start=0.5,
        copy_end=0.1,
        copy_chat=0.1,
        probe_every=500,
        checkpoint_every=250,
        tokenizer_scheme="glue",
    ),
}


def get_recipe(preset: str) -> BaseRecipe:
    try:
        return RECIPES[preset]
    except KeyError:
        raise BarkitError(f"no base recipe for preset {preset!r}; known: {', '.join(RECIPES)}") from None


def _items_up_to(name: str, want: int, seed: int) -> list[Any]:
    """Up to ``want`` train items of a category (fewer when its template space is smaller)."""
    from barkit.suite import get_category

    category = get_category(name)
    n = want
    while n >= 1:
        try:
            return category.items("train", n, seed)
        except BarkitError:
            n //= 2  # the category cannot produce this many distinct items
    raise BarkitError(f"category {name!r} produced no train items")


def general_data(recipe: BaseRecipe, seed: int) -> tuple[list[str], list[list[dict[str, str]]]]:
    """(raw texts, conversations) of the general categories for the base model."""
    from barkit.suite import get_category

    texts: list[str] = []
    conversations: list[list[dict[str, str]]] = []
    for name in GENERAL:
        category = get_category(name)
        if category.has_text:
            texts.extend(category.text(recipe.texts, seed))
        # Whole-list repeats, so that copies of one question land in different packed rows.
        repeats = recipe.knowledge_repeats if name == "knowledge" else 1
        conversations.extend([item.messages() for item in _items_up_to(name, recipe.items, seed)] * repeats)
    return texts, conversations


#: everyday English that the base learns besides the suite's general data (:func:`everyday_lines`)
EVERYDAY = "everyday.jsonl"


def _everyday_path() -> Any:
    from importlib import resources

    return resources.files("barkit") / "corpora" / EVERYDAY


def everyday_lines() -> list[str]:
    """The packaged everyday-English lines, in file order (``corpora/README.md`` says where they come from).

    The micro-suite's general data never uses words as common as "please", "need", "could",
    "show" or "save"; a real post-trained base knows them. These are short messages people send
    to an assistant, written by SmolLM2-135M-Instruct (``examples/tool_use/everyday_requests.py``);
    no suite item was shown to it.
    """
    lines = [json.loads(line)["text"] for line in _everyday_path().read_text().splitlines() if line.strip()]
    if not lines:
        raise BarkitError(f"the packaged corpus {EVERYDAY} is empty")
    return lines


def everyday_digest() -> str:
    return hashlib.sha256(_everyday_path().read_bytes()).hexdigest()[:16]


def everyday_documents(count: int, seed: int) -> list[str]:
    """``count`` everyday lines: the corpus over and over, each pass in its own shuffled order."""
    import random

    lines = everyday_lines()
    rng = random.Random(f"everyday|{seed}")
    out: list[str] = []
    while len(out) < count:
        shuffled = lines[:]
        rng.shuffle(shuffled)
        out.extend(shuffled)
    return out[:count]
