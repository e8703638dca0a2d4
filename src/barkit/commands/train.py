"""``barkit train BRANCH --stage KIND (--domain NAME | --data FILE) --out DIR``: one expert stage.

The stage choices are the registry's kinds that run on a branch (:mod:`barkit.train.kinds`).
The training flags (``--lr``, ``--batch-size``, ...) become stage overrides, merged into the
resolved stage config exactly as a recipe's ``overrides:`` are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from barkit.errors import ConfigError
from barkit.train.kinds import branch_kinds

STAGES = branch_kinds()


def _list(value: str | None, flag: str) -> list[str] | None:
    if value is None:
        return None
    items = [p.strip() for p in value.split(",") if p.strip()]
    if not items:
        raise ConfigError(f"{flag} names nothing")
    return items


def _ratios(value: str | None, flag: str, example: str) -> dict[str, float] | None:
    """``NAME=RATIO[,NAME=RATIO]`` as a mapping (ConfigError on a malformed entry)."""
    if value is None:
        return None
    out: dict[str, float] = {}
    for entry in _list(value, flag) or []:
        name, sep, ratio = entry.partition("=")
        try:
            out[name.strip()] = float(ratio) if sep else 1.0
        except ValueError:
            raise ConfigError(f"{flag} {entry!r}: expected NAME=RATIO, e.g. {example}") from None
    return out


def overrides_from_flags(lr: float | None, **flags: Any) -> dict[str, Any]:
    """Stage overrides from the command's flags; those left unset (None) keep the resolved default."""
    out: dict[str, Any] = {k: v for k, v in flags.items() if v is not None}
    if lr is not None:
        out["optim"] = {"lr": lr}
    return out


def _expert_name(branch: Path, data: Path, name: str | None) -> str:
    """The expert's name on a user's data: ``--name``, else the branch's, else the file's stem."""
    if name:
        return name
    from barkit.artifacts import read_manifest
    from barkit.errors import ArtifactError

    try:
        grown_for = read_manifest(branch).get("domain")
    except ArtifactError:
        grown_for = None  # the stage's input check reports a bad branch folder
    return str(grown_for or data.stem)


