"""Rollouts (grpo's and ppo's sampling) at nearly the plain model's speed, part of `training.fused_ops`.
`fast_sampling(model)` wraps the model's `generate` with two changes that keep what is sampled
(the same distribution; the same tokens from the same seed unless a rounding-level difference in a
logit tips a draw):

- LoRA layers as one product (`merged_lora`): for the call, each LoRA linear layer whose output is
  exactly W x + s B A x gets W + s B A in a tensor of its own and runs as one matrix product; the
  base weight is never written (merging in place and unmerging after would leave it off by a
  rounding step every round, compounding over a run), and the copies are freed when the call
  returns. A decoding step of a small batch costs what reading the weights costs, and peft's layer
  adds two small products, a scaling and an add per layer to it. Skipped (the layers' own forward
  runs: with `training.fused_ops`, `llmft.fastpath.fused_lora`'s product without an autograd node)
  where the copies would not fit in half the free memory, under autocast or where the base weight's
  dtype is not the adapter's (a bf16 copy would round the adapter's update away), and for any layer
  that is not plain LoRA (DoRA, dropout in effect, quantized or sharded base, several adapters).
- identical prompts prefilled once (`generate_sharing_prompts`): grpo asks for each prompt
  `num_generations` times; the prompt's tokens (all but the last) run once per distinct prompt,
  each row gets a copy of its prompt's KV cache, and `generate` goes on from the last prompt token.

Measured on SmolLM2-135M, LoRA r=16 on all linear layers, 8 rows (2 prompts x 4) of 62 prompt
tokens + 32 sampled, 2 CPU cores: the generate call x0.83-0.92 of peft's layers (noisy machine),
+290 MB peak for the copies; the grpo benchmark's time per step x0.50-0.66 of TRL's
(docs/performance.md).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import types
from collections.abc import Iterator
from typing import Any

import torch

from llmft.fastpath.fused_lora import plain_adapter
from llmft.plan.machine import free_memory


def _plain_lora(module: Any) -> str | None:
    """The active adapter's name when `module` (a peft `lora.Linear`) computes exactly W x + s B A x
    (+ bias) in this call's mode, with W and the adapter of one dtype; else None."""
    name = plain_adapter(module)
    if name is None:
        return None
    dropout = module.lora_dropout[name]
    dropout_on = not isinstance(dropout, torch.nn.Identity) and dropout.training and dropout.p > 0
    if dropout_on or module.fan_in_fan_out or module.base_layer.weight.dtype != module.lora_A[name].weight.dtype:
        return None
    return name


def _lora_layers(model: torch.nn.Module) -> list[tuple[Any, str]]:
    try:
        from peft.tuners.lora.layer import Linear as LoraLinear
    except ImportError:  # pragma: no cover - peft is a dependency
        return []
    found = []
    for module in model.modules():
        if type(module) is LoraLinear and (name := _plain_lora(module)) is not None:
            found.append((module, name))
    return found


def _fits(layers: list[tuple[Any, str]]) -> bool:
    """The merged copies fit in half of the memory free now on their device."""
    if not layers:
        return True
    weight = layers[0][0].base_layer.weight
    needed = sum(m.base_layer.weight.numel() * m.base_layer.weight.element_size() for m, _ in layers)
    return 2 * needed <= free_memory(weight.device)


@contextlib.contextmanager
def merged_lora(model: torch.nn.Module) -> Iterator[int]:
    """Within: every plain LoRA layer of `model` (see the module's docstring) runs as one product with
    W + s B A, computed on entry into a tensor of its own; on exit peft's forward is back and the
    copies go. Yields how many layers run merged (0: none could, or the copies would not fit)."""
    layers = _lora_layers(model)
    device = layers[0][0].base_layer.weight.device.type if layers else "cpu"
    if not layers or torch.is_autocast_enabled(device) or not _fits(layers):
        yield 0
        return
    previous = [module.__dict__.get("forward") for module, _ in layers]  # fused_lora's, where installed
    for module, name in layers:
        base = module.base_layer
        with torch.no_grad():
            weight = torch.addmm(base.weight, module.lora_B[name].weight, module.lora_A[name].weight, alpha=module.scaling[name])
        module.forward = functools.partial(torch.nn.functional.linear, weight=weight, bias=base.bias)
    try:
        yield len(layers)
    finally:
        for (module, _), forward in zip(layers, previous):
            if forward is None:
                del module.forward  # the class's own again
            else:
                module.forward = forward


def generate_sharing_prompts(model: Any, generate: Any, **kwargs: Any) -> Any:
    """`generate(**kwargs)` with each distinct prompt row's tokens (all but its last) run once: the
    rows' KV caches are copies of their prompt's. Anything it cannot share (no repeated rows, a cache
    passed in, beam search, a set cache implementation, inputs other than ids and mask) goes to
    `generate` as it is."""
    from transformers import DynamicCache

    ids, mask = kwargs.get("input_ids"), kwargs.get("attention_mask")
    config = kwargs.get("generation_config") or getattr(model, "generation_config", None)
    if (
        ids is None
        or mask is None
        or ids.dim() != 2
        or ids.shape[1] < 2
        or set(kwargs) - {"input_ids", "attention_mask", "generation_config"}
        or (getattr(config, "num_beams", None) or 1) != 1
        or getattr(config, "cache_implementation", None) is not None
    ):
        return generate(**kwargs)
    rows, inverse = torch.unique(torch.cat([ids, mask.to(ids.dtype)], dim=1), dim=0, return_inverse=True)
    if rows.shape[0] == ids.shape[0]:
        return generate(**kwargs)
    length = ids.shape[1]
    prompt_ids, prompt_mask = rows[:, : length - 1], rows[:, length : 2 * length - 1].to(mask.dtype)
    positions = (prompt_mask.long().cumsum(-1) - 1).masked_fill_(prompt_mask == 0, 1)  # as generate() numbers them
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    cache = DynamicCache(config=lm.config.get_text_config())
    last_only = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(type(lm).forward).parameters else {}
    with torch.no_grad():
        model(
            input_ids=prompt_ids,
            attention_mask=prompt_mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            **last_only,
        )
    cache.reorder_cache(inverse.to(ids.device))
    return generate(**kwargs, past_key_values=cache)


def fast_sampling(model: Any) -> str:
    """Wrap `model.generate` (on the instance) so every call samples through merged LoRA layers
    with repeated prompts prefilled once. Returns what the run log says."""
    plain = model.generate

    def generate(self: Any, *args: Any, **kwargs: Any) -> Any:
        if args:
            return plain(*args, **kwargs)
        with merged_lora(self):
            return generate_sharing_prompts(self, plain, **kwargs)

    model.generate = types.MethodType(generate, model)
    return "sampling: LoRA layers merged into a copy for each generate call where plain, repeated prompts prefilled once"
