"""One domain stage on one expert: load the branch, build the stage's data, train, save.

The stage kinds differ only in data and objective; the loop, the trainable-set logic and the
anchor guarantee are shared (``barkit.train.loop``):

* ``midtrain``: the domain's raw text mixed with general raw text (knowledge), next-token loss;
* ``sft``: the domain's conversations mixed with general conversations (knowledge, reasoning,
  chat), loss on assistant tokens. BAR found domain-only SFT wipes out general skills, so
  ``general_mix`` defaults above zero; ``general_mix=0`` is the domain-only ablation. The tool
  domain adds its call markers as special tokens here, where embeddings and LM head train;
* ``rlvr``: GRPO on the domain's RL prompts (mixed with general prompts), each sample scored
  by its own category's verifier;
* ``router``: the sft data, with only the branch's router training (the merged model's router
  stage is ``barkit route``; this one is for studying a single expert's routing).

The output folder holds the checkpoint and a manifest that carries the base fingerprint of the
input forward, so a merge can check that experts grew from the same base.

:func:`run_dense_stage` runs the same stages on a DENSE model (the base or a dense stage output),
with everything trainable by default and data from one or several domains at once: the
building block of the baselines BAR is compared with (dense experts for BTX, BTS and weight
averaging; monolithic and sequential retraining).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from barkit.artifacts import config_fingerprint, read_manifest, require_model_dir
from barkit.errors import ArtifactError, BarkitError, ConfigError, IncompatibleError
from barkit.families import expert_count
from barkit.train.config import StageConfig, StageKind, default_stage

if TYPE_CHECKING:
    from barkit.train.grpo import GRPOConfig
    from barkit.train.loop import StageResult
    from barkit.train.objectives import Objective

# ``router`` on a branch trains only its router, on the same conversations as ``sft``.
DOMAIN_STAGES: tuple[StageKind, ...] = ("midtrain", "sft", "rlvr", "router")
# Stage outputs and branches are valid inputs; a merged or routed model is not one expert.
_INPUT_STAGES = ("branch", *DOMAIN_STAGES)
# Overrides that are not StageConfig fields but belong to a domain stage.
_EXTRA_KEYS = ("add_special_tokens", "grpo")
# (domain items or documents, general items or documents) per preset; micro keeps tests fast.
_DATA_SIZES: dict[str, tuple[int, int]] = {"micro": (48, 48), "tiny": (2000, 1500), "small": (8000, 6000)}


def default_special_tokens(domain: str, stage: StageKind) -> list[str]:
    """Tokens a domain adds at a stage unless told otherwise: the tool markers at tool SFT."""
    if domain == "tool_use" and stage == "sft":
        from barkit.suite.tools import TOOL_TOKENS

        return list(TOOL_TOKENS)
    return []


def resolve_stage(
    stage: StageKind, domain: str, preset: str, steps: int | None, seed: int, overrides: dict[str, Any] | None
) -> tuple[StageConfig, GRPOConfig | None, list[str]]:
    """The stage config, the GRPO config (rlvr only) and the special tokens to add."""
    from barkit.train.grpo import GRPOConfig

    if stage not in DOMAIN_STAGES:
        raise ConfigError(
            f"stage {stage!r} is not a domain stage; expected one of {', '.join(DOMAIN_STAGES)}"
        )
    rest = dict(overrides or {})
    tokens = rest.pop("add_special_tokens", None)
    grpo_fields = rest.pop("grpo", None) or {}
    if not isinstance(grpo_fields, dict):
        raise ConfigError(f"stage override 'grpo' must be a mapping, got {type(grpo_fields).__name__}")
    if grpo_fields and stage != "rlvr":
        raise ConfigError(f"stage override 'grpo' only applies to rlvr, not {stage}")
    cfg = default_stage(stage, preset, **{**rest, "steps": steps, "seed": seed})
    grpo = None
    if stage == "rlvr":
        from pydantic import ValidationError

        try:
            grpo = GRPOConfig.for_preset(preset, **grpo_fields)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ConfigError(f"stage override 'grpo': field {where!r}: {first['msg']}") from None
    special = default_special_tokens(domain, stage) if tokens is None else [str(t) for t in tokens]
    return cfg, grpo, special


# ----------------------------------------------------------------------------- inputs


def check_input(folder: str | os.PathLike[str], domain: str) -> dict[str, Any]:
    """Refuse anything but a 2-expert barkit branch (or stage output) of ``domain``; return its manifest.

    Checked from config and manifest alone, before any weights are read.
    """
    import json

    from barkit.families import family_of, is_moe

    path = require_model_dir(folder)
    manifest = read_manifest(path)
    config = json.loads((path / "config.json").read_text())
    model_type = str(config.get("model_type"))
    try:
        family_of(model_type)
    except BarkitError:
        raise ArtifactError(f"{path}: not a barkit branch (model type {model_type!r})") from None
    if not is_moe(model_type) or manifest.get("stage") not in _INPUT_STAGES:
        raise ArtifactError(f"{path}: not a barkit branch (stage {manifest.get('stage')!r}, {model_type})")
    experts = _experts_in(config)
    if experts != 2:
        raise ArtifactError(f"{path}: not a barkit branch ({experts} experts, a branch has 2)")
    if not manifest.get("base_fingerprint"):
        raise ArtifactError(f"{path}: not a barkit branch (barkit.json has no base_fingerprint)")
    grown_for = manifest.get("domain")
    if grown_for and grown_for != domain:
        raise IncompatibleError(f"{path}: a {grown_for} expert cannot run a {domain} stage")
    return manifest


def _experts_in(config: dict[str, Any]) -> int:
    return expert_count(config)


def _check_domain(domain: str, stage: StageKind) -> None:
    from barkit.suite import get_category

    category = get_category(domain)
    if stage == "midtrain" and not category.has_text:
        raise BarkitError(f"domain {domain!r} has no raw text to mid-train on; start it at sft")


# ----------------------------------------------------------------------------- data


def _general_items(n: int, seed: int) -> list[Any]:
    """About ``n`` train items spread over the general categories."""
    from barkit.suite import GENERAL, draw_items

    per = max(1, -(-n // len(GENERAL)))
    return [item for name in GENERAL for item in draw_items(name, "train", per, seed)]


def _general_texts(n: int, seed: int) -> list[str]:
    from barkit.suite import GENERAL, get_category

    texts: list[str] = []
    for name in GENERAL:
        category = get_category(name)
        if category.has_text:
            texts.extend(category.text(n, seed))
    return texts


def build_objective(
    model: Any,
    tokenizer: Any,
    cfg: StageConfig,
    grpo: GRPOConfig | None,
    domain: str | Sequence[str],
    preset: str,
) -> tuple[Objective, dict[str, Any]]:
    """The stage's objective over the suite's data, and a summary of that data for the manifest.

    ``domain`` may list several domains: each contributes the same amount of data as it would
    alone, so a stage over k domains with k times the steps sees each domain as often as k
    single-domain stages do (the monolithic baselines rely on this).
    """
    from barkit.suite import draw_items, get_category
    from barkit.train.data import mix_general
    from barkit.train.objectives import LMObjective, SFTObjective

    domains = [domain] if isinstance(domain, str) else list(domain)
    n_domain, n_general = _DATA_SIZES.get(preset, _DATA_SIZES["tiny"])
    general_n = n_general if cfg.general_mix > 0 else 0
    if cfg.kind == "midtrain":
        texts = [t for d in domains for t in get_category(d).text(n_domain, cfg.seed)]
        general_texts = _general_texts(general_n, cfg.seed) if general_n else []
        data = {"domain_texts": len(texts), "general_texts": len(general_texts)}
        return LMObjective.from_texts(tokenizer, cfg, texts, general_texts), data
    items = [item for d in domains for item in draw_items(d, "train", n_domain, cfg.seed)]
    general = _general_items(general_n, cfg.seed) if general_n else []
    data = {"domain_items": len(items), "general_pool": len(general)}
    if cfg.kind in ("sft", "router"):
        convs = [i.messages() for i in items]
        return SFTObjective.from_conversations(tokenizer, cfg, convs, [g.messages() for g in general]), data
    from barkit.train.grpo import GRPOObjective

    assert grpo is not None
    prompts = mix_general(items, general, cfg.general_mix, cfg.seed)
    objective = GRPOObjective(
        model,
        tokenizer,
        prompts,
        grpo,
        batch_size=cfg.batch_size,
        seq_len=cfg.seq_len,
        seed=cfg.seed,
        aux_loss_coef=cfg.aux_loss_coef,
    )
    return objective, {**data, "prompts": len(prompts)}


# ----------------------------------------------------------------------------- the stage


def run_domain_stage(
    branch_dir: str | os.PathLike[str],
    *,
    stage: StageKind,
    domain: str,
    out_dir: str | os.PathLike[str],
    preset: str = "tiny",
    steps: int | None = None,
    seed: int = 0,
    overrides: dict[str, Any] | None = None,
    resume: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Run one ``stage`` of ``domain`` on the branch in ``branch_dir``; write ``out_dir``.

    ``branch_dir`` is a branch folder or the previous stage's output. ``overrides`` holds
    StageConfig fields (``general_mix``, ``trainable``, ``optim``, ...) plus
    ``add_special_tokens`` (a list; default: the tool markers at tool_use sft) and ``grpo``
    (GRPOConfig fields, rlvr only). Returns the written manifest.
    """
    started = time.perf_counter()
    _check_domain(domain, stage)
    cfg, grpo, tokens = resolve_stage(stage, domain, preset, steps, seed, overrides)
    source = Path(branch_dir)
    parent = check_input(source, domain)
    trained = _train(source, cfg, grpo, tokens, [domain], preset, Path(out_dir), resume, progress)
    resolved = _resolved(cfg, grpo, tokens, preset)
    manifest = _manifest(stage, domain, resolved, source, parent, trained, started)
    return trained.save(Path(out_dir), manifest)


