"""The one writer of BAR and BTX merges: weights, config, tokenizer, manifest and card.

The writer knows every output tensor's name, dtype and shape up front, so it writes each
safetensors header first, which fixes every tensor's file offset. Then two threads fill the
files at their own offsets: the main thread copies single-source byte ranges (experts, router
rows, a token only one expert added) from input file to output file with ``copy_file_range``
(in the kernel, never decoded, bit for bit), while a helper thread writes tokenizer and config
files and combines the shared tensors in small chunks. Peak memory is a few chunks plus the
imports, not a shard and never the sum of the models.

Numerics: a combination of several sources is summed and divided once, then rounded once to
the storage dtype. For fp32/fp64 storage the sum is in float64, exact for a few values, so the
merged tensor is bit-identical to ``stack(sources).double().mean(0).to(dtype)`` whatever the
order. For bf16/fp16 storage the sum is in float32 (half the memory traffic, measured about 2x
faster): 24 significant bits against the inputs' 8 or 11, so the result equals that float64
reference except where the final rounding meets a tie, where it is one unit in the last
place off (with weights, each weight multiplies in that accumulator too). Copies are exact
by construction.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from barkit.artifacts import atomic_dir, atomic_write_text, config_fingerprint, write_manifest
from barkit.errors import IncompatibleError
from barkit.merge.io import CHUNK_ELEMENTS, WEIGHTS_INDEX, InputFiles, ShardWriter, raw, torch_dtype
from barkit.merge.plan import MergePlan, OutTensor, Segment, Source

if TYPE_CHECKING:
    import torch

TOKEN_ID_KEYS = ("pad_token_id", "bos_token_id", "eos_token_id")


@dataclass(frozen=True)
class _Copy:
    """Output bytes that are one input's bytes: copied, never decoded."""

    source: Source
    writer: ShardWriter
    offset: int
    nbytes: int


@dataclass(frozen=True)
class _Combine:
    """Output rows computed from several inputs' rows (or generated, for a fresh router)."""

    tensor: OutTensor
    segment: Segment | None  # None: the tensor's ``generate``
    writer: ShardWriter
    offset: int


def _plan_jobs(shards: Sequence[tuple[ShardWriter, list[OutTensor]]]) -> tuple[list[_Copy], list[_Combine]]:
    """Split every output byte range into a copy or a combination, at its fixed file offset."""
    copies: list[_Copy] = []
    combos: list[_Combine] = []
    for writer, tensors in shards:
        for t in tensors:
            offset = writer.offsets[t.name]
            if t.generate is not None:
                combos.append(_Combine(t, None, writer, offset))
                continue
            for seg in t.segments:
                nbytes = seg.rows * seg.sources[0].info.row_bytes
                if len(seg.sources) == 1:
                    copies.append(_Copy(seg.sources[0], writer, offset, nbytes))
                else:
                    combos.append(_Combine(t, seg, writer, offset))
                offset += nbytes
    return copies, combos


def _accumulator_dtype(storage: str) -> torch.dtype:
    """float64 for 32/64-bit storage (exact sums); float32 for 16-bit storage.

    A float32 sum of a few bf16/fp16 values keeps 24 significant bits against their 8 or 11,
    and the result is rounded once more to 16 bits: it equals the float64 mean rounded once
    except where that second rounding meets a tie, then it is 1 unit in the last place off.
    float32 halves the memory traffic of float64, which is what averaging costs.
    """
    import torch

    return torch.float64 if storage in ("F32", "F64") else torch.float32


