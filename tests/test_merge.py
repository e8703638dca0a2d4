"""Invariants of ``barkit merge`` on micro models (hidden 32, 2 layers, fp32).

Fixtures build a micro dense Llama base with barkit's tokenizer, branch it by hand into
2-expert Mixtral checkpoints (expert 1 a copy of the FFN, router zeros), then "train" each
branch by perturbing expert 1, router row 1 and some shared tensors with seeded noise, and
optionally adding special tokens. Nothing here depends on the branch or training modules.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

import micro
from barkit.artifacts import read_manifest, write_manifest
from barkit.errors import ArtifactError, ConfigError, IncompatibleError
from barkit.families import family_of
from barkit.merge import merge, merge_dense_btx, parse_size, plan_merge
from barkit.tokenizer import train_tokenizer
from barkit.vocab import add_special_tokens

CORPUS = ["the cat sat on the mat", "2 + 3 = 5", "def f(x): return x", "hello world"] * 4


def _dense(arch: str, tok: Any, seed: int) -> Any:
    return micro.dense_model(
        arch, seed=seed, tokenizer=tok, max_position_embeddings=64, tie_word_embeddings=False
    )


_branch = micro.branch_of


def _train(moe: Any, seed: int, shared: bool) -> None:
    """Stand-in for adaptation: seeded noise on expert 1, router row 1, and shared tensors."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in moe.named_parameters():
            if "mlp.experts" in name or name.endswith("mlp.gate.weight"):
                p[1] += 0.05 * torch.randn(p[1].shape, generator=g)
            elif shared:
                p += 0.01 * torch.randn(p.shape, generator=g)


