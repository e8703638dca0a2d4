"""Branch-Train-Stitch: frozen seed and experts, stitch training, format, add/remove, KV cache, CLI."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from barkit.artifacts import content_fingerprint, read_manifest
from barkit.cli import main as cli
from barkit.errors import ArtifactError
from barkit.generate import generate, greedy_batch
from barkit.modeling import build_dense, load_model, save_model
from barkit.presets import get_preset
from barkit.stitch import (
    StitchedCausalLM,
    TrainOptions,
    load_stitched,
    measure_tokens_per_second,
    stitch_add,
    stitch_remove,
    stitched_cost,
)
from barkit.stitch.build import train_stitches
from barkit.tokenizer import train_tokenizer

CORPUS = ["the cat sat on the mat", "2 + 3 = 5", "def f(x): return x", "hello world"] * 4
MICRO = TrainOptions(preset="micro", steps=3, progress=False)


def _perturbed(model: Any, seed: int) -> Any:
    """An 'expert': the seed with seeded noise on every weight (same shapes, same tokenizer)."""
    expert = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in expert.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return expert


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A micro OLMo-2 seed, three experts (math, code, safety) and a model stitched through the CLI."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("stitch")
    tok = train_tokenizer(300, texts=CORPUS)
    seed = build_dense("olmo2", get_preset("micro"), tok, seed=0).eval()
    dirs = {"seed": root / "seed"}
    save_model(seed, tok, dirs["seed"], {"stage": "base"})
    for i, domain in enumerate(("math", "code", "safety"), start=1):
        dirs[domain] = root / domain
        save_model(_perturbed(seed, i), tok, dirs[domain], {"stage": "sft", "domain": domain})
    stitched = root / "stitched"
    args = ["stitch", str(dirs["seed"]), str(dirs["math"]), str(dirs["code"]), "--out", str(stitched)]
    assert cli([*args, "--every", "1", "--preset", "micro", "--steps", "3"]) == 0
    return {"root": root, "dirs": dirs, "tok": tok, "seed": seed, "stitched": stitched}


def _ids(n: int = 2, length: int = 12) -> torch.Tensor:
    return torch.randint(7, 300, (n, length), generator=torch.Generator().manual_seed(5))


def _logits(model: Any, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out: torch.Tensor = model(input_ids=ids).logits
    return out


def test_training_moves_only_stitches(world: dict[str, Any], tmp_path: Path) -> None:
    seed, _ = load_model(world["dirs"]["seed"])
    experts = {d: load_model(world["dirs"][d])[0] for d in ("math", "code")}
    model = StitchedCausalLM(seed, experts, every=1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train_stitches(model, world["tok"], ["math", "code"], ["stitches.*"], MICRO, tmp_path / "work")
    after = dict(model.named_parameters())
    frozen = [n for n in before if not n.startswith("stitches.")]
    assert frozen and all(torch.equal(before[n], after[n]) for n in frozen)
    moved = [n for n in before if n.startswith("stitches.") and not torch.equal(before[n], after[n])]
    # every stitch tensor gets a gradient (the hub's gate included), so all of them move
    assert len(moved) == sum(1 for n in before if n.startswith("stitches."))
    assert not (tmp_path / "work").exists()


def test_folder_format_manifest_and_frozen_inputs(world: dict[str, Any]) -> None:
    folder = world["stitched"]
    names = sorted(p.name for p in folder.iterdir())
    assert {"stitch.json", "stitch.safetensors", "barkit.json", "config.json", "tokenizer.json"} <= set(names)
    assert not any(n.startswith("model") for n in names)  # seed and experts are referenced, not copied
    spec = json.loads((folder / "stitch.json").read_text())
    assert [e["name"] for e in spec["experts"]] == ["math", "code"]
    assert spec["seed"]["fingerprint"] == content_fingerprint(world["dirs"]["seed"])
    manifest = read_manifest(folder)
    assert manifest["stage"] == "stitch" and manifest["stitched_experts"] == ["math", "code"]
    assert manifest["fingerprint"] == content_fingerprint(folder)
    assert all(k.startswith(("hub_gate.", "experts.")) for k in load_file(str(folder / "stitch.safetensors")))
    model, _ = load_stitched(folder)
    seed = world["seed"]
    assert all(torch.equal(p, dict(seed.named_parameters())[n]) for n, p in model.hub.named_parameters())


def test_pass_through_reproduces_the_seed(world: dict[str, Any]) -> None:
    model, _ = load_stitched(world["stitched"])
    ids = _ids()
    reference = _logits(world["seed"], ids)
    with model.pass_through():
        exact = _logits(model, ids)
    torch.testing.assert_close(exact, reference, atol=1e-6, rtol=0)
    # with the trained gates the experts do contribute, so the comparison above can fail
    assert (_logits(model, ids) - reference).abs().max() > 1e-4


def test_add_then_remove_restores_the_model(world: dict[str, Any], tmp_path: Path) -> None:
    stitched, ids = world["stitched"], _ids()
    original = _logits(load_stitched(stitched)[0], ids)
    old = load_file(str(stitched / "stitch.safetensors"))
    added = tmp_path / "added"
    manifest = stitch_add(stitched, world["dirs"]["safety"], added, options=MICRO)
    assert manifest["stitched_experts"] == ["math", "code", "safety"]
    new = load_file(str(added / "stitch.safetensors"))
    assert all(torch.equal(old[k], new[k]) for k in old)  # only the new expert's stitches trained
    assert any(k.startswith("experts.safety.") for k in new)
    assert (_logits(load_stitched(added)[0], ids) - original).abs().max() > 1e-6
    removed = tmp_path / "removed"
    stitch_remove(added, "safety", removed)
    assert torch.equal(_logits(load_stitched(removed)[0], ids), original)


def test_remove_works_when_the_expert_folder_is_gone(world: dict[str, Any], tmp_path: Path) -> None:
    shutil.copytree(world["dirs"]["code"], tmp_path / "code")
    spec_path = tmp_path / "stitched" / "stitch.json"
    shutil.copytree(world["stitched"], spec_path.parent)
    spec = json.loads(spec_path.read_text())
    spec["experts"][1]["path"] = str(tmp_path / "code")
    spec_path.write_text(json.dumps(spec))
    shutil.rmtree(tmp_path / "code")
    with pytest.raises(ArtifactError, match="expert 'code' is missing"):
        load_stitched(spec_path.parent)
    stitch_remove(spec_path.parent, "code", tmp_path / "without")
    assert load_stitched(tmp_path / "without")[0].expert_names == ["math"]


def _spread_stitches(model: StitchedCausalLM) -> None:
    """Large, seeded stitch parameters so that the experts move the hub a lot (a harsher cache test)."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.stitches.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))


