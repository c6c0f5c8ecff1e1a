"""Activations rebuilt in backward instead of kept: the outputs of the fused RMSNorm and SwiGLU
(part of `training.fused_ops`).

A LoRA layer keeps its input for backward (its A gradient is (dY B)^T x), and with LoRA on every
linear layer those inputs are the norms' outputs (q/k/v, gate/up) and the SwiGLU product (down): on
SmolLM2-135M three of the ~six [tokens, hidden]-to-[tokens, 1,536] tensors a layer keeps. Each is
one elementwise step from tensors autograd keeps anyway (the norm's input, the gate and up
projections), so instead of keeping it, autograd keeps a note of how to make it again: while a
decoder runs its training forward, `saved_tensors_hooks` packs any tensor that is (a view of) a
registered output as that note, and unpacking in backward recomputes it with the same ops, bit for
bit. Tensors that change after they are registered (in-place ops), or whose sources are gone, are
kept as usual. Measured in docs/performance.md.

Not used where the sources may be absent in backward (ZeRO-3 gathers a norm's weight only for its
own module), under gradient checkpointing (it recomputes everything already), nor while
`torch.compile` traces the model.
"""

from __future__ import annotations

import contextlib
import functools
import types
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class _Entry:
    out: weakref.ref
    version: int
    make: Callable[..., torch.Tensor]
    sources: tuple[weakref.ref, ...]


@dataclass
class _Note:
    """A packed tensor: `make(*sources)` viewed as the tensor was."""

    make: Callable[..., torch.Tensor]
    sources: tuple[torch.Tensor, ...]
    shape: torch.Size
    stride: tuple[int, ...]
    offset: int


_registry: dict[int, _Entry] | None = None  # storage address -> entry, while a decoder's forward runs
notes_made = 0  # tensors packed as notes so far (for tests and profiling)


def register(out: torch.Tensor, make: Callable[..., torch.Tensor], *sources: torch.Tensor) -> torch.Tensor:
    """Note that `out` equals `make(*sources)` (same ops, so the same bits); returns `out`."""
    if _registry is not None and out.requires_grad and all(s.numel() for s in sources):
        _registry[out.untyped_storage().data_ptr()] = _Entry(
            weakref.ref(out), out._version, make, tuple(weakref.ref(s) for s in sources)
        )
    return out


def _pack(tensor: torch.Tensor) -> Any:
    entry = _registry.get(tensor.untyped_storage().data_ptr()) if _registry else None
    if entry is None:
        return tensor
    out = entry.out()
    sources = tuple(ref() for ref in entry.sources)
    if out is None or out._version != entry.version or tensor._version != entry.version or any(s is None for s in sources):
        return tensor
    global notes_made
    notes_made += 1
    return _Note(entry.make, sources, tensor.shape, tensor.stride(), tensor.storage_offset())  # type: ignore[arg-type]


def _unpack(packed: Any) -> torch.Tensor:
    if not isinstance(packed, _Note):
        return packed
    with torch.no_grad():
        full = packed.make(*packed.sources)
    return full.as_strided(packed.shape, packed.stride, packed.offset)


@contextlib.contextmanager
def rebuilding() -> Iterator[None]:
    """Outputs registered inside are packed as notes (nested calls share the outer scope)."""
    global _registry
    if _registry is not None or not torch.is_grad_enabled():
        yield
        return
    _registry = {}
    try:
        with torch.autograd.graph.saved_tensors_hooks(_pack, _unpack):
            yield
    finally:
        _registry = None


def apply_rebuilding(lm: torch.nn.Module) -> bool:
    """Run the decoder of causal LM (or reward model) `lm` (its `base_model`, e.g. LlamaModel) inside
    `rebuilding`, unless its parameters are ZeRO-3 shards; returns whether it was applied."""
    decoder = getattr(lm, "base_model", lm)
    if any(hasattr(p, "ds_id") for p in decoder.parameters()):
        return False
    forward = type(decoder).forward  # the class's: a deep copy of the model rebinds `rebuilt` to itself

    @functools.wraps(forward)
    def rebuilt(self: Any, *args: Any, **kwargs: Any) -> Any:
        if (
            not torch.is_grad_enabled()
            or torch.compiler.is_compiling()  # a traced graph keeps its own saved tensors
            or getattr(self, "gradient_checkpointing", False)  # transformers sets it on the decoder
        ):
            return forward(self, *args, **kwargs)
        with rebuilding():
            return forward(self, *args, **kwargs)

    decoder.forward = types.MethodType(rebuilt, decoder)
    return True