def _save(model: Any, tok: Any, out: Path, manifest: dict[str, Any]) -> Path:
    model.save_pretrained(out)
    tok.save_pretrained(out)
    write_manifest(out, manifest)
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A base and three branches of it: math, tools (adds two tokens), think (adds one)."""
    root = tmp_path_factory.mktemp("merge")
    tok = train_tokenizer(300, texts=CORPUS)
    dense = _dense("llama", tok, seed=0)
    base = _save(dense, tok, root / "base", {"stage": "base"})
    base_fp = read_manifest(base)["fingerprint"]
    dirs: dict[str, Path] = {"base": base}
    for seed, (domain, tokens) in enumerate(
        [("math", []), ("tools", ["<tool_call>", "</tool_call>"]), ("think", ["<think>"])], start=1
    ):
        moe, btok = _branch(dense), AutoTokenizer.from_pretrained(base)
        if tokens:
            add_special_tokens(moe, btok, tokens)
        _train(moe, seed, shared=True)
        manifest = {
            "stage": "sft",
            "domain": domain,
            "base_fingerprint": base_fp,
            "tokens": 12345 * seed,
            "eval": {domain: 0.1 * seed},
        }
        dirs[domain] = _save(moe, btok, root / domain, manifest)
    return {"root": root, "dirs": dirs, "base_fp": base_fp, "tok": tok, "dense": dense}


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as h:
            out |= {k: h.get_tensor(k) for k in h.keys()}  # noqa: SIM118 - safe_open has no iteration
    return out


@pytest.fixture(scope="module")
def merged(world: dict[str, Any]) -> Path:
    d = world["dirs"]
    out = world["root"] / "merged"
    merge([d["math"], d["tools"], d["think"]], out, progress=False)
    return out


def test_merged_loads_natively_with_union_vocab(world: dict[str, Any], merged: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(merged)
    tok = AutoTokenizer.from_pretrained(merged)
    assert model.config.num_local_experts == 4 and model.config.num_experts_per_tok == 4
    base_len = len(world["tok"])
    assert tok.convert_tokens_to_ids(["<tool_call>", "</tool_call>", "<think>"]) == [
        base_len,
        base_len + 1,
        base_len + 2,
    ]
    assert model.config.vocab_size == len(tok) == base_len + 3
    assert model.config.pad_token_id == tok.pad_token_id and tok.chat_template
    assert json.loads((merged / "generation_config.json").read_text())["pad_token_id"] == tok.pad_token_id
    ids = tok("the cat <think>", return_tensors="pt").input_ids
    assert torch.isfinite(model(ids).logits).all()


def test_experts_anchor_and_router_rows_are_bit_exact(world: dict[str, Any], merged: Path) -> None:
    out = _tensors(merged)
    d = world["dirs"]
    branches = [_tensors(d[k]) for k in ("math", "tools", "think")]
    fam = family_of("mixtral")
    for layer in range(2):
        for dst0, src in zip(
            fam.expert_tensor_names(layer, 0), fam.expert_tensor_names(layer, 1), strict=True
        ):
            assert torch.equal(out[dst0], branches[0][dst0])  # anchor = first input's expert 0
            for k, branch in enumerate(branches, start=1):
                dst = dst0.replace(".experts.0.", f".experts.{k}.")
                assert torch.equal(out[dst], branch[src]), dst
        router = fam.router_tensor_name(layer)
        expected = torch.stack([branches[0][router][0]] + [b[router][1] for b in branches])
        assert torch.equal(out[router], expected)


def test_shared_tensors_are_the_exact_mean(world: dict[str, Any], merged: Path) -> None:
    """Bit-exact against the float64 mean rounded once to fp32; allclose to the fp32 mean."""
    out = _tensors(merged)
    branches = [_tensors(world["dirs"][k]) for k in ("math", "tools", "think")]
    base_rows = len(world["tok"])
    for name in ("model.layers.0.self_attn.q_proj.weight", "model.norm.weight", "model.embed_tokens.weight"):
        stack = torch.stack([b[name][:base_rows] for b in branches])
        assert torch.equal(out[name][:base_rows], stack.double().mean(0).float()), name
        assert torch.allclose(out[name][:base_rows], stack.mean(0))
        assert not torch.equal(out[name][:base_rows], branches[0][name][:base_rows])  # they did diverge


def test_added_token_rows_come_only_from_the_expert_that_added_them(
    world: dict[str, Any], merged: Path
) -> None:
    """mixturekit zero-padded then averaged, halving new rows; here they are copied exactly."""
    out = _tensors(merged)
    d = world["dirs"]
    tools, think = _tensors(d["tools"]), _tensors(d["think"])
    ttok, ktok = AutoTokenizer.from_pretrained(d["tools"]), AutoTokenizer.from_pretrained(d["think"])
    mtok = AutoTokenizer.from_pretrained(merged)
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        for token, src_tok, src in (
            ("<tool_call>", ttok, tools),
            ("</tool_call>", ttok, tools),
            ("<think>", ktok, think),
        ):
            row = out[name][mtok.convert_tokens_to_ids(token)]
            assert torch.equal(row, src[name][src_tok.convert_tokens_to_ids(token)]), (name, token)


def test_manifest_and_model_card(world: dict[str, Any], merged: Path) -> None:
    m = read_manifest(merged)
    assert m["stage"] == "merge" and m["experts"] == ["anchor", "math", "tools", "think"]
    assert m["base_fingerprint"] == world["base_fp"] and m["shared_policy"] == "mean"
    assert [i["fingerprint"] for i in m["inputs"]] == [
        read_manifest(world["dirs"][k])["fingerprint"] for k in ("math", "tools", "think")
    ]
    card = (merged / "README.md").read_text()
    for text in ("Expert 3: think", "sft", "24.7k", "AutoModelForCausalLM.from_pretrained", "`<tool_call>`"):
        assert text in card, text


def test_single_branch_merge_reproduces_the_branch(world: dict[str, Any]) -> None:
    out = world["root"] / "single"
    merge([world["dirs"]["math"]], out, progress=False)
    ids = torch.tensor([[1, 20, 30, 40, 50]])
    a = AutoModelForCausalLM.from_pretrained(world["dirs"]["math"]).eval()
    b = AutoModelForCausalLM.from_pretrained(out).eval()
    assert torch.equal(a(ids).logits, b(ids).logits)
    assert _tensors(out).keys() == _tensors(world["dirs"]["math"]).keys()


def test_flexolmo_single_merge_and_sharding(tmp_path: Path) -> None:
    """OLMo-2 family too; a small max shard size gives several files plus an index."""
    tok = train_tokenizer(280, texts=CORPUS)
    dense = _dense("olmo2", tok, seed=3)
    moe = _branch(dense)
    _train(moe, 7, shared=False)
    src = _save(moe, tok, tmp_path / "b", {"stage": "midtrain", "domain": "code", "base_fingerprint": "x"})
    out = tmp_path / "m"
    merge([src], out, max_shard_size=20_000, progress=False)
    assert (out / "model.safetensors.index.json").is_file() and len(list(out.glob("*.safetensors"))) > 2
    ids = torch.tensor([[1, 20, 30, 40]])
    a, b = (AutoModelForCausalLM.from_pretrained(p).eval() for p in (src, out))
    assert torch.equal(a(ids).logits, b(ids).logits)


def test_weighted_and_anchor_policies(world: dict[str, Any]) -> None:
    d = world["dirs"]
    out = world["root"] / "weighted"
    name = "model.layers.1.self_attn.o_proj.weight"
    merge(
        [d["math"], d["think"]],
        out,
        shared="weighted",
        weights=[0.75, 0.25],
        overrides={"model.norm.*": "anchor"},
        base_dir=d["base"],
        progress=False,
    )
    got, a, b, base = (_tensors(p) for p in (out, d["math"], d["think"], d["base"]))
    expected = ((a[name].double() * 0.75 + b[name].double() * 0.25) / 1.0).float()
    assert torch.equal(got[name], expected)
    assert torch.equal(got["model.norm.weight"], base["model.norm.weight"])
    with pytest.raises(ConfigError, match="matches no shared tensor"):
        plan_merge([d["math"]], overrides={"model.nothing.*": "mean"})
    with pytest.raises(ConfigError, match="--base"):
        plan_merge([d["math"]], shared="anchor")


def test_weighted_override_gives_the_weighted_combination(
    world: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`weighted` as a per-pattern override: its tensors weighted, the rest by the default.

    Before the policy table, three checks contradicted each other and this merge always failed.
    """
    from barkit.cli import main

    d = world["dirs"]
    api, cli = tmp_path / "api", tmp_path / "cli"
    merge(
        [d["math"], d["think"]], api, overrides={"*embed*": "weighted"}, weights=[0.75, 0.25], progress=False
    )
    args = ["merge", str(d["math"]), str(d["think"]), "--out", str(cli)]
    assert main([*args, "--override", "*embed*=weighted", "--weights", "0.75,0.25"]) == 0
    a, b = _tensors(d["math"]), _tensors(d["think"])
    rows = len(world["tok"])
    for out in (api, cli):
        got = _tensors(out)
        name = "model.embed_tokens.weight"
        expected = ((a[name][:rows].double() * 0.75 + b[name][:rows].double() * 0.25) / 1.0).float()
        assert torch.equal(got[name][:rows], expected)
        name = "lm_head.weight"  # not matched by the override: the plain mean
        assert torch.equal(
            got[name][:rows], torch.stack([a[name][:rows], b[name][:rows]]).double().mean(0).float()
        )
        assert read_manifest(out)["config"]["overrides"] == {"*embed*": "weighted"}
    # The one weights rule: weights exactly when a policy in use takes them, one per input.
    pair = [d["math"], d["think"]]
    with pytest.raises(ConfigError, match="needs one weight per input"):
        plan_merge(pair, overrides={"*embed*": "weighted"})
    with pytest.raises(ConfigError, match="no policy in use takes weights"):
        plan_merge(pair, weights=[0.5, 0.5])
    with pytest.raises(ConfigError, match="3 weights for 2 inputs"):
        plan_merge(pair, overrides={"*embed*": "weighted"}, weights=[1, 1, 1])
    assert main([*args, "--override", "*embed*"]) == 2
    assert "expected GLOB=POLICY" in capsys.readouterr().err


