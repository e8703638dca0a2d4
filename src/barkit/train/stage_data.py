"""Each stage kind's objective over the micro-suite's data, and the router's stratified sample.

An objective factory turns an :class:`ObjectiveInput` (model, tokenizer, resolved config, the
domains) into the :class:`~barkit.train.objectives.Objective` the loop trains on and a summary
of the data for the manifest. Stage kinds name their factory in :mod:`barkit.train.kinds`;
callers that bring their own data (the router sample) pass another factory to the driver.

Top-level imports stay light (the stage registry imports this module for the CLI's help text).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from barkit.train.config import GRPOConfig, StageConfig
    from barkit.train.kinds import Sizes
    from barkit.train.objectives import Objective

Conversation = list[dict[str, str]]


@dataclass(frozen=True)
class ObjectiveInput:
    """What an objective factory gets. ``domains`` may list several: each contributes the data
    it would alone, so a stage over k domains with k times the steps sees each domain as often
    as k single-domain stages do (the monolithic baselines rely on this)."""

    model: Any
    tokenizer: Any
    cfg: StageConfig
    grpo: GRPOConfig | None
    domains: tuple[str, ...]
    preset: str
    #: this stage kind's numbers at this preset (the driver reads them from the registry)
    sizes: Sizes
    #: items per category of an SFT stage at this preset: the pool the router sample shares
    sft_pool: int

    def data_sizes(self) -> tuple[int, int]:
        """(items per domain, general items) of this stage's kind at this preset."""
        general = self.sizes.general_items if self.cfg.general_mix > 0 else 0
        return self.sizes.domain_items, general


ObjectiveFactory = Callable[[ObjectiveInput], "tuple[Objective, dict[str, Any]]"]


