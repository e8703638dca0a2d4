"""Branch-Train-Stitch in memory: a frozen hub (the seed) and frozen experts joined by stitches.

Every ``every`` layers (after layer indices ``every-1``, ``2*every-1``, ...) a stitch point
exchanges hidden states between the hub and each expert:

* **experts into hub**: a per-token, per-dimension softmax over sources ``j`` in
  ``{hub, expert_1..N}``: ``h' = sum_j softmax_j(g)[d] * P_j(h_j)[d]`` with ``P_hub = I``,
  ``P_j`` learned linear maps and the gate logits ``g_j = G_j(h_hub)`` (one linear map per source,
  all reading the hub's state);
* **hub into experts**: ``h_j' = (1 - s_j) * h_j + s_j * Q_j(h_hub)`` with ``s_j = sigmoid(m_j)``,
  a learned per-dimension mix. Both directions read the states from *before* the point, so the
  exchange is symmetric. There is no hub-into-expert stitch after the last layer (nothing
  downstream would read it), and experts stop after the last stitch point.

Initialisation (so that training starts from the seed's behaviour): ``P_j = Q_j = I`` (the
experts were branched from the seed, so they share its hidden space); all gate weights are 0,
the hub's gate bias is :data:`HUB_GATE_BIAS` and the experts' 0, so the hub keeps a weight of
``e^4 / (e^4 + N)`` (0.98 with one expert); ``m_j = MIX_BIAS`` so ``s_j = 0.018``. The biases are
large enough that the stitched model starts close to the seed and small enough that the gates'
gradients (``w (1 - w)``) do not vanish. :meth:`StitchedCausalLM.pass_through` makes the hub
exact: expert gate logits become ``-inf``, so the hub weight is exactly 1.

Each expert's stitch parameters live under ``stitches.experts.<name>.``, the hub's gate under
``stitches.hub_gate.``: adding an expert adds one subtree, removing it deletes that subtree, and
training only ``stitches.experts.<name>.*`` leaves every other source's computation unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from barkit.errors import BarkitError, ConfigError

HUB_GATE_BIAS = 4.0
MIX_BIAS = -4.0
HUB = "hub"


def stitch_points(num_layers: int, every: int) -> list[int]:
    """Layer indices after which a stitch sits: ``every-1, 2*every-1, ...`` below ``num_layers``."""
    if every < 1 or every > num_layers:
        raise ConfigError(f"--every {every}: must be between 1 and the seed's {num_layers} layers")
    return [i for i in range(num_layers) if (i + 1) % every == 0]


def _identity_linear(hidden: int) -> nn.Linear:
    layer = nn.Linear(hidden, hidden)
    with torch.no_grad():
        layer.weight.copy_(torch.eye(hidden))
        layer.bias.zero_()
    return layer


def _constant_linear(hidden: int, bias: float) -> nn.Linear:
    layer = nn.Linear(hidden, hidden)
    with torch.no_grad():
        layer.weight.zero_()
        layer.bias.fill_(bias)
    return layer


class ExpertStitchPoint(nn.Module):
    """One expert's share of one stitch point: ``proj`` (P_j), ``gate`` (G_j), ``back`` (Q_j), ``mix`` (m_j)."""

    def __init__(self, hidden: int, *, back: bool) -> None:
        super().__init__()
        self.proj = _identity_linear(hidden)
        self.gate = _constant_linear(hidden, 0.0)
        self.back: nn.Linear | None = _identity_linear(hidden) if back else None
        self.mix: nn.Parameter | None = nn.Parameter(torch.full((hidden,), MIX_BIAS)) if back else None

    def into_expert(self, expert: Tensor, hub: Tensor) -> Tensor:
        """The expert's state after the point (unchanged where there is no back stitch)."""
        if self.back is None or self.mix is None:
            return expert
        s = torch.sigmoid(self.mix)
        return (1.0 - s) * expert + s * self.back(hub)