def test_sum_policy_keeps_every_branch_change_whole(world: dict[str, Any]) -> None:
    """Task arithmetic: base + sum of each branch's change, new-token rows still copied."""
    d = world["dirs"]
    out = world["root"] / "summed"
    merge([d["math"], d["tools"], d["think"]], out, shared="sum", base_dir=d["base"], progress=False)
    got, base = _tensors(out), _tensors(d["base"])
    branches = [_tensors(d[k]) for k in ("math", "tools", "think")]
    rows = len(world["tok"])
    for name in ("model.layers.0.self_attn.k_proj.weight", "model.norm.weight", "lm_head.weight"):
        b0 = base[name][:rows].double()
        expected = b0 + sum(b[name][:rows].double() - b0 for b in branches)
        assert torch.allclose(got[name][:rows].double(), expected, atol=1e-6), name
        # Each branch's change survives at full size, not divided by three as the mean does.
        assert not torch.allclose(got[name][:rows], torch.stack([b[name][:rows] for b in branches]).mean(0))
    tools, ttok = branches[1], AutoTokenizer.from_pretrained(d["tools"])
    mtok = AutoTokenizer.from_pretrained(out)
    row = got["model.embed_tokens.weight"][mtok.convert_tokens_to_ids("<tool_call>")]
    assert torch.equal(row, tools["model.embed_tokens.weight"][ttok.convert_tokens_to_ids("<tool_call>")])
    assert read_manifest(out)["config"]["base"] == str(d["base"])
    with pytest.raises(ConfigError, match="'sum' needs --base"):
        plan_merge([d["math"]], shared="sum")
    # One branch: the sum is that branch's shared tensors.
    one = world["root"] / "summed-one"
    merge([d["math"]], one, shared="sum", base_dir=d["base"], progress=False)
    name = "model.layers.1.self_attn.o_proj.weight"
    assert torch.equal(_tensors(one)[name], branches[0][name])


