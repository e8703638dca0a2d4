"""Model-shape presets: ``micro`` for tests, ``tiny`` for the demo, ``small`` for longer runs.

Presets fix only the shape of the network and its tokenizer; step counts, learning rates and
batch sizes belong to the training stages.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from barkit.errors import BarkitError


@dataclass(frozen=True)
class ModelPreset:
    """Shape of a dense barkit model (a branch adds experts of the same FFN shape)."""

    name: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    vocab_size: int
    max_seq_len: int

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def approx_params(self) -> int:
        """Dense parameter count (untied embeddings and head, norms ignored)."""
        kv = self.num_kv_heads * self.head_dim
        attention = self.hidden_size * (2 * self.hidden_size + 2 * kv)
        ffn = 3 * self.hidden_size * self.intermediate_size
        return self.num_layers * (attention + ffn) + 2 * self.vocab_size * self.hidden_size


# tiny: on the 2-core CPU this project targets, a forward+backward at batch 16 x 256 tokens runs
# at about 10k tokens/s (see the presets section of the helper report), so the demo's ~3 minute
# stages see well over 1M tokens.
PRESETS: dict[str, ModelPreset] = {
    "micro": ModelPreset("micro", 64, 2, 4, 4, 128, 1024, 256),
    "tiny": ModelPreset("tiny", 128, 4, 4, 4, 512, 2048, 256),
    "small": ModelPreset("small", 384, 6, 6, 6, 1024, 4096, 512),
}


def get_preset(name: str) -> ModelPreset:
    """The preset called ``name`` (BarkitError naming the known ones otherwise)."""
    try:
        return PRESETS[name]
    except KeyError:
        raise BarkitError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}") from None
