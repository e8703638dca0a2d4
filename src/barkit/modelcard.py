"""Model cards (``README.md``) for merged models: experts, their provenance, scores, how to load.

The card is written from manifests only: the merge's own ``barkit.json`` and each input's.
Input manifests come from different stages and may carry different fields, so every field is
optional here; what a manifest does not say, the card does not claim.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from barkit.merge import MergePlan

# Manifest keys that may hold evaluation results, in order of preference.
_SCORE_KEYS = ("eval", "scores", "metrics")
# Manifest keys that may hold the stages an artifact went through.
_HISTORY_KEYS = ("provenance", "stages", "history")


def _fmt_tokens(n: Any) -> str:
    if not isinstance(n, (int, float)) or n <= 0:
        return "-"
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return str(int(n))


def _data_of(entry: Mapping[str, Any]) -> str:
    """The data a stage trained on, as one short string (``-`` when unknown)."""
    data = entry.get("data")
    if data is None and isinstance(entry.get("config"), Mapping):
        data = entry["config"].get("data")
    if data is None:
        return "-"
    if isinstance(data, str):
        return data
    return json.dumps(data, sort_keys=True, default=str)[:120]


def stage_history(manifest: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The stages an artifact went through, oldest first, ending with its own stage."""
    history: list[dict[str, Any]] = []
    for key in _HISTORY_KEYS:
        value = manifest.get(key)
        if isinstance(value, Sequence) and not isinstance(value, str):
            history = [dict(v) for v in value if isinstance(v, Mapping)]
            break
    own = {"stage": manifest.get("stage"), "tokens": manifest.get("tokens"), "data": _data_of(manifest)}
    if own["stage"] and not any(h.get("stage") == own["stage"] for h in history):
        history.append(own)
    return history


def scores_of(manifest: Mapping[str, Any]) -> dict[str, float]:
    """Numeric evaluation results of a manifest (flattened one level), empty when none."""
    for key in _SCORE_KEYS:
        value = manifest.get(key)
        if isinstance(value, Mapping):
            out: dict[str, float] = {}
            for name, v in value.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    out[str(name)] = float(v)
                elif isinstance(v, Mapping):
                    out |= {f"{name}/{k}": float(x) for k, x in v.items() if isinstance(x, (int, float))}
            if out:
                return out
    return {}


def _expert_section(index: int, name: str, source: str, manifest: Mapping[str, Any]) -> list[str]:
    lines = [f"### Expert {index}: {name}", "", f"- source: `{source}`"]
    if manifest.get("fingerprint"):
        lines.append(f"- fingerprint: `{manifest['fingerprint']}`")
    if index == 0 and name == "anchor":
        lines += ["- the base model's FFN, frozen and bit-identical in every branch", ""]
        return lines
    history = stage_history(manifest)
    if history:
        lines += ["", "| stage | data | tokens |", "|---|---|---|"]
        lines += [
            f"| {h.get('stage', '-')} | {_data_of(h)} | {_fmt_tokens(h.get('tokens'))} |" for h in history
        ]
    scores = scores_of(manifest)
    if scores:
        lines += ["", "| metric | score |", "|---|---|"]
        lines += [f"| {k} | {v:.4g} |" for k, v in sorted(scores.items())]
    lines.append("")
    return lines


def _load_section(plan: MergePlan) -> list[str]:
    cls = plan.family.moe_model_type
    return [
        "## How to load",
        "",
        f"A native transformers `{cls}` checkpoint; no `trust_remote_code` needed.",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        'model = AutoModelForCausalLM.from_pretrained("PATH")',
        'tokenizer = AutoTokenizer.from_pretrained("PATH")',
        'messages = [{"role": "user", "content": "What is 2 + 3?"}]',
        "ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors='pt')",
        "print(tokenizer.decode(model.generate(ids, max_new_tokens=32)[0]))",
        "```",
        "",
        'On CPU, `from_pretrained(..., experts_implementation="eager")` is the portable choice; '
        "the default picks `grouped_mm` where it can dispatch.",
        "",
    ]


def render_model_card(manifest: Mapping[str, Any], plan: MergePlan) -> str:
    """The README.md of a merged model."""
    total, active = plan.parameter_counts()
    title = "BAR merge" if plan.kind == "bar" else "BTX merge"
    lines = [
        f"# {title}: {len(plan.experts)} experts ({', '.join(e.name for e in plan.experts)})",
        "",
        f"Built by barkit `{manifest.get('stage')}`; fingerprint `{manifest.get('fingerprint')}`, "
        f"base `{manifest.get('base_fingerprint') or '-'}`.",
        "",
        f"- architecture: `{plan.family.moe_model_type}`, {len(plan.experts)} experts, top-{plan.top_k} routing",
        f"- parameters: {total:,} total, {active:,} active per token",
        f"- vocabulary: {plan.vocab_size} tokens"
        + (
            "; added: " + ", ".join(f"`{t}` (id {i}, from {', '.join(o)})" for i, t, o in plan.added_tokens)
            if plan.added_tokens
            else ""
        ),
        "- shared tensors: " + ", ".join(f"{g}: {p}" for g, p in plan.policies.items()),
    ]
    if plan.shared_weights:
        lines.append("- weights: " + ", ".join(f"{w:g}" for w in plan.shared_weights))
    lines += [f"- override `{pat}`: {pol}" for pat, pol in plan.overrides.items()]
    if plan.kind == "bar":
        lines.append("- the router was merged, not trained: run `barkit route` before use")
    lines += ["", "## Experts", ""]
    for e in plan.experts:
        lines += _expert_section(e.index, e.name, str(e.source), e.manifest)
    lines += _load_section(plan)
    return "\n".join(lines)
