"""Route: train only the router of a merged model on a stratified sample of SFT data.

The sample is drawn from the union of the experts' SFT data plus the general categories,
each category keeping its share (stratified), as BAR found 5% of the SFT data enough; or, with
``data``, from the experts' own SFT files, each file keeping its share. Every
tensor other than the routers stays bit-identical (the training loop's trainable selection
guarantees it; tests check it). Afterwards the share of each domain's tokens sent to each
expert is measured, saved and drawn as a heatmap.

Option (off by default, BAR trains the router on the LM loss alone): ``domain_loss`` (recipe
``route: {domain_loss: 0.5}``, ``barkit route --domain-loss 0.5``) adds that coefficient times
a cross-entropy between every token's router logits (each MoE layer, averaged) and the expert
of its sample's domain; samples of the general categories target the anchor (expert 0). It
tells the router which expert owns which domain where the LM loss alone does not separate them.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from barkit.artifacts import atomic_write_text, config_fingerprint, read_manifest
from barkit.errors import ArtifactError, ConfigError
from barkit.train.kinds import sft_pool_size
from barkit.train.stage_data import ObjectiveFactory, routed_categories, stratified_sample

if TYPE_CHECKING:
    from barkit.train.file_data import UserData
    from barkit.train.stages import StagePlan

Conversation = list[dict[str, str]]
#: (tokenizer, conversation, max_len) -> (ids, loss mask)
Encode = Callable[[Any, Conversation, int], tuple[list[int], list[int]]]


def expert_domains(manifest: dict[str, Any]) -> list[str]:
    """The merged model's expert names after the anchor (they are the domains)."""
    experts = manifest.get("experts")
    if not isinstance(experts, list) or len(experts) < 2 or experts[0] != "anchor":
        raise ArtifactError("not a merged barkit model (barkit.json lists no experts after the anchor)")
    return [str(e) for e in experts[1:]]


@torch.no_grad()
def routing_fractions(
    model: Any,
    tokenizer: Any,
    sample: dict[str, list[Conversation]],
    seq_len: int = 256,
    encode: Encode | None = None,
) -> dict[str, list[float]]:
    """Per category: the share of its tokens' routing weight that goes to each expert.

    ``encode`` renders a conversation (barkit's chat format by default; a user's files use the
    model's own template)."""
    from barkit.tokenizer import encode_conversation
    from barkit.train.objectives import moe_shape, routing_weights

    encode = encode or encode_conversation

    shape = moe_shape(model.config)
    if shape is None:
        raise ArtifactError("routing fractions need an MoE model")
    model.eval()
    result: dict[str, list[float]] = {}
    for name, convs in sample.items():
        total = torch.zeros(shape[0])
        for conv in convs:
            ids, _ = encode(tokenizer, conv, seq_len)
            out = model(input_ids=torch.tensor([ids]), output_router_logits=True, use_cache=False)
            total += routing_weights(out.router_logits, shape[1]).sum(dim=0)
        result[name] = (total / total.sum().clamp_min(1e-12)).tolist()
    return result


def plot_routing(
    fractions: dict[str, list[float]], experts: Sequence[str], path: str | os.PathLike[str]
) -> None:
    """Heatmap (category x expert) of routing fractions, written as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(fractions)
    data = [fractions[r] for r in rows]
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(experts), 0.8 + 0.5 * len(rows)))
    im = ax.imshow(data, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(experts)), labels=list(experts), rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), labels=rows)
    for i, row in enumerate(data):
        for j, v in enumerate(row):
            ax.text(
                j, i, f"{v:.2f}", ha="center", va="center", color="white" if v < 0.6 else "black", fontsize=8
            )
    ax.set_xlabel("expert")
    ax.set_ylabel("category of the tokens")
    ax.set_title("Share of tokens routed to each expert")
    fig.colorbar(im, ax=ax, fraction=0.04)
    fig.tight_layout()
    tmp = Path(path).with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def route_plan(
    merged_dir: str | os.PathLike[str],
    *,
    preset: str = "tiny",
    steps: int | None = None,
    seed: int = 0,
    data: UserData | None = None,
    lr: float | None = None,
    overrides: dict[str, Any] | None = None,
) -> StagePlan:
    """The router stage of a merged model: the router kind on a merged input, over its experts'
    domains and the general categories, or over the SFT files in ``data``. ``lr`` overrides the
    preset's peak learning rate, ``overrides`` further StageConfig fields (a recorded config)."""
    from barkit.train.stages import resolve_stage

    domains = expert_domains(read_manifest(Path(merged_dir)))
    overrides = dict(overrides or {})
    if lr is not None:
        overrides["optim"] = {**overrides.get("optim", {}), "lr": lr}
    if data is not None:
        return resolve_stage("router", domains, preset, steps, seed, overrides, on="merged", data=data)
    return resolve_stage("router", routed_categories(domains), preset, steps, seed, overrides, on="merged")