def _ties_reference(deltas: torch.Tensor, density: float) -> torch.Tensor:
    """TIES on (branches, elements) written out entry by entry: trim, elect, disjoint mean."""
    n, m = deltas.shape
    keep = max(1, round(density * m))
    trimmed = torch.zeros_like(deltas)
    for i in range(n):
        top = deltas[i].abs().argsort(descending=True, stable=True)[:keep]
        trimmed[i, top] = deltas[i, top]
    out = torch.zeros(m, dtype=deltas.dtype)
    for j in range(m):
        sign = torch.sign(trimmed[:, j].sum())
        agree = [trimmed[i, j] for i in range(n) if trimmed[i, j] != 0 and torch.sign(trimmed[i, j]) == sign]
        out[j] = sum(agree) / len(agree) if agree else 0.0
    return out


def test_ties_and_dare_combine_the_branches_changes(world: dict[str, Any]) -> None:
    """TIES equals an entry-by-entry reference; DARE keeps each change whole or drops it, seeded."""
    from barkit.merge.policies import DENSITY

    d = world["dirs"]
    names = [d["math"], d["tools"], d["think"]]
    base = _tensors(d["base"])
    branches = [_tensors(p) for p in names]
    rows = len(world["tok"])
    out = world["root"] / "ties"
    merge(names, out, shared="ties", base_dir=d["base"], progress=False)
    got = _tensors(out)
    for name in ("model.layers.0.self_attn.k_proj.weight", "model.norm.weight", "lm_head.weight"):
        b0 = base[name][:rows].double()
        deltas = torch.stack([b[name][:rows].double() - b0 for b in branches])
        flat = deltas.reshape(3, 1, -1) if deltas.dim() == 2 else deltas
        want = torch.stack([_ties_reference(flat[:, r], DENSITY) for r in range(flat.shape[1])])
        assert torch.allclose(got[name][:rows].double(), b0 + want.reshape(b0.shape), atol=1e-6), name
    # a token only the tool expert added is still that expert's row, copied
    tools, ttok = branches[1], AutoTokenizer.from_pretrained(d["tools"])
    row = got["model.embed_tokens.weight"][
        AutoTokenizer.from_pretrained(out).convert_tokens_to_ids("<tool_call>")
    ]
    assert torch.equal(row, tools["model.embed_tokens.weight"][ttok.convert_tokens_to_ids("<tool_call>")])

    two = [d["math"], d["tools"]]
    runs = []
    for k in range(2):
        runs.append(world["root"] / f"dare{k}")
        merge(two, runs[-1], shared="dare", base_dir=d["base"], progress=False)
    first, again = _tensors(runs[0]), _tensors(runs[1])
    assert all(torch.equal(first[n], again[n]) for n in first), "dare must be reproducible"
    name = "model.layers.1.self_attn.q_proj.weight"
    b0 = base[name].double()
    d1, d2 = (branches[i][name].double() - b0 for i in (0, 1))
    change = first[name].double() - b0
    # with two branches each entry is base + (kept d1 + kept d2) / (2 * DENSITY)
    options = torch.stack([torch.zeros_like(d1), d1, d2, d1 + d2]) / (2 * DENSITY)
    closest = (options - change.unsqueeze(0)).abs().min(0).values
    assert closest.max() < 1e-6
    only_first = ((options[1] - change).abs() < 1e-9).double().mean().item()
    assert abs(only_first - DENSITY * (1 - DENSITY)) < 0.05  # d1 kept and d2 dropped
    with pytest.raises(ConfigError, match="'ties' needs --base"):
        plan_merge(two, shared="ties")


