"""The fast path for next-token stages (pt, sft): what llmft does by default, and why, when it can.

Three parts, each on by default where it computes the same loss as the plain path, each with its
recipe switch, and each reported in the run log (and by `llmft plan`) with the reason it was or
was not taken:

- padding-free batches (`data.padding_free`): a micro-batch's examples are concatenated into one
  row, positions restarting per example; no pad token is computed and no example sees another.
- per-example attention: with SDPA, `llmft_sdpa_varlen` runs one causal kernel per example
  (`llmft.modeling.varlen_attention`); eager builds the block-diagonal mask from the positions,
  flash-attention 2 uses its variable-length kernel.
- chunked cross-entropy (`training.chunked_loss`): the output projection runs only on supervised
  positions, a chunk at a time, and no [tokens, vocabulary] logits are kept (`llmft.modeling.chunked_loss`).
- fused RMSNorm and SwiGLU (`training.fused_ops`) that keep less for backward (`llmft.modeling.fused_ops`).
- micro-batches cut into passes of at most `training.max_tokens_per_forward` tokens at example
  boundaries (`llmft.data.split`): the same gradient with one pass's activations alive at a time.
  `auto` cuts only when the memory plan says whole micro-batches do not fit the machine: each pass
  streams every weight from memory again (~0.15 s for SmolLM2-135M on 2 CPU cores).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterator

from llmft.config.recipe import Recipe

#: Model types whose causal-LM head is a plain linear projection of the final hidden states (no
#: logit soft-capping or scaling after it), so the chunked loss equals the model's own.
PLAIN_HEAD_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3", "phi3", "gemma"})


@dataclass(frozen=True)
class FastPath:
    batching: str  # padding-free | packed | padded
    attention: str  # the attn_implementation the model trains with
    chunked_loss: bool
    fused_ops: bool
    reasons: list[str] = field(default_factory=list)
    forward_tokens: int | None = None  # micro-batches cut into passes of at most this many tokens

    def describe(self) -> str:
        loss = "chunked cross-entropy" if self.chunked_loss else "the model's own loss"
        ops = ", fused RMSNorm/SwiGLU" if self.fused_ops else ""
        passes = f", passes of <= {self.forward_tokens} tokens" if self.forward_tokens else ""
        text = f"batches {self.batching}, attention {self.attention}, {loss}{ops}{passes}"
        return text + (f" ({'; '.join(self.reasons)})" if self.reasons else "")


def _causal_lm(model: Any) -> Any:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _chunked_loss_blocker(recipe: Recipe, model: Any) -> str | None:
    causal_lm = _causal_lm(model)
    model_type = getattr(causal_lm.config, "model_type", None)
    head = causal_lm.get_output_embeddings() if hasattr(causal_lm, "get_output_embeddings") else None
    if model_type not in PLAIN_HEAD_MODEL_TYPES:
        return f"model type {model_type!r} is not one whose output head is known to be a plain projection"
    if head is None or getattr(head, "bias", None) is not None or not hasattr(head, "weight"):
        return "the model's output head is not a bias-free linear layer"
    if type(head.weight).__name__ != "Parameter" or head.weight.dim() != 2:
        return "the output head's weight is quantized or sharded"
    if getattr(recipe.distributed, "zero_stage", 0) == 3:
        return "ZeRO-3 shards the output head's weight"
    if recipe.distributed.launches and not recipe.distributed.uses_deepspeed and head.weight.requires_grad:
        # measured (torch 2.13): DDP fails with "Expected to mark a variable ready only once" when
        # a trained weight is used outside the wrapped forward
        return "DDP (several processes without DeepSpeed) needs a trained output head inside the model's forward"
    return None


def _padding_free_blocker(model: Any) -> str | None:
    causal_lm = _causal_lm(model)
    if not getattr(causal_lm, "_supports_attention_backend", False):
        return f"{type(causal_lm).__name__} does not take its attention from transformers' attention registry"
    return None


def choose(recipe: Recipe, model: Any, device: str | None = None, budget_bytes: int | None = None) -> FastPath:
    """Decide the path; an explicit `true` that cannot be honoured is a UserError naming the key.
    `device` (cpu | cuda) and its memory `budget_bytes`: the machine to decide for, default this one
    (`llmft plan` passes its own)."""
    from llmft.errors import UserError

    reasons: list[str] = []
    data, training = recipe.data, recipe.training
    attention = recipe.model.attn_implementation
    if data.packing:
        batching = "packed"
    elif not data.padding_free:
        batching = "padded"
        reasons.append("data.padding_free is false")
    elif blocker := _padding_free_blocker(model):
        if "padding_free" in data.model_fields_set:
            raise UserError(f"data.padding_free: {blocker}; set data.padding_free: false for this model")
        batching = "padded"
        reasons.append(f"padding-free off: {blocker}")
    else:
        batching = "padding-free"
    if batching != "padded" and attention == "sdpa":
        from llmft.modeling.varlen_attention import register

        attention = register()
    chunked = training.chunked_loss
    if chunked and (blocker := _chunked_loss_blocker(recipe, model)):
        if "chunked_loss" in training.model_fields_set:
            raise UserError(f"training.chunked_loss: {blocker}; set training.chunked_loss: false for this model")
        chunked = False
        reasons.append(f"chunked loss off: {blocker}")
    elif not chunked:
        reasons.append("training.chunked_loss is false")
    if not training.fused_ops:
        reasons.append("training.fused_ops is false")
    forward_tokens = resolve_forward_tokens(recipe, chunked, reasons)
    if forward_tokens == "auto":
        forward_tokens = _planned_pass_size(recipe, model, device, reasons, budget_bytes)
    return FastPath(batching, attention, chunked, training.fused_ops, reasons, forward_tokens)


def _planned_pass_size(recipe: Recipe, model: Any, device: str | None, reasons: list[str], budget_bytes: int | None) -> int | None:
    """`auto`: whole micro-batches unless the memory plan says they do not fit this machine."""
    import torch

    from llmft.plan.from_recipe import planned_pass_size

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return planned_pass_size(recipe, _causal_lm(model).config, device, reasons, budget_bytes)


def resolve_forward_tokens(recipe: Recipe, chunked: bool, reasons: list[str]) -> int | str | None:
    """`training.max_tokens_per_forward` where passes can run (None: micro-batches run whole; "auto":
    the memory plan decides, `llmft.plan.from_recipe`); `llmft plan` uses it too."""
    from llmft.errors import UserError

    wanted = recipe.training.max_tokens_per_forward
    if wanted is None:
        return None
    blocker = None
    if not chunked:
        blocker = "the passes are part of the chunked loss, which is off"
    elif recipe.distributed.launches or recipe.distributed.uses_deepspeed:
        blocker = "several processes or DeepSpeed count each backward as a micro-batch"
    if blocker:
        if wanted != "auto":
            raise UserError(f"training.max_tokens_per_forward: {blocker}; remove it or set it to null")
        if chunked:  # without the chunked loss its own reason already says why
            reasons.append(f"micro-batches run whole: {blocker}")
        return None
    return wanted


def apply(path: FastPath, model: Any, precision: str) -> None:
    """Set the model up for the chosen path: attention kernel, fused ops, and LoRA inputs not
    round-tripped to fp32 under autocast."""
    causal_lm = _causal_lm(model)
    if causal_lm.config._attn_implementation != path.attention:
        causal_lm.set_attn_implementation(path.attention)
    if path.fused_ops:
        from llmft.modeling.fused_ops import apply_fused_ops

        apply_fused_ops(model)
    if precision in ("bf16", "fp16"):
        # Under autocast a LoRA matmul runs in bf16/fp16 anyway; peft's cast of its input to the fp32
        # adapter dtype would only add a copy there and back for every adapted layer.
        for module in model.modules():
            if hasattr(module, "cast_input_dtype_enabled"):
                module.cast_input_dtype_enabled = False


@contextlib.contextmanager
def _head_passthrough(head: Any) -> Iterator[None]:
    """Make the output head return its input: the model's `logits` are then the final hidden states."""
    head.forward = lambda hidden: hidden
    try:
        yield
    finally:
        del head.forward


