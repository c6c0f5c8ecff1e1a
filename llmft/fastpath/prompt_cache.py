"""Keys and values kept from one scoring pass for a later pass that continues the same prompts
(kto's KL replies: `llmft.fastpath.kl_replies`).

`capturing(wanted)` around a padding-free scoring call keeps what each attention layer computed for
the wanted prompts (`Capture`: keys and values after the rotary embedding, found in the flat row
through `FlatRow.index`, copied out without gradient). `extending(capture, spans)` around a second
call makes span i of its flat row attend to prompt i's kept keys and values before itself,
causally: a sequence that continues a prompt the first call ran, computed from the token before its
continuation on (`llmft.fastpath.varlen_attention` reads both).

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
    """The keys and values of the prompts `wanted` ((row, start, length) in the padded batch) as one
    flat run each layer: prompt i at [starts[i], starts[i] + length)."""

    wanted: list[tuple[int, int, int]]
    keys: dict[int, torch.Tensor] = field(default_factory=dict)  # layer index -> [1, kv_heads, prompt tokens, dim]
    values: dict[int, torch.Tensor] = field(default_factory=dict)
    keep: torch.Tensor | None = None  # the flat row's indices of the wanted tokens
    starts: list[int] = field(default_factory=list)
    valid: bool = True

    def note_flat(self, flat: Any) -> None:
        """Where the wanted tokens went in the flat row the call scores (`FlatRow.index`)."""
        if self.keep is not None:
            self.valid = False
            return
        runs = [flat.index[row, start : start + n] for row, start, n in self.wanted]
        self.keep = torch.cat(runs)
        self.starts = [0]
        for run in runs[:-1]:
            self.starts.append(self.starts[-1] + run.numel())
        self.valid = self.valid and bool((self.keep >= 0).all())

    def record(self, module: torch.nn.Module, key: torch.Tensor, value: torch.Tensor, dropout: float) -> None:
        """One attention layer's keys and values of the wanted tokens (copied: the rest is not kept
        alive); anything but one flat row without dropout, each layer once, spoils the capture."""
        layer = getattr(module, "layer_idx", None)
        if layer is None or self.keep is None or key.shape[0] != 1 or dropout or layer in self.keys:
            self.valid = False
            return
        self.keys[layer], self.values[layer] = key.detach()[:, :, self.keep], value.detach()[:, :, self.keep]

    def complete(self, layers: int) -> bool:
        """Every one of `layers` attention layers kept, for one flat row."""
        return self.valid and self.keep is not None and sorted(self.keys) == list(range(layers))


@dataclass
class Extension:
    capture: Capture
    spans: list[tuple[int, int]]  # [start, end) of each sequence in the new flat row, continuing prompt i of the capture


_STATE: ContextVar[Capture | Extension | None] = ContextVar("llmft_prompt_cache", default=None)


def active() -> Capture | Extension | None:
    return _STATE.get()


@contextmanager
def capturing(wanted: list[tuple[int, int, int]]) -> Iterator[Capture]:
    capture = Capture(wanted)
    token = _STATE.set(capture)
    try:
        yield capture
    finally:
        _STATE.reset(token)


@contextmanager
def extending(capture: Capture, spans: list[tuple[int, int]]) -> Iterator[None]:
    token = _STATE.set(Extension(capture, spans))
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