class Stitches(nn.Module):
    """All stitch parameters: the hub's gate per point and one :class:`ExpertStitchPoint` list per expert."""

    def __init__(self, hidden: int, num_layers: int, every: int) -> None:
        super().__init__()
        self.hidden, self.num_layers, self.every = hidden, num_layers, every
        self.points = stitch_points(num_layers, every)
        self.hub_gate = nn.ModuleList(_constant_linear(hidden, HUB_GATE_BIAS) for _ in self.points)
        self.experts = nn.ModuleDict()

    def new_expert(self, name: str) -> None:
        """Freshly initialised stitches for expert ``name`` (see the module docstring)."""
        last = self.num_layers - 1
        self.experts[name] = nn.ModuleList(ExpertStitchPoint(self.hidden, back=p < last) for p in self.points)

    def into_hub(self, k: int, hub: Tensor, experts: dict[str, Tensor], *, exact_hub: bool) -> Tensor:
        """Hub state after point ``k``: the per-dimension softmax mix of hub and projected experts."""
        logits, values = [self.hub_gate[k](hub)], [hub]
        for name, state in experts.items():
            point: ExpertStitchPoint = self.experts[name][k]  # type: ignore[index]
            gate = point.gate(hub)
            logits.append(torch.full_like(gate, float("-inf")) if exact_hub else gate)
            values.append(point.proj(state))
        weights = torch.softmax(torch.stack(logits), dim=0)
        return (weights * torch.stack(values)).sum(dim=0)


@dataclass
class StitchedCache:
    """One KV cache per sub-model (hub and each expert): their sequences are cached separately."""

    caches: dict[str, Any]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return int(self.caches[HUB].get_seq_length(layer_idx))


@dataclass
class _Stream:
    """One sub-model's running state during a forward pass."""

    hidden: Tensor
    mask: Any
    rotary: tuple[Tensor, Tensor]
    positions: Tensor
    cache: Any