def check_dense_input(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """Refuse anything but a dense barkit model (the base or a dense stage output); return its
    manifest with ``base_fingerprint`` filled in (a base is its own base)."""
    import json

    from barkit.families import family_of, is_moe

    path = require_model_dir(folder)
    manifest = read_manifest(path)
    model_type = str(json.loads((path / "config.json").read_text()).get("model_type"))
    try:
        family = family_of(model_type)
    except BarkitError:
        raise ArtifactError(f"{path}: not a dense barkit model (model type {model_type!r})") from None
    if is_moe(model_type) or manifest.get("stage") not in ("base", *DOMAIN_STAGES):
        raise ArtifactError(
            f"{path}: not a dense barkit model (stage {manifest.get('stage')!r}, {model_type})"
        )
    base = manifest.get("base_fingerprint") or manifest.get("fingerprint")
    if not base:
        raise ArtifactError(f"{path}: barkit.json has no fingerprint")
    return {**manifest, "base_fingerprint": base, "family": family.name, "model_type": model_type}


def _dense_domains(domains: str | Sequence[str], stage: StageKind) -> list[str]:
    names = [domains] if isinstance(domains, str) else list(domains)
    if not names or len(set(names)) != len(names):
        raise ConfigError(f"a dense stage needs distinct domains, got {names}")
    if stage == "router":
        raise ConfigError("a dense model has no router; the router stage needs a branch")
    for name in names:
        _check_domain(name, stage)
    return names


def run_dense_stage(
    model_dir: str | os.PathLike[str],
    *,
    stage: StageKind,
    domains: str | Sequence[str],
    out_dir: str | os.PathLike[str],
    preset: str = "tiny",
    steps: int | None = None,
    seed: int = 0,
    overrides: dict[str, Any] | None = None,
    resume: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Run one ``stage`` on a dense model over one or several ``domains``; write ``out_dir``.

    Everything trains unless ``overrides["trainable"]`` says otherwise (a dense model has no
    anchor to protect). Each domain contributes as much data as in a single-domain stage; pass
    ``steps`` scaled by the number of domains to give each domain the same number of tokens.
    The special tokens added are the union of the domains' defaults. Returns the manifest.
    """
    started = time.perf_counter()
    names = _dense_domains(domains, stage)
    rest = {"trainable": ["*"], **(overrides or {})}
    cfg, grpo, tokens = resolve_stage(stage, names[0], preset, steps, seed, rest)
    if "add_special_tokens" not in rest:
        tokens = list(dict.fromkeys(t for d in names for t in default_special_tokens(d, stage)))
    source = Path(model_dir)
    parent = check_dense_input(source)
    trained = _train(source, cfg, grpo, tokens, names, preset, Path(out_dir), resume, progress)
    resolved = _resolved(cfg, grpo, tokens, preset)
    manifest = _manifest(stage, "+".join(names), resolved, source, parent, trained, started)
    manifest.update(dense=True, domains=names)
    manifest.pop("experts")
    return trained.save(Path(out_dir), manifest)


class _Trained:
    """A finished stage's model, tokenizer and bookkeeping, until it is saved."""

    def __init__(
        self, result: StageResult, tokenizer: Any, data: dict[str, Any], added: dict[str, int], work: Path
    ):
        self.result, self.tokenizer, self.data, self.added, self.work = result, tokenizer, data, added, work

    def save(self, out: Path, manifest: dict[str, Any]) -> dict[str, Any]:
        from barkit.modeling import save_model

        written = save_model(self.result.model, self.tokenizer, out, manifest)  # type: ignore[arg-type]
        shutil.rmtree(self.work, ignore_errors=True)
        return written


def _train(
    source: Path,
    cfg: StageConfig,
    grpo: GRPOConfig | None,
    tokens: list[str],
    domains: list[str],
    preset: str,
    out: Path,
    resume: bool,
    progress: bool,
) -> _Trained:
    """Load ``source``, add ``tokens``, build the objective over ``domains`` and train."""
    from barkit.modeling import load_model
    from barkit.train.loop import run_stage
    from barkit.vocab import add_special_tokens

    model, tokenizer = load_model(source)
    added = dict(zip(tokens, add_special_tokens(model, tokenizer, tokens), strict=True)) if tokens else {}
    objective, data = build_objective(model, tokenizer, cfg, grpo, domains, preset)
    work = out.parent / f".{out.name}.work"
    try:
        result = run_stage(model, tokenizer, cfg, objective, work, resume=resume, progress=progress)
    except BaseException:
        # Keep a checkpoint to resume from; drop a work folder that holds nothing worth it.
        if not (work / "checkpoint").exists():
            shutil.rmtree(work, ignore_errors=True)
        raise
    return _Trained(result, tokenizer, data, added, work)


def _resolved(cfg: StageConfig, grpo: GRPOConfig | None, tokens: list[str], preset: str) -> dict[str, Any]:
    resolved: dict[str, Any] = {**cfg.model_dump(mode="json"), "preset": preset, "add_special_tokens": tokens}
    if grpo is not None:
        resolved["grpo"] = grpo.model_dump(mode="json")
    return resolved


def _manifest(
    stage: StageKind,
    domain: str,
    resolved: dict[str, Any],
    source: Path,
    parent: dict[str, Any],
    trained: _Trained,
    started: float,
) -> dict[str, Any]:
    from barkit.artifacts import content_fingerprint

    result = trained.result
    input_fp = str(parent.get("fingerprint") or content_fingerprint(source))
    return {
        "stage": stage,
        "domain": domain,
        "family": parent.get("family"),
        "model_type": parent.get("model_type"),
        "experts": ["anchor", domain],
        "config": resolved,
        "config_fingerprint": config_fingerprint(resolved, input_fp),
        "inputs": [{"path": str(source.resolve()), "fingerprint": input_fp, "stage": parent.get("stage")}],
        "base_fingerprint": parent["base_fingerprint"],
        "data": trained.data,
        "added_tokens": trained.added,
        "trainable": {k: list(v) for k, v in result.plan.per_pattern.items()},
        "tokens": result.tokens,
        "seconds": round(time.perf_counter() - started, 2),
        "train_seconds": round(result.seconds, 2),
        "metrics": _metrics(result),
    }


def _metrics(result: StageResult) -> dict[str, Any]:
    """Summary figures: final loss, mean per-expert token fractions, and the rlvr reward curve."""
    summary: dict[str, Any] = dict(result.summary)
    fractions = sorted(
        (int(k.rsplit("/", 1)[1]), v) for k, v in summary.items() if k.startswith("mean_expert_frac/")
    )
    summary["expert_fractions"] = [v for _, v in fractions]
    weights = sorted(
        (int(k.rsplit("/", 1)[1]), v) for k, v in summary.items() if k.startswith("mean_expert_weight/")
    )
    summary["expert_weights"] = [v for _, v in weights]
    curve = [h["reward_mean"] for h in result.history if "reward_mean" in h]
    if curve:
        summary["reward_curve"] = curve
    summary["history"] = result.history
    return summary