def test_kv_cache_matches_recomputation(world: dict[str, Any]) -> None:
    model, tok = load_stitched(world["stitched"])
    _spread_stitches(model)
    prompts = [[1, 40, 41, 42, 43, 44], [1, 50, 51]]  # different lengths: left padding in the batch
    cached = greedy_batch(model, prompts, max_new_tokens=8, eos_id=-1, pad_id=tok.pad_token_id)
    plain = greedy_batch(
        model, prompts, max_new_tokens=8, eos_id=-1, pad_id=tok.pad_token_id, use_cache=False
    )
    assert cached == plain
    # step logits: prefill + cached single-token steps against recomputing the whole sequence
    seq = torch.tensor([prompts[0] + cached[0]])
    with torch.no_grad():
        full = model(input_ids=seq).logits
        out = model(input_ids=seq[:, :6], use_cache=True)
        steps = [out.logits[:, -1]]
        for t in range(6, seq.shape[1]):
            out = model(input_ids=seq[:, t : t + 1], past_key_values=out.past_key_values, use_cache=True)
            steps.append(out.logits[:, -1])
    torch.testing.assert_close(torch.stack(steps, 1), full[:, 5:], atol=1e-5, rtol=0)
    assert set(out.past_key_values.caches) == {"hub", "math", "code"}


