"""The base that ships inside the package, and how recipes and commands find it.

Building the tiny base takes hours of CPU (:mod:`barkit.base`); like BAR, which starts from a
released post-trained model, barkit starts from a built one: ``src/barkit/bases/<name>/`` holds
its weights, tokenizer and manifest. The manifest records the recipe fingerprint it was built
with; a shipped base whose fingerprint differs from what the current code would build is
*stale* and is never used in its place (a test fails on it, so it cannot go stale silently).
"""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path
from typing import Any

from barkit.errors import BarkitError

#: (arch, preset, seed) of each shipped base and its folder under ``barkit/bases``
SHIPPED: dict[tuple[str, str, int], str] = {("olmo2", "tiny", 0): "tiny-olmo2"}


def shipped_folder(name: str) -> Path:
    """Where the shipped base ``name`` lives inside the installed package."""
    return Path(str(resources.files("barkit"))) / "bases" / name


def expected_fingerprint(arch: str, preset: str, seed: int) -> str:
    from barkit.base_recipe import get_recipe

    return get_recipe(preset).fingerprint(arch, preset, seed)


def shipped_manifest(arch: str, preset: str, seed: int) -> dict[str, Any] | None:
    """The shipped base's manifest for (arch, preset, seed), or None when none ships."""
    from barkit.artifacts import read_manifest

    name = SHIPPED.get((arch, preset, seed))
    if name is None or not (shipped_folder(name) / "barkit.json").is_file():
        return None
    return read_manifest(shipped_folder(name))


def find_shipped(arch: str, preset: str, seed: int) -> Path | None:
    """The shipped base that the current recipe would rebuild bit for bit, or None."""
    manifest = shipped_manifest(arch, preset, seed)
    if manifest is None or manifest.get("recipe_fingerprint") != expected_fingerprint(arch, preset, seed):
        return None
    return shipped_folder(SHIPPED[(arch, preset, seed)])


def copy_shipped(source: Path, out: Path) -> None:
    """Copy a shipped base to ``out`` atomically (a run folder owns its base)."""
    from barkit.artifacts import atomic_dir

    if not (source / "barkit.json").is_file():
        raise BarkitError(f"{source}: not a shipped base")
    with atomic_dir(out) as tmp:
        shutil.copytree(source, tmp, dirs_exist_ok=True)