def final_hidden(model: Any, inputs: dict[str, Any], causal_lm: Any | None = None) -> tuple[Any, Any]:
    """(final hidden states, output head) from a forward through `model` itself — so DDP/DeepSpeed
    wrappers and peft see a normal forward — with the head's projection left to the caller."""
    head = (causal_lm or _causal_lm(model)).get_output_embeddings()
    with _head_passthrough(head):
        return model(**inputs).logits, head


def chunked_loss_trainer_class(forward_tokens: int | None = None) -> type:
    from transformers import Trainer
    from transformers.modeling_outputs import CausalLMOutput

    from llmft.data.split import split_batch
    from llmft.modeling.chunked_loss import IGNORE, causal_lm_loss_sum

    class ChunkedLossTrainer(Trainer):
        """A Trainer whose next-token loss is `causal_lm_loss_sum` over the model's final hidden states,
        a micro-batch run in passes of at most `forward_tokens` tokens."""

        def training_step(self, model, inputs, num_items_in_batch=None):
            pieces = split_batch(inputs, forward_tokens) if forward_tokens else [inputs]
            if len(pieces) == 1:
                return super().training_step(model, inputs, num_items_in_batch)
            if num_items_in_batch is None:  # what the whole micro-batch would divide by, after accumulation
                supervised = (inputs["labels"][:, 1:] != IGNORE).sum().clamp(min=1)
                num_items_in_batch = supervised * self.current_gradient_accumulation_steps
            return sum(super(ChunkedLossTrainer, self).training_step(model, piece, num_items_in_batch) for piece in pieces)

        def _head_dtype(self, weight):
            """The output projection's compute dtype on the plain path: autocast's under mixed precision."""
            import torch

            return torch.bfloat16 if self.args.bf16 else torch.float16 if self.args.fp16 else weight.dtype

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            labels = inputs.pop("labels")
            hidden, head = final_hidden(model, inputs, _causal_lm(self.accelerator.unwrap_model(model)))
            total = causal_lm_loss_sum(hidden, head.weight, labels, self._head_dtype(head.weight))
            self.loss_is_scaled_for_ga = num_items_in_batch is not None
            if num_items_in_batch is None:
                loss = total / (labels[:, 1:] != IGNORE).sum().clamp(min=1)
            else:
                loss = total / num_items_in_batch
                if self.args.average_tokens_across_devices:
                    loss = loss * self.accelerator.num_processes  # the count is global; DDP averages
            return (loss, CausalLMOutput(loss=loss)) if return_outputs else loss

    return ChunkedLossTrainer
