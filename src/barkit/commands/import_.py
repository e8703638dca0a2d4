"""``barkit import FILE.gguf --out DIR``: a GGUF model as a plain Hugging Face folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def main(
    gguf: Annotated[Path, typer.Argument(help="GGUF file (llama.cpp's format, any quantization).")],
    out: Annotated[Path, typer.Option("--out", help="Folder to write the HF model to.")],
    dtype: Annotated[
        str,
        typer.Option("--dtype", help="float32 (the dequantized values exactly), bfloat16 or float16."),
    ] = "float32",
) -> None:
    """Dequantize a GGUF model into config, safetensors, tokenizer (with chat template), manifest."""
    from barkit.gguf_import import import_gguf

    manifest = import_gguf(gguf, out, dtype=dtype)
    millions = manifest["parameters"] / 1e6
    typer.echo(
        f"imported {manifest['model_type']} ({millions:.1f}M parameters) -> {out} ({manifest['fingerprint']})"
    )
    if not manifest["chat_template"]:
        typer.echo("note: the GGUF has no chat template; chat data (sft, rlvr, eval) needs one", err=True)
