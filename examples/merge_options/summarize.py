"""Table of the merge options' scores: each routed model against the experts alone."""

from __future__ import annotations

import json
import sys
from pathlib import Path

DOMAINS = ("math", "code", "tool_use", "safety")
CATEGORIES = ("knowledge", "reasoning", "chat", *DOMAINS)


def main(out: Path, run: Path) -> None:
    alone = {}
    for d in DOMAINS:
        path = run / "eval" / f"expert_{d}.json"
        alone[d] = json.loads(path.read_text())["scores"][d] if path.is_file() else None
    base = json.loads((run / "eval" / "base.json").read_text())
    lines = [
        "| option | " + " | ".join(CATEGORIES) + " | overall |",
        "|---|" + "---:|" * (len(CATEGORIES) + 1),
        "| base | "
        + " | ".join(f"{base['scores'][c]:.0f}" for c in CATEGORIES)
        + f" | {base['overall']:.1f} |",
        "| expert alone (own domain) | "
        + " | ".join("" if c not in DOMAINS else f"{alone[c]:.0f}" for c in CATEGORIES)
        + " | |",
    ]
    for folder in sorted(p for p in out.iterdir() if (p / "scores.json").is_file()):
        s = json.loads((folder / "scores.json").read_text())
        cells = " | ".join(f"{s['scores'][c]:.0f}" for c in CATEGORIES)
        lines.append(f"| {folder.name} | {cells} | {s['overall']:.1f} |")
    table = "\n".join(lines)
    print(table)
    (out / "table.md").write_text(table + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
