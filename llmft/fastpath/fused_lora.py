"""A LoRA linear layer as one autograd function (part of `training.fused_ops`).

peft computes `base(x) + lora_B(lora_A(dropout(x))) * scaling` as five autograd nodes, each with its
own casts of the fp32 adapter weights, a scaling pass and an add over the [tokens, out] output, and
the same again in backward. Here the forward is `x W^T` with `(x A^T) B^T` added in place by one
`addmm` (scaling as its alpha), and the backward takes dX = dY W + s (dY B) A, dA = s (dY B)^T x and
dB = s dY^T (x A^T) directly. Same values (to rounding); it keeps x (which peft keeps too) and the
rank-wide x A^T. Measured on the SmolLM2-135M LoRA benchmark (2 CPU cores): ~6% less training time
while micro-batches ran in passes of 512 tokens (whole-process wall-time ratio 0.937, range
0.898-0.976, two runs each); with whole micro-batches, speed-neutral (ratio of all fused ops on/off
1.002, range 0.980-1.032, three runs each) and 155 MB less peak memory.

Without gradient (rollouts, kto's KL pass, eval) the same products run without the autograd node,
with A and B cast to the input's dtype once and kept until an update changes them: decoding 8 rows
in bf16, the node and the casts had cost more than the products (grpo benchmark: x0.86 time per step,
three alternating runs each).

Applied per module instance (its `forward` replaced) where the result is exactly peft's formula:
one active adapter, not merged, no dropout, no DoRA, a plain frozen `nn.Linear` base without bias
whose weight is materialised (not a ZeRO-3 placeholder) and of the input's dtype; any other call
goes to peft's own forward.
"""

from __future__ import annotations

import types
from typing import Any

import torch


class _LoRALinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, lora_a, lora_b, scaling):
        a, b = lora_a.to(x.dtype), lora_b.to(x.dtype)
        flat = x.reshape(-1, x.shape[-1])
        out, xa = _products(flat, weight, a, b, scaling)
        ctx.save_for_backward(flat, weight, a, b, xa)
        ctx.scaling, ctx.input_shape, ctx.adapter_dtype = scaling, x.shape, lora_a.dtype
        return out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, grad):
        flat, weight, a, b, xa = ctx.saved_tensors
        s = ctx.scaling
        g = grad.reshape(-1, grad.shape[-1])
        gb = g @ b  # [tokens, rank]
        grad_x = (g @ weight).addmm_(gb, a, alpha=s).view(ctx.input_shape) if ctx.needs_input_grad[0] else None
        grad_a = (gb.t() @ flat).to(ctx.adapter_dtype).mul_(s) if ctx.needs_input_grad[2] else None
        grad_b = (g.t() @ xa).to(ctx.adapter_dtype).mul_(s) if ctx.needs_input_grad[3] else None
        return grad_x, None, grad_a, grad_b, None


def plain_adapter(module: Any) -> str | None:
    """The active adapter's name when the peft `lora.Linear` `module` computes W x (+ bias) + s B A x
    with one active adapter, not merged, no DoRA, no LoRA bias, over a plain `nn.Linear` whose weight
    is materialised (not a ZeRO-3 placeholder); else None. What its dropout, bias and dtypes allow is
    each caller's own rule (here and `llmft.fastpath.sampling`)."""
    names = module.active_adapters
    if module.merged or module.disable_adapters or len(names) != 1 or names[0] not in module.lora_A:
        return None
    name, base = names[0], module.base_layer
    weight = getattr(base, "weight", None)
    if (
        module.use_dora.get(name, False)
        or getattr(module, "lora_bias", {}).get(name, False)
        or type(base) is not torch.nn.Linear
        or weight is None
        or weight.dim() != 2
        or weight.numel() == 0
    ):
        return None
    return name


def _plain_adapter(module: Any, x: torch.Tensor) -> str | None:
    """The active adapter's name when this call is exactly W x + s B A x; else None."""
    name = plain_adapter(module)
    if name is None:
        return None
    weight = module.base_layer.weight
    if (
        not isinstance(module.lora_dropout[name], torch.nn.Identity)
        or module.base_layer.bias is not None
        or weight.requires_grad
        or weight.dtype != x.dtype
    ):
        return None
    return name


def _forward(self: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    name = None if (args or kwargs) else _plain_adapter(self, x)
    if name is None:
        return type(self).forward(self, x, *args, **kwargs)
    weight, lora_a, lora_b, scaling = (
        self.base_layer.weight,
        self.lora_A[name].weight,
        self.lora_B[name].weight,
        self.scaling[name],
    )
    if torch.is_grad_enabled():
        return _LoRALinear.apply(x, weight, lora_a, lora_b, scaling)
    return _no_grad_product(x, weight, *_adapter_copies(self, lora_a, lora_b, x.dtype), scaling)


def _no_grad_product(x: torch.Tensor, weight: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scaling: float) -> torch.Tensor:
    """`_LoRALinear.forward`'s products without an autograd node (rollouts, kto's KL pass, eval): the
    same values. Decoding 8 rows, the node and the adapter casts cost more than the products."""
    out, _ = _products(x.reshape(-1, x.shape[-1]), weight, a, b, scaling)
    return out.view(*x.shape[:-1], out.shape[-1])


def _products(
    flat: torch.Tensor, weight: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scaling: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x W^T + s (x A^T) B^T, x A^T) for x [tokens, in]: the sum by one in-place `addmm`."""
    xa = flat @ a.t()
    return torch.nn.functional.linear(flat, weight).addmm_(xa, b.t(), alpha=scaling), xa


def _adapter_copies(
    module: Any, lora_a: torch.Tensor, lora_b: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """A and B in `dtype`, cast once and kept on `module` until either changes (an optimizer step
    bumps its version) or another dtype is asked for."""
    key = (dtype, lora_a.data_ptr(), lora_a._version, lora_b.data_ptr(), lora_b._version)
    held = getattr(module, "_llmft_adapter_copies", None)
    if held is None or held[0] != key:
        held = (key, lora_a.detach().to(dtype), lora_b.detach().to(dtype))
        module._llmft_adapter_copies = held
    return held[1], held[2]


def uses_dora(model: torch.nn.Module) -> bool:
    """True when a LoRA layer of `model` is DoRA: its forward (magnitude over the combined weight's
    norm) stays peft's own."""
    return any(any(getattr(m, "use_dora", {}).values()) for m in model.modules() if hasattr(m, "lora_A"))


def apply_fused_lora(model: torch.nn.Module) -> int:
    """Swap the one-function forward into every peft `lora.Linear`; returns how many."""
    try:
        from peft.tuners.lora.layer import Linear as LoraLinear
    except ImportError:  # pragma: no cover - peft is a dependency
        return 0
    count = 0
    for module in model.modules():
        if type(module) is LoraLinear and not any(module.use_dora.values()):  # DoRA: peft's forward (`uses_dora`)
            module.forward = types.MethodType(_forward, module)
            count += 1
    return count