def _assert_refused(world: dict[str, Any], inputs: list[Path], exc: type[Exception], names: Path) -> None:
    out = world["root"] / "refused"
    with pytest.raises(exc) as info:
        merge(inputs, out, progress=False)
    assert str(names) in str(info.value) and "\n" not in str(info.value)
    assert not out.exists() and not list(world["root"].glob(".refused*"))


def test_refusals_name_the_input_and_write_nothing(world: dict[str, Any], tmp_path: Path) -> None:
    d, root = world["dirs"], world["root"]
    _assert_refused(world, [d["math"], d["math"]], IncompatibleError, d["math"])
    twin = tmp_path / "twin"
    shutil.copytree(d["tools"], twin)  # a different folder with the same expert inside
    _assert_refused(world, [d["tools"], d["think"], twin], IncompatibleError, twin)
    _assert_refused(world, [d["math"], d["base"]], ArtifactError, d["base"])  # dense: not a branch

    other = tmp_path / "other_base"
    shutil.copytree(d["think"], other)
    write_manifest(other, read_manifest(other) | {"base_fingerprint": "0000", "fingerprint": "o"})
    _assert_refused(world, [d["math"], other], IncompatibleError, other)

    anchor = tmp_path / "anchor"
    moe = AutoModelForCausalLM.from_pretrained(d["think"])
    with torch.no_grad():
        moe.model.layers[1].mlp.experts.down_proj[0, 0, 0] += 1e-3
    _save(
        moe,
        AutoTokenizer.from_pretrained(d["think"]),
        anchor,
        read_manifest(d["think"]) | {"fingerprint": "a"},
    )
    _assert_refused(world, [d["math"], anchor], IncompatibleError, anchor)

    wide = tmp_path / "wide"
    cfg = family_of("llama").moe_config(world["dense"].config, 2, 2)
    cfg.intermediate_size = 64
    _save(
        AutoModelForCausalLM.from_config(cfg),
        world["tok"],
        wide,
        read_manifest(d["math"]) | {"fingerprint": "w"},
    )
    _assert_refused(world, [d["math"], wide], IncompatibleError, wide)

    with pytest.raises(IncompatibleError, match="at least one"):
        plan_merge([])
    assert not (root / "refused").exists()


