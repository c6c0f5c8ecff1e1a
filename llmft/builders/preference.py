"""Shared by the preference builders (rm, dpo): llmft-tokenized pairs as the `datasets.Dataset`s
TRL's trainers take, the batch layout of TRL's DPO loss, the checks and the callbacks."""

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
