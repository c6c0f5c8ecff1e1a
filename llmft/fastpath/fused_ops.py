"""RMSNorm and SwiGLU that keep less for backward (`training.fused_ops`; LoRA layers: `fused_lora`).

Autograd keeps what each small op needs: transformers' Llama RMSNorm keeps an fp32 copy of its input
([tokens, hidden] x 4 bytes) and the MLP keeps gate, up, silu(gate) and their product. These
functions compute the same values but keep only the bf16/fp16 input and the fp32 reciprocal RMS
(norm), or gate and up (SwiGLU), and recompute the rest in backward: on SmolLM2-135M that is about
a quarter of the activation memory, for a few elementwise passes. Their outputs, which the LoRA
layers after them would keep as inputs, are rebuilt in backward (`llmft.fastpath.recompute`).

Applied per module instance (the module's `forward` is replaced; parameters, names and state dicts
are untouched) for the classes listed below, whose formulas these are.
"""

from __future__ import annotations

import functools
import types
from typing import Any

import torch

from llmft.fastpath import recompute
from llmft.fastpath.fused_lora import apply_fused_lora
from llmft.modeling.families import FAMILIES

#: RMSNorm classes computing weight * (x / rms(x)) with the normalisation in fp32 (`llmft.modeling.families`).
RMSNORM_CLASSES = frozenset(f.rms_norm for f in FAMILIES.values() if f.rms_norm)
#: MLP classes computing down(act(gate(x)) * up(x)).
GATED_MLP_CLASSES = frozenset(f.gated_mlp for f in FAMILIES.values() if f.gated_mlp)
SILU_CLASSES = frozenset({"SiLU", "SiLUActivation"})


def _rstd(xf: torch.Tensor, eps: float) -> torch.Tensor:
    return torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)


def _rms_norm_values(x: torch.Tensor, weight: torch.Tensor, eps: float, rstd: torch.Tensor | None = None) -> torch.Tensor:
    """weight * x / rms(x), the normalisation in fp32: the forward, and its rebuild in backward (same ops, same bits)."""
    xf = x.float()
    return weight * (xf * (_rstd(xf, eps) if rstd is None else rstd)).to(x.dtype)


def _swiglu_values(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.silu(gate) * up


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        rstd = _rstd(x.float(), eps)
        ctx.save_for_backward(x, weight, rstd)
        return _rms_norm_values(x, weight, eps, rstd)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight, rstd = ctx.saved_tensors
        xhat = x.float() * rstd
        grad_weight = None
        if ctx.needs_input_grad[1]:
            grad_weight = (grad * xhat.to(x.dtype)).reshape(-1, x.shape[-1]).sum(0).to(weight.dtype)
        g = (grad * weight).float()
        grad_x = rstd * (g - xhat * (g * xhat).mean(-1, keepdim=True))
        return grad_x.to(x.dtype), grad_weight, None


class _SwiGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(gate, up)
        return _swiglu_values(gate, up)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        gate, up = ctx.saved_tensors
        g = gate.float()
        sig = torch.sigmoid(g)
        silu = g * sig
        gf = grad.float()
        grad_up = (gf * silu).to(up.dtype)
        grad_gate = (gf * up.float() * sig * (1 + g * (1 - sig))).to(gate.dtype)
        return grad_gate, grad_up


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return recompute.register(_RMSNorm.apply(x, weight, eps), functools.partial(_rms_norm_values, eps=eps), x, weight)


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return recompute.register(_SwiGLU.apply(gate, up), _swiglu_values, gate, up)


def _norm_forward(self: Any, hidden_states: torch.Tensor) -> torch.Tensor:
    eps = self.variance_epsilon if hasattr(self, "variance_epsilon") else self.eps
    return rms_norm(hidden_states, self.weight, eps)


def _mlp_forward(self: Any, x: torch.Tensor) -> torch.Tensor:
    return self.down_proj(swiglu(self.gate_proj(x), self.up_proj(x)))


def apply_fused_ops(model: torch.nn.Module) -> dict[str, int]:
    """Swap in the lean forwards where the module is one of the known classes (and peft's LoRA
    linear layers, `llmft.fastpath.fused_lora`), their outputs rebuilt in backward
    (`llmft.fastpath.recompute`); returns counts."""
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model  # under a peft wrapper
    if getattr(lm, "use_kernels", False):
        # transformers (with the `kernels` package) re-kernelizes the model on every train()/eval(),
        # which puts back the class forward of each hub-kernel layer (RMSNorm among them): ours
        # would be gone from the first training step on. Its torch fallbacks are what runs here anyway.
        lm.use_kernels = False
    counts = {"rms_norm": 0, "swiglu": 0, "lora": apply_fused_lora(model)}
    for module in model.modules():
        name = type(module).__name__
        if name in RMSNORM_CLASSES and hasattr(module, "weight"):
            module.forward = types.MethodType(_norm_forward, module)  # bound: deepcopy rebinds it
            counts["rms_norm"] += 1
        elif name in GATED_MLP_CLASSES and type(getattr(module, "act_fn", None)).__name__ in SILU_CLASSES:
            module.forward = types.MethodType(_mlp_forward, module)
            counts["swiglu"] += 1
    if counts["rms_norm"] or counts["swiglu"]:
        counts["rebuilt"] = int(recompute.apply_rebuilding(lm))
    return counts
