"""Keys and values kept from one scoring pass for a later pass that continues the same prompts
(kto's KL replies: `llmft.fastpath.kl_replies`).

`capturing()` around a padding-free scoring call keeps what each attention layer computed for the
flat row (`Capture`: keys and values after the rotary embedding, detached: under autograd they are
the tensors attention saved for backward anyway) and the row's layout (`FlatRow.index`: where each
padded position went). `extending(capture, spans, prefixes)` around a second call makes each span of
its flat row attend to the kept keys and values at `prefixes` (flat indices of the first call)
before itself, causally: a sequence that continues a prompt the first call ran, computed from the
token before its continuation on (`llmft.fastpath.varlen_attention` reads both).

`hold`/`take_held`: the output of a scoring call run ahead of time (to capture its prompts), handed
to the caller's own identical call once, then forgotten.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Capture:
    keys: dict[int, torch.Tensor] = field(default_factory=dict)  # layer index -> [1, kv_heads, tokens, dim]
    values: dict[int, torch.Tensor] = field(default_factory=dict)
    flat: Any = None  # the FlatRow the call scored (`llmft.fastpath.unpadded_scoring`)
    valid: bool = True

    def record(self, module: torch.nn.Module, key: torch.Tensor, value: torch.Tensor, dropout: float) -> None:
        """One attention layer's keys and values; anything but one flat row without dropout, each
        layer once, spoils the capture."""
        layer = getattr(module, "layer_idx", None)
        if layer is None or key.shape[0] != 1 or dropout or layer in self.keys:
            self.valid = False
            return
        self.keys[layer], self.values[layer] = key.detach(), value.detach()

    def note_flat(self, flat: Any) -> None:
        if self.flat is not None:
            self.valid = False
        self.flat = flat

    def complete(self, layers: int) -> bool:
        """Every one of `layers` attention layers kept, for one flat row."""
        return self.valid and self.flat is not None and sorted(self.keys) == list(range(layers))


@dataclass
class Extension:
    capture: Capture
    spans: list[tuple[int, int]]  # [start, end) of each sequence in the new flat row
    prefixes: list[torch.Tensor]  # the flat indices (in the captured row) each sequence continues


_STATE: ContextVar[Capture | Extension | None] = ContextVar("llmft_prompt_cache", default=None)


def active() -> Capture | Extension | None:
    return _STATE.get()


@contextmanager
def capturing() -> Iterator[Capture]:
    capture = Capture()
    token = _STATE.set(capture)
    try:
        yield capture
    finally:
        _STATE.reset(token)


@contextmanager
def extending(capture: Capture, spans: list[tuple[int, int]], prefixes: list[torch.Tensor]) -> Iterator[None]:
    token = _STATE.set(Extension(capture, spans, prefixes))
    try:
        yield
    finally:
        _STATE.reset(token)


@dataclass
class _Held:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    context: tuple
    output: Any


_HELD: weakref.WeakKeyDictionary[torch.nn.Module, _Held] = weakref.WeakKeyDictionary()


def _context(model: torch.nn.Module) -> tuple:
    """What else decides a call's result: gradient mode and which adapters are on (peft)."""
    layer = next((m for m in model.modules() if hasattr(m, "active_adapters") and hasattr(m, "lora_A")), None)
    adapters = (bool(layer.disable_adapters), tuple(layer.active_adapters)) if layer is not None else ()
    return (torch.is_grad_enabled(), model.training, adapters)


def hold(
    model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor, output: Any
) -> None:
    """Keep `output` of `model`'s scoring call for the next identical call (`take_held`)."""
    _HELD[model] = _Held(input_ids, attention_mask, labels, _context(model), output)


def take_held(model: torch.nn.Module, input_ids: Any, attention_mask: Any, labels: Any) -> Any | None:
    """The held output when this call is the one it was computed for (the same input tensors, equal
    labels, the same gradient mode, training flag and adapters); any call forgets it."""
    held = _HELD.pop(model, None)
    if held is None or input_ids is not held.input_ids or attention_mask is not held.attention_mask:
        return None
    if not isinstance(labels, torch.Tensor) or labels.shape != held.labels.shape or not torch.equal(labels, held.labels):
        return None
    return held.output if _context(model) == held.context else None