def _general_items(n: int, seed: int) -> list[Any]:
    """About ``n`` train items spread over the general categories."""
    from barkit.suite import GENERAL, draw_items

    if not n:
        return []
    per = max(1, -(-n // len(GENERAL)))
    return [item for name in GENERAL for item in draw_items(name, "train", per, seed)]


def _general_texts(n: int, seed: int) -> list[str]:
    from barkit.suite import GENERAL, get_category

    texts: list[str] = []
    for name in GENERAL if n else ():
        category = get_category(name)
        if category.has_text:
            texts.extend(category.text(n, seed))
    return texts


def text_objective(inp: ObjectiveInput) -> tuple[Objective, dict[str, Any]]:
    """Raw domain text mixed with general text, next-token loss (``midtrain``)."""
    from barkit.suite import get_category
    from barkit.train.objectives import LMObjective

    n_domain, n_general = inp.data_sizes()
    seed = inp.cfg.seed
    texts = [t for d in inp.domains for t in get_category(d).text(n_domain, seed)]
    general = _general_texts(n_general, seed)
    data = {"domain_texts": len(texts), "general_texts": len(general)}
    return LMObjective.from_texts(inp.tokenizer, inp.cfg, texts, general), data


def _domain_items(inp: ObjectiveInput) -> tuple[list[Any], list[Any]]:
    from barkit.suite import draw_items

    n_domain, n_general = inp.data_sizes()
    items = [item for d in inp.domains for item in draw_items(d, "train", n_domain, inp.cfg.seed)]
    return items, _general_items(n_general, inp.cfg.seed)


def synthetic_conversations(cfg: StageConfig, n_domain: int) -> list[Conversation]:
    """The stage's synthetic conversations (``cfg.synthetic``): ``round(n_domain * ratio)`` of
    each generator, seeded by the generator's name and the stage's seed. They count as domain
    data (the general share is taken of domain plus synthetic)."""
    import random

    from barkit.copying import SYNTHETIC

    out: list[Conversation] = []
    for name, ratio in sorted(cfg.synthetic.items()):
        rng = random.Random(f"synthetic|{name}|{cfg.seed}")
        out.extend(SYNTHETIC[name](rng) for _ in range(round(n_domain * ratio)))
    return out


def chat_objective(inp: ObjectiveInput) -> tuple[Objective, dict[str, Any]]:
    """Domain conversations (plus any augmented copies and synthetic ones) mixed with general
    ones, loss on assistant tokens (``sft``, ``router``)."""
    from barkit.augment import with_augmented
    from barkit.train.objectives import SFTObjective

    items, general = _domain_items(inp)
    synthetic = synthetic_conversations(inp.cfg, len(items))
    data: dict[str, Any] = {"domain_items": len(items), "general_pool": len(general)}
    if synthetic:
        data["synthetic"] = len(synthetic)
    augmented: dict[str, int] = {}
    domain = list(with_augmented((i.messages() for i in items), inp.cfg.augment, inp.cfg.seed, augmented))
    if augmented:
        data["augmented"] = augmented
    convs, general_convs = domain + synthetic, [g.messages() for g in general]
    return SFTObjective.from_conversations(inp.tokenizer, inp.cfg, convs, general_convs), data


def rl_objective(inp: ObjectiveInput) -> tuple[Objective, dict[str, Any]]:
    """GRPO on the domains' prompts mixed with general prompts, each scored by its own verifier."""
    from barkit.errors import ConfigError
    from barkit.train.data import mix_general
    from barkit.train.grpo import GRPOObjective

    if inp.grpo is None:
        raise ConfigError(f"stage {inp.cfg.kind!r} needs GRPO settings")
    items, general = _domain_items(inp)
    cfg = inp.cfg
    prompts = mix_general(items, general, cfg.general_mix, cfg.seed)
    objective = GRPOObjective(
        inp.model,
        inp.tokenizer,
        prompts,
        inp.grpo,
        batch_size=cfg.batch_size,
        seq_len=cfg.seq_len,
        seed=cfg.seed,
        aux_loss_coef=cfg.aux_loss_coef,
    )
    return objective, {"domain_items": len(items), "general_pool": len(general), "prompts": len(prompts)}


def general_objective(inp: ObjectiveInput) -> tuple[Objective, dict[str, Any]]:
    """The base model's data: general text and conversations packed together (``pretrain``)."""
    from barkit.base_recipe import general_data, get_recipe
    from barkit.train.objectives import PackedObjective, mixed_rows

    texts, conversations = general_data(get_recipe(inp.preset), inp.cfg.seed)
    rows = mixed_rows(inp.tokenizer, texts, conversations, inp.cfg.seq_len)
    objective = PackedObjective(rows, inp.cfg.batch_size, inp.cfg.seed, inp.cfg.aux_loss_coef)
    return objective, {"texts": len(texts), "conversations": len(conversations)}


# ----------------------------------------------------------------------------- the router sample


def routed_categories(domains: Sequence[str]) -> list[str]:
    """Domains first, then the general categories not already among them."""
    from barkit.suite import GENERAL

    return list(dict.fromkeys([*domains, *GENERAL]))


def stratified_sample(
    categories: Sequence[str], fraction: float, seed: int, pool: int
) -> dict[str, list[Conversation]]:
    """``fraction`` of each category's SFT pool (at least one conversation per category)."""
    import torch

    from barkit.suite import draw_items

    per_category = max(1, round(pool * fraction))
    sample: dict[str, list[Conversation]] = {}
    for name in categories:
        items = draw_items(name, "train", pool, seed)
        rng = torch.Generator().manual_seed(seed)
        picks = torch.randperm(len(items), generator=rng)[:per_category].tolist()
        sample[name] = [items[i].messages() for i in sorted(picks)]
    return sample


def router_sample(
    fraction: float, *, domain_loss: float = 0.0, experts: Sequence[str] = ()
) -> ObjectiveFactory:
    """A factory over the stratified ``fraction`` of the SFT pools of the stage's domains and the
    general categories: the data BAR's router stage gets (and the baselines tuned against it).

    ``domain_loss > 0`` adds the domain-label router loss: every token of a sample from
    category ``c`` targets expert ``1 + experts.index(c)``, or the anchor (expert 0) when no
    expert owns ``c`` (the general categories). ``experts`` are the model's experts after the
    anchor, in order.
    """

    def build(inp: ObjectiveInput) -> tuple[Objective, dict[str, Any]]:
        from barkit.train.objectives import SFTObjective

        pool = inp.sft_pool
        data = stratified_sample(routed_categories(inp.domains), fraction, inp.cfg.seed, pool)
        summary = {"sample": fraction, "sample_sizes": {k: len(v) for k, v in data.items()}}
        if domain_loss > 0:
            return _domain_labelled(inp, data, domain_loss, experts), {**summary, "domain_loss": domain_loss}
        conversations = [c for convs in data.values() for c in convs]
        return SFTObjective.from_conversations(inp.tokenizer, inp.cfg, conversations), summary

    return build


#: BAR's router sample: 5% of every category's SFT pool
ROUTER_SAMPLE = 0.05


def merged_sample(inp: ObjectiveInput) -> tuple[Objective, dict[str, Any]]:
    """The router sample at BAR's 5%: what a stage on a merged model trains on by default
    (``recover``); callers with another share pass :func:`router_sample` to the driver."""
    return router_sample(ROUTER_SAMPLE)(inp)


def expert_index(category: str, experts: Sequence[str]) -> int:
    """The expert a category's samples are routed to by the domain-label loss (0: the anchor)."""
    return 1 + list(experts).index(category) if category in experts else 0


def _domain_labelled(
    inp: ObjectiveInput, data: dict[str, list[Conversation]], coef: float, experts: Sequence[str]
) -> Objective:
    """The router sample packed with each conversation's expert as its tokens' tag."""
    from barkit.errors import ConfigError
    from barkit.train.data import mix_general
    from barkit.train.objectives import DomainRouterObjective, conversation_rows

    if not experts:
        raise ConfigError("the domain-label router loss needs the model's experts")
    tagged = [(c, expert_index(name, experts)) for name, convs in data.items() for c in convs]
    # shuffled as SFTObjective shuffles its conversations, each keeping its tag
    tagged = mix_general(tagged, [], inp.cfg.general_mix, inp.cfg.seed)
    convs, tags = [c for c, _ in tagged], [t for _, t in tagged]
    rows = conversation_rows(inp.tokenizer, convs, inp.cfg.seq_len, tags=tags)
    return DomainRouterObjective(rows, inp.cfg.batch_size, inp.cfg.seed, inp.cfg.aux_loss_coef, coef)


def default_special_tokens(domain: str, kind: str) -> list[str]:
    """Tokens a domain adds at a stage unless told otherwise: the tool markers at tool SFT."""
    if domain == "tool_use" and kind == "sft":
        from barkit.suite.tools import TOOL_TOKENS

        return list(TOOL_TOKENS)
    return []
