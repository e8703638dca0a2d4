"""Merge benchmark: barkit's streaming merge against mergekit-moe 0.1.5 and a plain ``cp``.

Run from the repository root:

    .venv/bin/python benchmarks/bench_merge.py --size 1b      # ~20 GB of disk, some minutes
    .venv/bin/python benchmarks/bench_merge.py --size micro   # seconds, a sanity run

It builds 4 dense Llama models with random bf16 weights (once, cached), then measures in one
run, side by side and with the inputs warm in the page cache:

* (a) mergekit-moe (installed into its own venv under the cache folder) merging the 4 dense
  models into a Mixtral (``gate_mode: random``), against ``barkit merge --btx`` of the same 4
  (FFNs become experts, everything else averaged), and ``cp`` of the 4 input folders;
* (b) barkit's BAR merge of 4 branch folders (2-expert Mixtrals grown from model 0), against
  ``cp`` of those branch folders.

Wall time and peak RSS come from ``/usr/bin/time -v`` around each command (the merge CLIs are
run as users run them, imports included); "imports" is a fresh process importing what each
tool needs before it reads its first tensor. The table is printed and, for ``--size 1b`` (or
with ``--doc``), written into docs/benchmarks.md between this benchmark's markers.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from barkit.artifacts import write_manifest
from barkit.merge import ShardWriter, iter_chunks, tensor_index

ROOT = Path(__file__).resolve().parents[1]
VENV_PY = Path(sys.executable)
N_EXPERTS = 4
SIZES: dict[str, dict[str, int]] = {
    "micro": {"hidden": 64, "layers": 2, "intermediate": 128, "vocab": 512, "heads": 4},
    "1b": {"hidden": 2048, "layers": 16, "intermediate": 5632, "vocab": 32000, "heads": 32},
}
MARK_START, MARK_END = "<!-- bench_merge:start -->", "<!-- bench_merge:end -->"
NOTES = """How to read it:

- Inputs are 4 dense Llama models with random bf16 weights (hidden 2048, 16 layers, FFN 5632,
  vocab 32000: about 0.95 B parameters each) for (a), and 4 two-expert Mixtral branches grown
  from model 0 (anchor = model 0's FFN, expert 1 and shared tensors = model k's) for (b).
  The inputs are read once before every command, so all start from a warm page cache (as far
  as 20 GB of inputs fit in this machine's 23 GB of memory).
- mergekit-moe (`gate_mode: random`, defaults otherwise) copies the shared tensors from its
  base model; barkit BTX averages them over the 4 inputs, which reads all 4 models' shared
  tensors: barkit does more work per output byte and is still measured as is.
- Wall time and peak RSS are `/usr/bin/time -v` around the command line a user types
  (`mergekit-moe CONFIG OUT`, `barkit merge --btx ... --out OUT`), imports included. barkit's
  time also includes what mergekit-moe does not do: the same-base and duplicate-expert checks
  (BAR also compares every anchor byte) and the SHA-256 content fingerprint of the whole
  output for barkit.json.
- "imports before first tensor": a fresh process importing what each tool has loaded when it
  reads its first tensor (`mergekit.scripts.moe`; `barkit.cli`, `barkit.merge`, `safetensors.torch`).
- How barkit writes: every output header is planned first, which fixes every tensor's file
  offset. The main thread then copies single-source byte ranges (experts, router rows) from
  input file to output file with `copy_file_range`, in the kernel, never decoding them; one
  helper thread meanwhile writes tokenizer and config (importing transformers) and averages
  the shared tensors in 256k-element chunks (bf16/fp16 summed in float32, fp32 in float64,
  rounded once to the storage dtype), each thread writing at its own offsets. Inputs are read
  with `pread` (nothing mmapped), so peak RSS does not grow with the model size.
"""
MERGEKIT_INSTALL = "torch==2.13.0 mergekit==0.1.5"  # torch pinned: never a barkit dependency


# ---------------------------------------------------------------------------- inputs
def _dense_tensors(s: dict[str, int]) -> list[tuple[str, tuple[int, ...]]]:
    h, i, v = s["hidden"], s["intermediate"], s["vocab"]
    names: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (v, h))]
    for layer in range(s["layers"]):
        p = f"model.layers.{layer}."
        names += [(p + f"self_attn.{x}_proj.weight", (h, h)) for x in "qkvo"]
        names += [(p + "mlp.gate_proj.weight", (i, h)), (p + "mlp.up_proj.weight", (i, h))]
        names += [(p + "mlp.down_proj.weight", (h, i))]
        names += [(p + "input_layernorm.weight", (h,)), (p + "post_attention_layernorm.weight", (h,))]
    return names + [("model.norm.weight", (h,)), ("lm_head.weight", (v, h))]


def _save_config_and_tokenizer(out: Path, s: dict[str, int], moe_experts: int = 0) -> None:
    from transformers import GenerationConfig, LlamaConfig

    from barkit.families import family_of
    from barkit.tokenizer import train_tokenizer

    tok = train_tokenizer(300, texts=["the cat sat on the mat", "2 + 3 = 5"] * 8)
    config = LlamaConfig(
        vocab_size=s["vocab"],
        hidden_size=s["hidden"],
        intermediate_size=s["intermediate"],
        num_hidden_layers=s["layers"],
        num_attention_heads=s["heads"],
        num_key_value_heads=s["heads"],
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=False,
        dtype="bfloat16",
    )
    if moe_experts:
        config = family_of(config).moe_config(config, moe_experts, moe_experts)
        config.architectures = ["MixtralForCausalLM"]
    config.save_pretrained(out)
    GenerationConfig.from_model_config(config).save_pretrained(out)
    tok.save_pretrained(out)


def make_dense(out: Path, s: dict[str, int], seed: int) -> Path:
    """A dense Llama with random bf16 weights, streamed to disk one tensor at a time."""
    if (out / "config.json").is_file():
        return out
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    gen = torch.Generator().manual_seed(seed)
    names = _dense_tensors(s)
    writer = ShardWriter(tmp / "model.safetensors", [(n, "BF16", shape) for n, shape in names])
    for name, shape in names:
        if name.endswith("norm.weight"):
            writer.write(torch.ones(shape, dtype=torch.bfloat16))
        else:
            writer.write((torch.randn(shape, generator=gen) * 0.02).to(torch.bfloat16))
    writer.close()
    _save_config_and_tokenizer(tmp, s)
    tmp.rename(out)
    return out


def make_branch(out: Path, base: Path, expert: Path, s: dict[str, int], domain: str) -> Path:
    """A 2-expert Mixtral branch: expert 0 = base FFN (anchor), expert 1 and shared = ``expert``'s."""
    if (out / "config.json").is_file():
        return out
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    bi, ei = tensor_index(base), tensor_index(expert)
    plan: list[tuple[str, str, Any, tuple[int, ...]]] = []  # (out name, src name, index, shape)
    proj = {"gate_proj": "w1", "up_proj": "w3", "down_proj": "w2"}
    for name, info in ei.items():
        m = re.fullmatch(r"model\.layers\.(\d+)\.mlp\.(\w+)\.weight", name)
        if not m:
            plan.append((name, name, ei, info.shape))
            continue
        prefix = f"model.layers.{m.group(1)}.block_sparse_moe"
        plan.append((f"{prefix}.experts.0.{proj[m.group(2)]}.weight", name, bi, info.shape))
        plan.append((f"{prefix}.experts.1.{proj[m.group(2)]}.weight", name, ei, info.shape))
    routers = [
        (f"model.layers.{i}.block_sparse_moe.gate.weight", (2, s["hidden"])) for i in range(s["layers"])
    ]
    writer = ShardWriter(
        tmp / "model.safetensors",
        [(o, "BF16", sh) for o, _, _, sh in plan] + [(n, "BF16", sh) for n, sh in routers],
    )
    for _out, src, index, _shape in plan:
        for chunk in iter_chunks(index[src], src):
            writer.write(chunk)
    gen = torch.Generator().manual_seed(len(domain))
    for _name, shape in routers:
        writer.write(
            torch.cat([torch.zeros(1, shape[1]), torch.randn(1, shape[1], generator=gen) * 0.02]).to(
                torch.bfloat16
            )
        )
    writer.close()
    _save_config_and_tokenizer(tmp, s, moe_experts=2)
    write_manifest(
        tmp, {"stage": "sft", "domain": domain, "base_fingerprint": f"bench-{base.name}", "tokens": 0}
    )
    tmp.rename(out)
    return out


def ensure_mergekit(cache: Path) -> tuple[Path | None, str]:
    """mergekit 0.1.5 in its own venv; (python, "") or (None, why it is not available)."""
    venv = cache / "mergekit-venv"
    py = venv / "bin" / "python"
    if (venv / "bin" / "mergekit-moe").is_file():
        return py, ""
    cmd = f"python3 -m venv {venv} && {py} -m pip install {MERGEKIT_INSTALL}"
    r = subprocess.run(cmd, shell=True, capture_output=True, text=True)
    if r.returncode != 0:
        return None, f"install failed: {cmd}: {(r.stderr or r.stdout).strip().splitlines()[-1:]}"
    return py, ""


# ---------------------------------------------------------------------------- measuring
@dataclass
class Run:
    wall: float
    rss: int  # bytes
    ok: bool
    note: str = ""


def warm(paths: list[Path]) -> None:
    """Read the inputs once so that every contender starts from a warm page cache."""
    for folder in paths:
        for f in folder.iterdir():
            with open(f, "rb") as h:
                while h.read(1 << 24):
                    pass


def measure(cmd: list[str], inputs: list[Path]) -> Run:
    warm(inputs)
    start = time.perf_counter()
    r = subprocess.run(
        ["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, env=os.environ | {"TQDM_DISABLE": "1"}
    )
    wall = time.perf_counter() - start
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", r.stderr)
    rss = int(m.group(1)) * 1024 if m else 0
    tail = " ".join((r.stderr.replace("\n", " ").split("Command being timed")[0])[-300:].split())
    return Run(wall, rss, r.returncode == 0, "" if r.returncode == 0 else f"exit {r.returncode}: {tail}")


def folder_bytes(paths: list[Path]) -> int:
    return sum(f.stat().st_size for p in paths for f in p.rglob("*") if f.is_file())


def cp_run(inputs: list[Path], work: Path) -> Run:
    dst = work / "cp"
    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir(parents=True)
    run = measure(["cp", "-r", *map(str, inputs), str(dst)], inputs)
    shutil.rmtree(dst)
    return run


def mergekit_run(py: Path, inputs: list[Path], work: Path) -> Run:
    lines = [
        f"base_model: {inputs[0]}",
        "gate_mode: random",
        "dtype: bfloat16",
        "experts_per_token: 2",
        "experts:",
    ]
    lines += [f"  - source_model: {p}" for p in inputs]
    cfg = work / "mergekit-moe.yml"
    cfg.write_text("\n".join(lines) + "\n")
    out = work / "mergekit-out"
    shutil.rmtree(out, ignore_errors=True)
    run = measure([str(py.parent / "mergekit-moe"), str(cfg), str(out)], inputs)
    run.note = run.note or pad_check(out)
    shutil.rmtree(out, ignore_errors=True)
    return run


def barkit_run(args: list[str], inputs: list[Path], work: Path, name: str) -> Run:
    out = work / name
    shutil.rmtree(out, ignore_errors=True)
    run = measure(
        [str(VENV_PY.parent / "barkit"), "merge", *args, *map(str, inputs), "--out", str(out)], inputs
    )
    run.note = run.note or pad_check(out)
    shutil.rmtree(out, ignore_errors=True)
    return run


def pad_check(out: Path) -> str:
    """Whether config.json's pad token agrees with the tokenizer's (mergekit-moe's didn't)."""
    try:
        cfg = json.loads((out / "config.json").read_text())
        tcfg = json.loads((out / "tokenizer_config.json").read_text())
        vocab = json.loads((out / "tokenizer.json").read_text())
    except (OSError, ValueError) as e:
        return f"output unreadable ({e})"
    ids = {a["content"]: a["id"] for a in vocab.get("added_tokens", [])} | dict(
        vocab["model"].get("vocab", {})
    )
    pad = tcfg.get("pad_token")
    pad = pad.get("content") if isinstance(pad, dict) else pad
    tok_pad = ids.get(pad) if pad is not None else None
    agree = tok_pad == cfg.get("pad_token_id")
    return (
        f"pad ok ({tok_pad})"
        if agree
        else f"pad mismatch: tokenizer {tok_pad}, config {cfg.get('pad_token_id')}"
    )


def import_run(py: Path, modules: str) -> Run:
    return measure([str(py), "-c", f"import {modules}"], [])


# ---------------------------------------------------------------------------- report
def ratio(a: Run | None, b: Run | None, attr: str) -> str:
    if a is None or b is None or not (a.ok and b.ok) or not getattr(b, attr):
        return "n/a"
    return f"{getattr(a, attr) / getattr(b, attr):.2f}x"


def table(r: dict[str, Run | None], in_bytes: int, br_bytes: int, why_no_mk: str) -> str:
    def cell(run: Run | None, what: str) -> str:
        if run is None:
            return why_no_mk or "not run"
        if not run.ok:
            return run.note[:160]
        return f"{run.wall:.1f} s" if what == "wall" else f"{run.rss / 2**20:.0f} MiB"

    mk, bx, cp, bar, cpb = r["mergekit"], r["barkit_btx"], r["cp"], r["barkit_bar"], r["cp_branches"]
    rows = [
        "| measure | mergekit-moe 0.1.5 | barkit BTX | barkit/mergekit | cp (4 dense) | barkit BAR | cp (4 branches) |",
        "|---|---|---|---|---|---|---|",
        f"| wall time | {cell(mk, 'wall')} | {cell(bx, 'wall')} | {ratio(bx, mk, 'wall')} | {cell(cp, 'wall')} | {cell(bar, 'wall')} | {cell(cpb, 'wall')} |",
        f"| wall / cp | {ratio(mk, cp, 'wall')} | {ratio(bx, cp, 'wall')} | | 1.00x | {ratio(bar, cpb, 'wall')} | 1.00x |",
        f"| peak RSS | {cell(mk, 'rss')} | {cell(bx, 'rss')} | {ratio(bx, mk, 'rss')} | {cell(cp, 'rss')} | {cell(bar, 'rss')} | {cell(cpb, 'rss')} |",
        f"| peak RSS / input bytes | {_frac(mk, in_bytes)} | {_frac(bx, in_bytes)} | | | {_frac(bar, br_bytes)} | |",
        f"| imports before first tensor (wall) | {cell(r['mk_import'], 'wall')} | {cell(r['bk_import'], 'wall')} | {ratio(r['bk_import'], r['mk_import'], 'wall')} | | {cell(r['bk_import'], 'wall')} | |",
        f"| imports (peak RSS) | {cell(r['mk_import'], 'rss')} | {cell(r['bk_import'], 'rss')} | {ratio(r['bk_import'], r['mk_import'], 'rss')} | | {cell(r['bk_import'], 'rss')} | |",
        f"| pad token config vs tokenizer | {mk.note if mk else '-'} | {bx.note if bx else '-'} | | | {bar.note if bar else '-'} | |",
        "",
        f"Inputs: 4 dense models, {in_bytes / 1e9:.2f} GB in all; 4 branches, {br_bytes / 1e9:.2f} GB in all.",
    ]
    return "\n".join(rows)


def _frac(run: Run | None, total: int) -> str:
    return f"{run.rss / total:.3f}" if run and run.ok and total else "n/a"


def write_doc(doc: Path, body: str) -> None:
    text = doc.read_text() if doc.is_file() else "# Benchmarks\n"
    section = f"{MARK_START}\n{body}\n{MARK_END}"
    if MARK_START in text and MARK_END in text:
        text = text[: text.index(MARK_START)] + section + text[text.index(MARK_END) + len(MARK_END) :]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    doc.write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="micro")
    ap.add_argument(
        "--cache", type=Path, default=Path(os.environ.get("BARKIT_BENCH_CACHE", "/work/bench-cache"))
    )
    ap.add_argument("--doc", type=Path, default=None, help="Markdown file to write the section into")
    ap.add_argument("--skip-mergekit", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(2)
    s = SIZES[a.size]
    root = a.cache / a.size
    work = root / "work"
    work.mkdir(parents=True, exist_ok=True)
    print(f"building inputs under {root} (cached)...", flush=True)
    dense = [make_dense(root / f"dense-{k}", s, seed=k) for k in range(N_EXPERTS)]
    branches = [make_branch(root / f"branch-{k}", dense[0], dense[k], s, f"d{k}") for k in range(N_EXPERTS)]
    py, why = (None, "skipped (--skip-mergekit)") if a.skip_mergekit else ensure_mergekit(a.cache)
    r: dict[str, Run | None] = {}
    print("measuring...", flush=True)
    r["cp"] = cp_run(dense, work)
    r["mergekit"] = mergekit_run(py, dense, work) if py else None
    r["barkit_btx"] = barkit_run(["--btx", "--top-k", "2"], dense, work, "barkit-btx")
    r["cp_branches"] = cp_run(branches, work)
    r["barkit_bar"] = barkit_run([], branches, work, "barkit-bar")
    r["mk_import"] = import_run(py, "mergekit.scripts.moe") if py else None
    r["bk_import"] = import_run(VENV_PY, "barkit.cli, barkit.merge, barkit.families, safetensors.torch")
    body = table(r, folder_bytes(dense), folder_bytes(branches), why)
    print(body)
    doc = a.doc or (ROOT / "docs" / "benchmarks.md" if a.size == "1b" else None)
    if doc is not None:
        cmd = f".venv/bin/python benchmarks/bench_merge.py --size {a.size}"
        header = (
            f"## Merge: barkit vs mergekit-moe 0.1.5 ({a.size})\n\n"
            f"Measured {time.strftime('%Y-%m-%d')} on this machine ({os.cpu_count()} cores), with\n\n"
            f"    {cmd}\n\n"
        )
        write_doc(doc, header + body + "\n\n" + NOTES)
        print(f"wrote {doc}")


if __name__ == "__main__":
    main()