class StitchedCausalLM(nn.Module):
    """A frozen hub causal LM and frozen expert LMs of the same shape, joined by :class:`Stitches`.

    The forward follows the Hugging Face interface (``input_ids``, ``attention_mask``,
    ``position_ids``, ``past_key_values``, ``use_cache``, ``logits_to_keep``) and returns
    ``.logits`` and ``.past_key_values`` (a :class:`StitchedCache`). ``config`` is the hub's, so
    barkit's training loop treats the model like a dense one of the seed's family.
    """

    def __init__(self, hub: Any, experts: Mapping[str, Any], every: int) -> None:
        super().__init__()
        # Typed Any: transformers models are typed loosely (attributes resolve to Tensor | Module).
        self.hub: Any = hub
        self.config: Any = hub.config
        self.experts = nn.ModuleDict()
        self.stitches = Stitches(self.config.hidden_size, self.config.num_hidden_layers, every)
        self._exact_hub = False
        for param in hub.parameters():
            param.requires_grad_(False)
        for name, model in experts.items():
            self.add_expert(name, model)

    # ------------------------------------------------------------------ experts
    @property
    def expert_names(self) -> list[str]:
        return list(self.experts.keys())

    def add_expert(self, name: str, model: Any) -> None:
        """Attach a frozen expert with fresh stitches (its name keys its parameters)."""
        if not name or "." in name or name == HUB:
            raise BarkitError(f"expert name {name!r}: must be non-empty, without '.', and not {HUB!r}")
        if name in self.experts:
            raise BarkitError(f"expert {name!r} is already stitched in")
        for param in model.parameters():
            param.requires_grad_(False)
        self.experts[name] = model
        self.stitches.new_expert(name)

    def remove_expert(self, name: str) -> None:
        """Detach expert ``name`` and its stitches; the others' parameters are untouched."""
        if name not in self.experts:
            raise BarkitError(f"unknown expert {name!r}; stitched experts: {', '.join(self.expert_names)}")
        del self.experts[name]
        del self.stitches.experts[name]

    @contextlib.contextmanager
    def pass_through(self) -> Iterator[StitchedCausalLM]:
        """Within the block the hub ignores the experts exactly (their gate logits are -inf)."""
        before, self._exact_hub = self._exact_hub, True
        try:
            yield self
        finally:
            self._exact_hub = before

    # ------------------------------------------------------------------ forward
    def _start(
        self,
        lm: nn.Module,
        input_ids: Tensor,
        attention_mask: Tensor | None,
        positions: Tensor | None,
        cache: Any,
    ) -> _Stream:
        """Embeddings, causal mask and rotary angles of one sub-model, as its own forward builds them."""
        from transformers.masking_utils import create_causal_mask

        inner: Any = lm.model
        embeds = inner.embed_tokens(input_ids)
        if positions is None:
            seen = cache.get_seq_length() if cache is not None else 0
            positions = (torch.arange(embeds.shape[1], device=embeds.device) + seen).unsqueeze(0)
        mask = create_causal_mask(
            config=inner.config,
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            past_key_values=cache,
            position_ids=positions,
        )
        rotary = inner.rotary_emb(embeds, position_ids=positions)
        return _Stream(embeds, mask, rotary, positions, cache)

    @staticmethod
    def _layer(lm: Any, index: int, stream: _Stream, use_cache: bool) -> None:
        layer = lm.model.layers[index]
        stream.hidden = layer(
            stream.hidden,
            attention_mask=stream.mask,
            position_embeddings=stream.rotary,
            position_ids=stream.positions,
            past_key_values=stream.cache,
            use_cache=use_cache,
        )

    def _caches(self, past: StitchedCache | None, use_cache: bool) -> dict[str, Any]:
        if past is not None:
            missing = {HUB, *self.expert_names} - set(past.caches)
            if missing:
                raise BarkitError(f"KV cache lacks sub-models {sorted(missing)}; start a fresh cache")
            return past.caches
        if not use_cache:
            return {}
        from transformers.cache_utils import DynamicCache

        models: dict[str, Any] = {HUB: self.hub, **dict(self.experts.items())}
        return {name: DynamicCache(config=m.config) for name, m in models.items()}

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        past_key_values: StitchedCache | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
        **_: Any,
    ) -> Any:
        from transformers.modeling_outputs import CausalLMOutputWithPast

        use_cache = bool(use_cache) or past_key_values is not None
        caches = self._caches(past_key_values, use_cache)
        hub = self._start(self.hub, input_ids, attention_mask, position_ids, caches.get(HUB))
        experts = {
            n: self._start(m, input_ids, attention_mask, position_ids, caches.get(n))
            for n, m in self.experts.items()
        }
        points = self.stitches.points
        for index in range(self.config.num_hidden_layers):
            self._layer(self.hub, index, hub, use_cache)
            if index > points[-1]:
                continue  # experts' later layers would feed nothing
            for name, stream in experts.items():
                self._layer(self.experts[name], index, stream, use_cache)
            if index in points:
                self._stitch(points.index(index), hub, experts)
        hidden = self.hub.model.norm(hub.hidden)
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.hub.lm_head(hidden)
        cache: Any = StitchedCache(caches) if use_cache else None
        return CausalLMOutputWithPast(logits=logits, past_key_values=cache)

    def _stitch(self, k: int, hub: _Stream, experts: dict[str, _Stream]) -> None:
        """Both directions of stitch point ``k``, each reading the states from before the point."""
        before = hub.hidden
        states = {name: s.hidden for name, s in experts.items()}
        hub.hidden = self.stitches.into_hub(k, before, states, exact_hub=self._exact_hub)
        for name, stream in experts.items():
            point: ExpertStitchPoint = self.stitches.experts[name][k]  # type: ignore[index]
            stream.hidden = point.into_expert(stream.hidden, before)