def route_config(sample: float, plan: StagePlan, domain_loss: float = 0.0) -> dict[str, Any]:
    """The router stage's resolved config (manifest and pipeline key); ``domain_loss`` appears
    only when set, so that routers trained without it keep their fingerprints."""
    resolved: dict[str, Any] = {
        "sample": sample,
        "seed": plan.cfg.seed,
        "preset": plan.preset,
        "stage": plan.cfg.model_dump(mode="json"),
    }
    if domain_loss:
        resolved["domain_loss"] = domain_loss
    if plan.data is not None:
        resolved["data"] = plan.data.to_json()
    return resolved


def _samples(
    plan: StagePlan, sample: float, domain_loss: float, experts: list[str]
) -> tuple[ObjectiveFactory, dict[str, list[Conversation]], Any]:
    """(training sample factory, held-out sample for the routing fractions, its encoder)."""
    from barkit.train.stage_data import router_sample

    seed, share = plan.cfg.seed, min(sample, 0.02)
    if plan.data is None:
        held_out = stratified_sample(plan.domains, share, seed + 1, sft_pool_size(plan.preset))
        return router_sample(sample, domain_loss=domain_loss, experts=experts), held_out, None
    if domain_loss:
        raise ConfigError("the domain-label router loss needs the suite's router sample, not --data files")
    from barkit.train.file_data import file_sample, router_sample_files
    from barkit.userdata import encode_chat

    return router_sample_files(plan.data, sample), file_sample(plan.data, share, seed + 1), encode_chat


def _recovery_of(manifest: dict[str, Any]) -> dict[str, Any]:
    """``{"recover_config": ...}`` when the router starts from a recovered merge (its stage
    config and sample, which ``barkit upgrade`` replays), else nothing."""
    if manifest.get("stage") != "recover":
        return {}
    sample = (manifest.get("data") or {}).get("sample")
    return {"recover_config": {"config": manifest.get("config", {}), "sample": sample}}


def route(
    merged_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    sample: float = 0.05,
    seed: int = 0,
    preset: str = "tiny",
    steps: int | None = None,
    plan: StagePlan | None = None,
    domain_loss: float = 0.0,
    data: UserData | None = None,
    resume: bool = False,
    progress: bool = True,
    lr: float | None = None,
) -> dict[str, Any]:
    """Router-only training of a merged model; writes the routed model, fractions and heatmap.

    ``plan`` (from :func:`route_plan`) replaces ``seed``, ``preset``, ``steps``, ``lr`` and ``data``, the
    experts' SFT files to sample instead of the suite (see :func:`barkit.train.file_data.user_data`);
    ``domain_loss`` > 0 adds the domain-label router loss with that coefficient.
    """
    from barkit.modeling import save_model
    from barkit.train.stages import run_stage_on

    merged_dir, out = Path(merged_dir), Path(out_dir)
    manifest = read_manifest(merged_dir)
    plan = plan or route_plan(merged_dir, preset=preset, steps=steps, seed=seed, data=data, lr=lr)
    seed, preset = plan.cfg.seed, plan.preset
    work = out.parent / f".{out.name}.work"
    factory, eval_sample, encode = _samples(plan, sample, domain_loss, expert_domains(manifest))
    trained = run_stage_on(merged_dir, plan, work, data=factory, resume=resume, progress=progress)
    result, tokenizer = trained.result, trained.tokenizer
    fractions = routing_fractions(result.model, tokenizer, eval_sample, plan.cfg.seq_len, encode)
    resolved = route_config(sample, plan, domain_loss)
    routed = save_model(
        result.model,  # type: ignore[arg-type]
        tokenizer,
        out,
        {
            "stage": "route",
            "experts": manifest["experts"],
            "base_fingerprint": manifest.get("base_fingerprint"),
            "inputs": [{"path": str(merged_dir), "fingerprint": manifest.get("fingerprint")}],
            "config": resolved,
            "config_fingerprint": config_fingerprint(resolved, manifest.get("fingerprint")),
            "sample_sizes": trained.data["sample_sizes"],
            "tokens": result.tokens,
            "wall_time_s": round(result.seconds, 3),
            "metrics": result.summary,
            "routing_fractions": fractions,
            "merge_inputs": manifest.get("merge_inputs", manifest.get("inputs", [])),
            "merge_config": manifest.get("merge_config", manifest.get("config", {})),
            **_recovery_of(manifest),
        },
    )
    atomic_write_text(
        out / "routing.json", json.dumps({"experts": manifest["experts"], "fractions": fractions}, indent=2)
    )
    plot_routing(fractions, manifest["experts"], out / "routing.png")
    shutil.copy(work / "metrics.jsonl", out / "metrics.jsonl")
    trained.cleanup()
    return routed
