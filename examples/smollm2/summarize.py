"""Collect the SmolLM2 example's scores, wall times and SFT throughput into a Markdown report."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(work: Path) -> None:
    print("# SmolLM2-135M-Instruct through BAR\n")
    print("| model | arith (numeric) | tools (tool-call) |\n|---|---:|---:|")
    for model in ("smol", "routed"):
        scores = [
            json.loads((work / f"eval-{model}-{d}.json").read_text())["overall"] for d in ("arith", "tools")
        ]
        label = "base (imported)" if model == "smol" else "BAR (merged + routed)"
        print(f"| {label} | {scores[0]:.1f} | {scores[1]:.1f} |")
    check = work / "branch_check.json"
    if check.is_file():
        print(f"\nBranch against the imported dense model: {check.read_text().strip()}")
    print("\n| step | seconds |\n|---|---:|")
    for line in (work / "times.tsv").read_text().splitlines():
        label, seconds = line.split("\t")
        print(f"| {label} | {float(seconds):.1f} |")
    print("\n| expert | SFT tokens | seconds | tokens/s |\n|---|---:|---:|---:|")
    for expert in ("arith", "tools"):
        manifest = json.loads((work / expert / "barkit.json").read_text())
        tokens, seconds = manifest["tokens"], manifest.get("wall_time_s") or manifest.get("seconds")
        print(f"| {expert} | {tokens} | {seconds:.1f} | {tokens / seconds:.1f} |")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