def test_dry_run_writes_nothing(world: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    from barkit.cli import main

    d = world["dirs"]
    out = world["root"] / "dry"
    assert main(["merge", str(d["math"]), str(d["tools"]), "--out", str(out), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert not out.exists()
    for needle in (
        "3 experts",
        "anchor",
        "math",
        "tools",
        "'<tool_call>'",
        "active per token",
        "embeddings mean",
    ):
        assert needle in text, needle
    assert main(["merge", str(d["math"]), str(d["math"]), "--out", str(out)]) == 2
    assert "given twice" in capsys.readouterr().err


def test_failure_midway_leaves_no_output(
    world: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = world["dirs"]
    broken = tmp_path / "broken"
    shutil.copytree(d["think"], broken)
    out = tmp_path / "out"
    # A truncated file is refused up front, naming the file.
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(ArtifactError, match="truncated"):
        merge([d["math"], broken], out, progress=False)
    assert not out.exists()
    # Corruption found only while streaming (the 20th read fails): the folder never appears.
    import barkit.merge as bm

    plan = plan_merge([d["math"], d["think"]])
    real, calls = bm.InputFiles.read_rows, [0]

    def flaky(files: Any, info: Any, name: str, a: int, b: int) -> torch.Tensor:
        calls[0] += 1
        if calls[0] == 20:
            raise ArtifactError(f"{info.file}: cannot read tensor {name} (simulated)")
        return real(files, info, name, a, b)

    monkeypatch.setattr(bm.InputFiles, "read_rows", flaky)
    with pytest.raises(ArtifactError, match="simulated"):
        bm.execute(plan, out, progress=False)
    assert calls[0] == 20
    assert not out.exists() and list(tmp_path.iterdir()) == [broken]


def test_btx_merge_of_dense_models(world: dict[str, Any], tmp_path: Path) -> None:
    tok = world["tok"]
    dirs = []
    for seed in range(3):
        dirs.append(
            _save(_dense("llama", tok, seed=seed + 10), tok, tmp_path / f"d{seed}", {"stage": "base"})
        )
    out = tmp_path / "btx"
    merge_dense_btx(dirs, out, top_k=2, progress=False)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.model_type == "mixtral" and model.config.num_local_experts == 3
    got, srcs = _tensors(out), [_tensors(p) for p in dirs]
    assert torch.equal(
        got["model.layers.1.block_sparse_moe.experts.2.w2.weight"],
        srcs[2]["model.layers.1.mlp.down_proj.weight"],
    )
    name = "model.layers.0.self_attn.k_proj.weight"
    assert torch.equal(got[name], torch.stack([s[name] for s in srcs]).double().mean(0).float())
    assert torch.isfinite(model(torch.tensor([[1, 2, 3]])).logits).all()


def test_parse_size() -> None:
    assert parse_size("2GB") == 2_000_000_000 and parse_size("1MiB") == 1 << 20 and parse_size("500") == 500
    with pytest.raises(ConfigError):
        parse_size("lots")


def _bf16_copy(src: Path, out: Path) -> Path:
    model = AutoModelForCausalLM.from_pretrained(src).to(torch.bfloat16)
    return _save(model, AutoTokenizer.from_pretrained(src), out, read_manifest(src))


def test_bf16_mean_is_float32_accumulated_and_copies_stay_exact(
    world: dict[str, Any], tmp_path: Path
) -> None:
    """16-bit storage sums in float32: the float64 mean rounded once, up to 1 ulp at rare ties."""
    d = world["dirs"]
    srcs = [_bf16_copy(d[k], tmp_path / k) for k in ("math", "tools", "think")]
    out = tmp_path / "m"
    merge(srcs, out, progress=False)
    got, ins = _tensors(out), [_tensors(p) for p in srcs]
    rows = len(world["tok"])
    for name in ("model.layers.0.self_attn.q_proj.weight", "model.norm.weight", "lm_head.weight"):
        assert got[name].dtype == torch.bfloat16
        stack = torch.stack([t[name][:rows] for t in ins]).double()
        exact = stack.mean(0).to(torch.bfloat16)
        ulp = exact.double().abs().clamp_min(1e-30) * 2.0**-7  # one bf16 unit in the last place
        assert ((got[name][:rows].double() - exact.double()).abs() <= ulp).all(), name
        assert (got[name][:rows] == exact).double().mean() > 0.99, name
    compared = 0
    for k, src in enumerate(ins, start=1):  # experts: raw byte copies, bit for bit
        for name, t in src.items():
            if ".experts.1." in name:
                assert torch.equal(got[name.replace(".experts.1.", f".experts.{k}.")], t), name
                compared += 1
    assert compared == 3 * 2 * 3  # 3 branches x 2 layers x (w1, w2, w3)


@pytest.mark.parametrize("how", ["refused", "missing"])
def test_copy_falls_back_to_pread_pwrite(
    world: dict[str, Any], merged: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """Where copy_file_range is refused (EXDEV across file systems) or absent, same bytes."""
    import errno
    import os

    if how == "refused":

        def refuse(*args: Any, **kwargs: Any) -> int:
            raise OSError(errno.EXDEV, "cross-device")

        monkeypatch.setattr(os, "copy_file_range", refuse)
    else:
        monkeypatch.delattr(os, "copy_file_range", raising=False)
    d = world["dirs"]
    out = tmp_path / "fallback"
    merge([d["math"], d["tools"], d["think"]], out, progress=False)
    assert (out / "model.safetensors").read_bytes() == (merged / "model.safetensors").read_bytes()


def test_shard_writer_writes_out_of_order_and_counts_bytes(tmp_path: Path) -> None:
    from barkit.merge import ShardWriter, read_header

    a, b = torch.arange(6, dtype=torch.float32).reshape(2, 3), torch.ones(4, dtype=torch.bfloat16)
    w = ShardWriter(tmp_path / "x.safetensors", [("a", "F32", (2, 3)), ("b", "BF16", (4,))])
    w.write_at(w.offsets["b"], b.view(torch.uint8).numpy())  # the later tensor first
    w.write_at(w.offsets["a"], a.view(torch.uint8).numpy())
    w.close()
    got = _tensors(tmp_path)
    assert torch.equal(got["a"], a) and torch.equal(got["b"], b)
    assert read_header(tmp_path / "x.safetensors")["b"].offset == w.offsets["b"]
    short = ShardWriter(tmp_path / "y.safetensors", [("a", "F32", (2, 3))])
    short.write_at(short.offsets["a"], a[:1].numpy())
    with pytest.raises(ArtifactError, match="wrote 12 of 24 bytes"):
        short.close()


def test_header_with_wrong_byte_count_is_refused(tmp_path: Path) -> None:
    from barkit.merge import read_header

    header = json.dumps({"t": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 12]}}).encode()
    path = tmp_path / "bad.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header + bytes(16))
    with pytest.raises(ArtifactError, match="tensor t has 12 bytes"):
        read_header(path)


def test_btx_router_is_seeded(world: dict[str, Any], tmp_path: Path) -> None:
    tok = world["tok"]
    dirs = [_save(_dense("llama", tok, seed=s), tok, tmp_path / f"d{s}", {"stage": "base"}) for s in (1, 2)]
    name = "model.layers.0.block_sparse_moe.gate.weight"
    routers = []
    for k, seed in enumerate((5, 5, 6)):
        merge_dense_btx(dirs, tmp_path / f"o{k}", seed=seed, progress=False)
        routers.append(_tensors(tmp_path / f"o{k}")[name])
    assert torch.equal(routers[0], routers[1]) and not torch.equal(routers[0], routers[2])
    assert routers[0].shape == (2, 32) and routers[0].abs().max() > 0