def test_generate_and_cost_helpers(world: dict[str, Any]) -> None:
    model, tok = load_stitched(world["stitched"])
    texts = generate(model, tok, ["hello", "2 + 3"], max_new_tokens=4, batch_size=2)
    assert len(texts) == 2
    cost = stitched_cost(model)
    seed_params = sum(p.numel() for p in world["seed"].parameters())
    layers = sum(p.numel() for p in world["seed"].model.layers.parameters())
    embed = world["seed"].model.embed_tokens.weight.numel()
    stitch_params = sum(p.numel() for p in model.stitches.parameters())
    assert cost["hub"] == seed_params
    assert cost["experts"] == {"math": embed + layers, "code": embed + layers}  # every=1: all layers used
    assert cost["params_per_token"] == seed_params + 2 * (embed + layers) + stitch_params
    assert cost["matmul_params_per_token"] == cost["params_per_token"] - 3 * embed
    speed = measure_tokens_per_second(world["seed"], tok, n_prompts=3, max_new_tokens=3)
    assert speed["prompts"] == 3 and 0 < speed["tokens"] <= 9 and speed["tokens_per_second"] > 0


def _tamper(folder: Path) -> None:
    tensors = load_file(str(folder / "model.safetensors"))
    name = next(iter(sorted(tensors)))
    tensors[name] = tensors[name] + 1.0
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})


def test_tampered_expert_is_refused_in_one_line(world: dict[str, Any], tmp_path: Path) -> None:
    shutil.copytree(world["dirs"]["math"], tmp_path / "math")
    shutil.copytree(world["stitched"], tmp_path / "stitched")
    spec_path = tmp_path / "stitched" / "stitch.json"
    spec = json.loads(spec_path.read_text())
    spec["experts"][0]["path"] = str(tmp_path / "math")
    spec_path.write_text(json.dumps(spec))
    load_stitched(tmp_path / "stitched")  # an unchanged copy loads
    _tamper(tmp_path / "math")
    with pytest.raises(ArtifactError) as info:
        load_stitched(tmp_path / "stitched")
    message = str(info.value)
    assert "expert 'math'" in message and "changed since stitching" in message and "\n" not in message


@pytest.mark.parametrize(
    "args",
    [
        ["SEED"],  # create without experts
        ["SEED", "MATH", "--every", "9"],  # more than the seed's 2 layers
        ["SEED", "MATH", "--sample", "0"],
        ["SEED", "MATH", "--domains", "math,code"],  # two domains for one expert
        ["SEED", "MATH", "--domains", "astrology"],
        ["STITCHED", "--remove", "physics"],
        ["STITCHED", "--remove", "math", "--add", "CODE"],
        ["STITCHED", "SEED", "--add", "CODE"],
        ["STITCHED", "--add", "CODE"],  # already has a code expert
        ["STITCHED", "--add", "STITCHED"],  # a stitched model is no expert
        ["SEED", "STITCHED"],
        ["NOWHERE", "MATH"],
    ],
)
def test_cli_errors_exit_2_and_write_nothing(
    world: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    d = world["dirs"]
    paths = {"SEED": d["seed"], "MATH": d["math"], "CODE": d["code"], "STITCHED": world["stitched"]}
    paths["NOWHERE"] = tmp_path / "nowhere"
    argv = [
        "stitch",
        *[str(paths.get(a, a)) for a in args],
        "--out",
        str(tmp_path / "out"),
        "--preset",
        "micro",
    ]
    assert cli(argv) == 2
    # transformers' "Loading weights" progress bars may precede the message on stderr
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("barkit: error:")
    assert not (tmp_path / "out").exists()
