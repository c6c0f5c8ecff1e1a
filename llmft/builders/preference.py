"""Shared by the preference builders (rm, dpo): llmft-tokenized pairs as the `datasets.Dataset`s
TRL's trainers take, the batch layout of TRL's DPO loss, micro-batches in passes of whole pairs,
the checks and the callbacks."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from llmft.builders.context import RunContext
from llmft.builders.protocol import TrainerLike
from llmft.data.collate import PadCollator
from llmft.data.pairs import PairExample
from llmft.data.tokenize import IGNORE

log = logging.getLogger("llmft")


def prepared_pairs(ctx: RunContext) -> tuple[list[PairExample], list[PairExample] | None]:
    """llmft's tokenized pairs (template, masks, truncation, drops counted, cache), logged."""
    from llmft.data.dataset import log_prepared, prepare_for

    recipe = ctx.recipe
    prepared = prepare_for(recipe, ctx.tokenizer)
    log_prepared(prepared)
    return prepared.train, prepared.eval if recipe.evaluates else None


def pair_dataset(columns: dict[str, list[Any]]) -> Any:
    """A `datasets.Dataset` of the columns, plus `length` (both sides' tokens), which the
    length-grouped sampler (`data.group_by_length`) reads."""
    from datasets import Dataset

    first = next(iter(columns.values()))
    ids = [key for key in columns if key.endswith("ids")]
    lengths = [sum(len(columns[key][i]) for key in ids) for i in range(len(first))]
    return Dataset.from_dict({**columns, "length": lengths})


@dataclass(frozen=True)
class PairCollator:
    """llmft's pairs in the batch layout TRL's DPO loss computes on: the chosen rows, then the
    rejected rows, right-padded; `completion_mask` is llmft's label mask (the reply and its
    end-of-turn token, as in sft), so TRL sums log-probs over exactly those tokens. Reference
    log-probs precomputed by TRL ride along."""

    pad_id: int
    pad_to_multiple_of: int = 8

    def __call__(self, batch: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        rows = [
            {"input_ids": b[f"{side}_input_ids"], "labels": b[f"{side}_labels"]} for side in ("chosen", "rejected") for b in batch
        ]
        padded = PadCollator(self.pad_id, self.pad_to_multiple_of)(rows)
        out = {
            "input_ids": padded["input_ids"],
            "attention_mask": padded["attention_mask"],
            "completion_mask": (padded["labels"] != IGNORE).long(),
        }
        for key in ("ref_chosen_logps", "ref_rejected_logps"):
            if key in batch[0]:
                out[key] = torch.tensor([b[key] for b in batch], dtype=torch.float32)
        return out


class PairPasses:
    """A TRL pair trainer (DPOTrainer, RewardTrainer, ORPOTrainer: a loss that is a mean over pairs)
    whose micro-batch runs in passes of whole pairs when `forward_tokens` is set
    (`training.max_tokens_per_forward`, `llmft.fastpath.passes`): each pass's loss is its pairs' mean
    times their share of the micro-batch, so the gradient is the micro-batch's own while one pass's
    activations are alive at a time. TRL's per-batch metrics are then means over passes. Listed
    before the TRL class in the bases; `pieces` says how the trainer's batch layout is cut."""

    forward_tokens: int | None = None
    _loss_share = 1.0

    def pieces(self, inputs: dict[str, Any]) -> list[tuple[dict[str, Any], float]]:
        """(piece, share of the micro-batch's pairs): the chosen rows, then the rejected rows."""
        from llmft.fastpath.passes import split_pairs

        return split_pairs(inputs, self.forward_tokens)

    def start_pass(self, whole: dict[str, Any], piece: dict[str, Any], share: float) -> None:
        """Called before each pass of a micro-batch run in several, and once more with the whole
        micro-batch as its piece (share 1) after them."""

    def training_step(self, model: Any, inputs: Any, num_items_in_batch: Any = None) -> Any:
        pieces = self.pieces(inputs) if self.forward_tokens else [(inputs, 1.0)]
        if len(pieces) == 1:
            return super().training_step(model, inputs, num_items_in_batch)
        total = 0.0
        try:
            for piece, share in pieces:
                self._loss_share = share
                self.start_pass(inputs, piece, share)
                total = total + super().training_step(model, piece, num_items_in_batch)
        finally:
            self._loss_share = 1.0
            self.start_pass(inputs, inputs, 1.0)
        return total

    def compute_loss(self, model: Any, inputs: Any, return_outputs: bool = False, num_items_in_batch: Any = None) -> Any:
        out = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if self._loss_share == 1.0:
            return out
        return (out[0] * self._loss_share, out[1]) if return_outputs else out * self._loss_share


def keep_only_adapter_dropout(model: Any) -> None:
    """Turn off the model's own dropout, as TRL's `disable_dropout` does (scores and reference
    log-probs stay deterministic), but keep LoRA's: `finetune.dropout` is a recipe key and applies."""
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Dropout) and ".lora_dropout." not in name:
            module.p = 0.0


def finish(trainer: Any, ctx: RunContext) -> TrainerLike:
    """llmft prints its own log lines (LogLines) instead of the Trainer's dicts; the optimizer takes
    the recipe's parameter groups (`finetune.lora_plus_ratio`)."""
    from transformers.trainer_callback import PrinterCallback

    from llmft.builders.trainer import optimizer_groups

    trainer.remove_callback(PrinterCallback)
    return optimizer_groups(trainer, ctx)


def llmft_callbacks(ctx: RunContext, model: Any) -> list[Any]:
    """llmft's callbacks for the run (the random-init alarm only where the loss is a next-token loss)."""
    from llmft.callbacks import callbacks_for

    return callbacks_for(ctx.recipe, ctx.output_dir, vocab_size=model.config.vocab_size)
