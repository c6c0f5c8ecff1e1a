"""The fast path's trainer: a transformers Trainer whose next-token loss is the chunked
cross-entropy over the model's final hidden states, a micro-batch run in passes when asked."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from llmft.fastpath.decide import causal_lm


@contextlib.contextmanager
def head_passthrough(head: Any) -> Iterator[None]:
    """Make the output head return its input: the model's `logits` are then the final hidden states."""
    head.forward = lambda hidden: hidden
    try:
        yield
    finally:
        del head.forward


def final_hidden(model: Any, inputs: dict[str, Any], lm: Any | None = None) -> tuple[Any, Any]:
    """(final hidden states, output head) from a forward through `model` itself — so DDP/DeepSpeed
    wrappers and peft see a normal forward — with the head's projection left to the caller (`lm`:
    the causal LM inside, when `model` is wrapped)."""
    head = (lm or causal_lm(model)).get_output_embeddings()
    with head_passthrough(head):
        return model(**inputs).logits, head


def chunked_loss_trainer_class(forward_tokens: int | None = None, head_dtype: torch.dtype | None = None) -> type:
    """`head_dtype`: the output projection's compute dtype, as on the plain path: autocast's under
    mixed precision (`Resolved.autocast_dtype`); None: the head weight's own."""
    from transformers import Trainer
    from transformers.modeling_outputs import CausalLMOutput

    from llmft.fastpath.chunked_loss import IGNORE, causal_lm_loss_sum
    from llmft.fastpath.passes import split_batch

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

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            labels = inputs.pop("labels")
            hidden, head = final_hidden(model, inputs, causal_lm(self.accelerator.unwrap_model(model)))
            total = causal_lm_loss_sum(hidden, head.weight, labels, head_dtype or head.weight.dtype)
            self.loss_is_scaled_for_ga = num_items_in_batch is not None
            if num_items_in_batch is None:
                loss = total / (labels[:, 1:] != IGNORE).sum().clamp(min=1)
            else:
                loss = total / num_items_in_batch
                if self.args.average_tokens_across_devices:
                    loss = loss * self.accelerator.num_processes  # the count is global; DDP averages
            return (loss, CausalLMOutput(loss=loss)) if return_outputs else loss

    return ChunkedLossTrainer