def main(
    branch: Annotated[Path, typer.Argument(help="Branch folder, or the previous stage's output folder.")],
    stage: Annotated[str, typer.Option("--stage", help=f"Stage to run: {', '.join(STAGES)}.")],
    out: Annotated[Path, typer.Option("--out", help="Folder to write the trained expert to.")],
    domain: Annotated[
        str | None,
        typer.Option("--domain", help="Micro-suite domain (math, code, tool_use, safety); or use --data."),
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(
            "--data",
            help="Your own data (JSONL, Parquet or a saved dataset): sft 'messages' or 'prompt'/'completion', "
            "midtrain 'text', rlvr 'prompt' + 'answer'. Tokenized with the model's own chat template.",
        ),
    ] = None,
    verifier: Annotated[
        str | None,
        typer.Option(
            "--verifier",
            help="rlvr on --data: exact, numeric, regex, tool-call, python-tests, or module:function "
            "(a function runs your own code in this process).",
        ),
    ] = None,
    general_data: Annotated[
        Path | None,
        typer.Option(
            "--general-data",
            help="General data mixed into --data (same format). Without it a --data stage mixes in none.",
        ),
    ] = None,
    general_mix: Annotated[
        float | None,
        typer.Option(
            "--general-mix",
            help="Share of general data (0 = domain only); default: the stage's share with --domain or "
            "--general-data, 0 with --data alone.",
        ),
    ] = None,
    name: Annotated[
        str | None,
        typer.Option("--name", help="Expert name with --data; default: the branch's, else the file's stem."),
    ] = None,
    add_special_tokens: Annotated[
        str | None,
        typer.Option("--add-special-tokens", help="Comma-separated tokens to add before training."),
    ] = None,
    synthetic: Annotated[
        str | None,
        typer.Option(
            "--synthetic",
            help="SFT: synthetic conversations added per domain item, NAME=RATIO,... "
            "(invented_calls: calls of invented tools; repeat: verbatim repeats).",
        ),
    ] = None,
    augment: Annotated[
        str | None,
        typer.Option(
            "--augment",
            help="SFT: augmented copies added per domain conversation, NAME=RATIO,... "
            "(tool_calls: fresh argument values, renamed enum members, reworded requests).",
        ),
    ] = None,
    trainable: Annotated[
        str | None,
        typer.Option(
            "--trainable",
            help="Comma-separated groups (expert, router, embeddings, lm_head, attention, norms), "
            "embeddings:new / lm_head:new (only the added tokens' rows) or parameter globs; default: "
            "BAR's schedule for the stage.",
        ),
    ] = None,
    lr: Annotated[float | None, typer.Option("--lr", help="Peak learning rate.")] = None,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", help="Sequences per micro-batch per process.")
    ] = None,
    grad_accum: Annotated[
        int | None, typer.Option("--grad-accum", help="Micro-batches accumulated per optimizer step.")
    ] = None,
    seq_len: Annotated[int | None, typer.Option("--seq-len", help="Tokens per packed sequence.")] = None,
    checkpoint_every: Annotated[
        int | None,
        typer.Option("--checkpoint-every", help="Save a resumable checkpoint every N steps (0: at the end)."),
    ] = None,
    dtype: Annotated[
        str | None,
        typer.Option("--dtype", help="float32 (default) or bfloat16, for models that do not fit in float32."),
    ] = None,
    gradient_checkpointing: Annotated[
        bool,
        typer.Option("--gradient-checkpointing", help="Recompute activations: less memory, more time."),
    ] = False,
    steps: Annotated[int | None, typer.Option("--steps", help="Override the preset's step count.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed for data order and sampling.")] = 0,
    preset: Annotated[str, typer.Option("--preset", help="Schedule size: micro, tiny or small.")] = "tiny",
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from the checkpoint an interrupted run left.")
    ] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Run one stage of one expert: progressive unfreezing, anchor kept bit-identical."""
    from barkit.train.stages import resolve_stage, run_stage_dir

    if stage not in branch_kinds():
        raise ConfigError(f"--stage {stage!r} is not one of {', '.join(branch_kinds())}")
    if (domain is None) == (data is None):
        raise ConfigError("give --domain (the micro-suite) or --data FILE (your own), one of them")
    if data is None and (verifier is not None or general_data is not None or name is not None):
        raise ConfigError("--verifier, --general-data and --name go with --data")
    overrides = overrides_from_flags(
        trainable=_list(trainable, "--trainable"),
        add_special_tokens=_list(add_special_tokens, "--add-special-tokens"),
        general_mix=general_mix,
        lr=lr,
        batch_size=batch_size,
        grad_accum=grad_accum,
        seq_len=seq_len,
        checkpoint_every=checkpoint_every,
        dtype=dtype,
        gradient_checkpointing=gradient_checkpointing or None,
        synthetic=_ratios(synthetic, "--synthetic", "invented_calls=1.0"),
        augment=_ratios(augment, "--augment", "tool_calls=2"),
    )
    if data is not None:
        from barkit.train.file_data import user_data

        files = user_data(data, general=general_data, verifier=verifier)
        label = _expert_name(branch, data, name)
        plan = resolve_stage(stage, label, preset, steps, seed, overrides, data=files)
    else:
        label = str(domain)
        plan = resolve_stage(stage, label, preset, steps, seed, overrides)
    manifest = run_stage_dir(branch, plan, out, resume=resume, progress=progress)
    _report(stage, label, out, manifest)


def _report(stage: str, label: str, out: Path, manifest: dict[str, Any]) -> None:
    metrics = manifest["metrics"]
    line = f"{stage} {label} -> {out}: {manifest['tokens']:,} tokens in {manifest['seconds']:.1f} s"
    line += f", final loss {metrics['final_loss']:.4f}"
    if metrics.get("reward_curve"):
        line += f", reward {metrics['reward_curve'][0]:.3f} -> {metrics['reward_curve'][-1]:.3f}"
    typer.echo(f"{line}, fingerprint {manifest['fingerprint']}")