class _Jobs:
    """The byte ranges of one merge's output, executed by two threads over one set of inputs."""

    def __init__(self, files: InputFiles, copies: list[_Copy], combos: list[_Combine], bar: Any) -> None:
        self.files, self.copies, self.combos, self.bar = files, copies, combos, bar
        self.stop = threading.Event()  # set by whichever thread fails first; the other stops

    def run_copies(self) -> None:
        """Single sources (experts, router rows, one expert's new tokens): bit for bit, in the kernel."""
        for c in self.copies:
            if self.stop.is_set():
                return  # the other thread failed; its error is the one to report
            s = c.source
            self.files.copy_range(s.info, s.row * s.info.row_bytes, c.writer.fd, c.offset, c.nbytes)
            c.writer.count(c.nbytes)
            self.bar.update(c.nbytes)

    def helper(self, prelude: Callable[[], object] | None) -> None:
        """The helper thread: ``prelude`` (tokenizer and config files), then all combinations.

        The prelude spends seconds importing transformers; meanwhile the main thread copies, so
        the import costs no wall time. Combinations run with one torch thread: the other core
        is busy copying, and a thread pool on small chunks only adds waiting.
        """
        try:
            if prelude is not None:
                prelude()
            import torch

            torch.set_num_threads(1)
            for job in self.combos:
                if self.stop.is_set():
                    return
                self.combine(job)
        except BaseException:
            self.stop.set()
            raise

    def combine(self, job: _Combine) -> None:
        """Weighted mean of a segment's sources, chunk by chunk, rounded once to the storage dtype."""
        t, seg = job.tensor, job.segment
        if seg is None:
            assert t.generate is not None  # _plan_jobs made this job for a generated tensor
            job.writer.write_at(job.offset, raw(t.generate()).numpy())
            self.bar.update(t.nbytes)
            return
        info0 = seg.sources[0].info
        acc_dtype, out_dtype = _accumulator_dtype(t.dtype), torch_dtype(t.dtype)
        step = max(1, CHUNK_ELEMENTS // max(1, info0.row_elements))
        if seg.reduce is not None:
            self.reduce(job, step, acc_dtype, out_dtype)
            return
        total = sum(s.weight for s in seg.sources)
        first = seg.sources[0]
        for a in range(0, seg.rows, step):
            if self.stop.is_set():
                return
            b = min(seg.rows, a + step)
            acc = self.files.read_rows(first.info, first.name, first.row + a, first.row + b).to(acc_dtype)
            if first.weight != 1.0:  # multiplying by 1 is exact: skip the pass
                acc.mul_(first.weight)
            for s in seg.sources[1:]:
                acc.add_(self.files.read_rows(s.info, s.name, s.row + a, s.row + b), alpha=s.weight)
            job.writer.write_at(job.offset + a * info0.row_bytes, raw(acc.div_(total).to(out_dtype)).numpy())
            self.bar.update((b - a) * info0.row_bytes)

    def reduce(self, job: _Combine, step: int, acc_dtype: torch.dtype, out_dtype: torch.dtype) -> None:
        """An elementwise policy (ties, dare) over every source's chunk: the branches, then the base."""
        import torch

        from barkit.merge.policies import get_policy

        seg = job.segment
        assert seg is not None and seg.reduce is not None
        rule = get_policy(seg.reduce).reduce
        assert rule is not None
        row_bytes = seg.sources[0].info.row_bytes
        for a in range(0, seg.rows, step):
            if self.stop.is_set():
                return
            b = min(seg.rows, a + step)
            chunks = [
                self.files.read_rows(s.info, s.name, s.row + a, s.row + b).to(acc_dtype) for s in seg.sources
            ]
            # seeded by the tensor and the rows: a rerun draws the same (dare)
            seed = zlib.crc32(f"{job.tensor.name}:{a}".encode())
            merged = rule(torch.stack(chunks[:-1]), chunks[-1], seed)
            job.writer.write_at(job.offset + a * row_bytes, raw(merged.to(out_dtype)).numpy())
            self.bar.update((b - a) * row_bytes)


def _shard_names(count: int) -> list[str]:
    if count == 1:
        return ["model.safetensors"]
    return [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]


def write_weights(
    plan: MergePlan, out: Path, *, progress: bool = True, prelude: Callable[[], object] | None = None
) -> None:
    """Write the plan's tensors as safetensors shards (and the index when sharded).

    Every shard's header is written first, which fixes every tensor's offset; then the main
    thread copies single-source byte ranges in the kernel while one helper thread runs
    ``prelude`` (work that does not need the weights) and computes the combined ranges. Each
    thread writes at its own offsets, so neither waits for the other until the end.
    """
    from tqdm import tqdm

    groups = plan.shards()
    names = _shard_names(len(groups))
    total = sum(t.nbytes for t in plan.tensors)
    bar = tqdm(total=total, unit="B", unit_scale=True, desc="merge", disable=not progress)
    writers: list[ShardWriter] = []
    try:
        for fname, tensors in zip(names, groups, strict=True):
            writers.append(ShardWriter(out / fname, [(t.name, t.dtype, t.shape) for t in tensors]))
        with InputFiles() as files:
            _run(_Jobs(files, *_plan_jobs(list(zip(writers, groups, strict=True))), bar), prelude)
    except BaseException:
        for w in writers:
            w.close(complete=False)  # the folder is discarded; keep the original error
        raise
    for w in writers:
        w.close()
    bar.close()
    if len(groups) > 1:
        weight_map = {t.name: fname for fname, ts in zip(names, groups, strict=True) for t in ts}
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        atomic_write_text(out / WEIGHTS_INDEX, json.dumps(index, indent=2) + "\n")


def _run(jobs: _Jobs, prelude: Callable[[], object] | None) -> None:
    """Copies on this thread, prelude and combinations on one helper thread; first error wins."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="barkit-merge") as pool:
        helper = pool.submit(jobs.helper, prelude)
        try:
            jobs.run_copies()
        except BaseException:
            jobs.stop.set()
            raise
        helper.result()


def _moe_config(plan: MergePlan) -> Any:
    """BAR: the first branch's MoE config with 1+N experts. BTX: the family's MoE of the dense config."""
    from transformers import AutoConfig

    source = AutoConfig.from_pretrained(plan.config_source)
    if plan.kind == "btx":
        config = plan.family.moe_config(source, len(plan.experts), plan.top_k)
        config.architectures = [type(config).__name__.replace("Config", "ForCausalLM")]
        return config
    source.num_experts = len(plan.experts)  # both MoE classes map this name to their own field
    source.num_experts_per_tok = plan.top_k
    source.output_router_logits = False
    return source


def _generation_config(plan: MergePlan, config: Any) -> Any:
    """A branch's own generation config where it has one (BAR), else one from the model config."""
    from transformers import GenerationConfig

    generation = None
    if plan.kind == "bar":
        with contextlib.suppress(OSError):  # a branch saved without one
            generation = GenerationConfig.from_pretrained(plan.config_source)
    generation = generation or GenerationConfig.from_model_config(config)
    for key in TOKEN_ID_KEYS:
        setattr(generation, key, getattr(config, key, None))
    return generation


def _write_config(plan: MergePlan, out: Path, tokenizer: Any) -> None:
    """config.json and generation_config.json of the merged model, token ids from the tokenizer."""
    config = _moe_config(plan)
    config.vocab_size = plan.vocab_size
    if tokenizer is not None:
        # mergekit-moe left pad_token_id disagreeing with the tokenizer; take the tokenizer's.
        for key in TOKEN_ID_KEYS:
            value = getattr(tokenizer, key, None)
            if value is not None:
                setattr(config, key, value)
    config.save_pretrained(out)
    _generation_config(plan, config).save_pretrained(out)


def _write_tokenizer(plan: MergePlan, out: Path) -> Any:
    """The first input's tokenizer plus every token other experts added, at the planned ids."""
    if not (plan.config_source / "tokenizer.json").is_file():
        return None
    from tokenizers import AddedToken
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(plan.config_source)
    for new_id, token, _owners in plan.added_tokens:
        if token in tok.get_vocab():
            pass
        elif token in plan.specials:
            tok.add_special_tokens({"extra_special_tokens": [token]}, replace_extra_special_tokens=False)
        else:
            tok.add_tokens([AddedToken(token, normalized=False)])
        got = tok.convert_tokens_to_ids(token)
        if got != new_id:
            raise IncompatibleError(
                f"{plan.config_source}: token {token!r} would get id {got}, planned {new_id}"
            )
    tok.save_pretrained(out)
    return tok


def _write_config_files(plan: MergePlan, out: Path) -> None:
    """Tokenizer first (config.json takes its special token ids from it), then the configs."""
    _write_config(plan, out, _write_tokenizer(plan, out))


def _merge_manifest(plan: MergePlan, seconds: float) -> dict[str, Any]:
    first = plan.experts[0].manifest
    inputs = [
        {"path": str(e.source), "domain": e.name, "fingerprint": e.manifest.get("fingerprint")}
        for e in plan.experts[1:]
    ]
    resolved = {
        "shared": plan.policies.get("embeddings"),
        "weights": plan.shared_weights,
        "overrides": plan.overrides,
        "top_k": plan.top_k,
        "base": str(plan.base) if plan.base else None,
    }
    return {
        "stage": "merge" if plan.kind == "bar" else "merge-btx",
        "experts": [e.name for e in plan.experts],
        "inputs": inputs,
        "base_fingerprint": first.get("base_fingerprint"),
        "config": resolved,
        "config_fingerprint": config_fingerprint(resolved, [i["fingerprint"] for i in inputs]),
        "shared_policy": resolved["shared"],
        "added_tokens": [{"id": i, "token": t, "from": o} for i, t, o in plan.added_tokens],
        "tokens": 0,
        "wall_time_s": round(seconds, 3),
    }


def execute(
    plan: MergePlan,
    out_dir: str | os.PathLike[str],
    *,
    progress: bool = True,
    start: float | None = None,
) -> dict[str, Any]:
    """Write a checked plan (BAR or BTX) into ``out_dir`` atomically; returns the manifest.

    ``start`` is when the merge began (``time.perf_counter``), for the manifest's wall time.
    """
    from barkit.modelcard import render_model_card

    start = time.perf_counter() if start is None else start
    with atomic_dir(out_dir) as tmp:
        write_weights(plan, tmp, progress=progress, prelude=partial(_write_config_files, plan, tmp))
        manifest = write_manifest(tmp, _merge_manifest(plan, time.perf_counter() - start))
        atomic_write_text(tmp / "README.md", render_model_card(manifest, plan))
    return manifest
