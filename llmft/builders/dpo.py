"""dpo: direct preference optimisation with TRL's DPOTrainer (the loss, the reference handling,
precomputed reference log-probs and the metrics are TRL's; llmft rewrites none of it).

What llmft changes is only what TRL trains on. TRL's own tokenization of conversational pairs
takes as completion everything after the prompt's generation prompt, so with ChatML-style
templates it also scores the newline the template writes after the end-of-turn token; llmft
supervises the reply and its end-of-turn token only (as in sft). So the pairs are llmft's own
(`prepare_data("dpo", ...)`: the run's chat template, truncation, drops counted, the cache) and
`PairCollator` hands TRL the batch layout its loss reads (input_ids, attention_mask,
completion_mask), with completion_mask = llmft's labels. `_prepare_dataset` is the one override:
the data arrives tokenized, so TRL's re-tokenization is skipped. tests/integration/test_dpo.py pins
that the masks TRL trains on are llmft's.

Reference: LoRA — the base with the adapter disabled (no second copy of the model). TRL keeps a
frozen copy of the adapter it is handed; a fresh adapter is exactly the base, so that copy is
dropped; continuing an adapter (`finetune.adapter_path`), the copy stays (saved under `ref/`) and
is the reference, as DPO needs: the policy where training started. Full — a frozen copy of the
loaded model, made here so it comes from llmft's loader (GGUF, load guard) rather than TRL
reloading `model.path`. `stage.reference: precomputed` — TRL computes the reference log-probs
once before training, from the model before any update, and keeps no reference at all.
"""

from __future__ import annotations

import logging
from typing import Any

from llmft.builders.context import RunContext
from llmft.builders.protocol import TrainerLike
from llmft.builders.trainer import trl_config
from llmft.config.stage import Reference
from llmft.registry import register_builder

log = logging.getLogger("llmft")


def trainer_class() -> type:
    from trl import DPOTrainer

    from llmft.builders.preference import PairPasses

    class LlmftDPOTrainer(PairPasses, DPOTrainer):
        """TRL's DPOTrainer on pairs llmft has already tokenized (see the module docstring), a
        micro-batch run in passes of whole pairs when `forward_tokens` is set (`PairPasses`)."""

        def _prepare_dataset(self, dataset: Any, processing_class: Any, args: Any, dataset_name: str) -> Any:
            return dataset

    return LlmftDPOTrainer


@register_builder("dpo", modes=("full", "freeze", "lora", "qlora"))
def build_dpo(ctx: RunContext) -> TrainerLike:
    import copy

    from trl import DPOConfig

    from llmft.builders.preference import (
        PairCollator,
        finish,
        keep_only_adapter_dropout,
        llmft_callbacks,
        pair_dataset,
        prepared_pairs,
    )
    from llmft.builders.trl_common import settle_lora_reference, take_fast_forward

    stage = ctx.recipe.stage
    train, evaluation = prepared_pairs(ctx)  # before the model loads, so data errors surface fast

    def dataset(pairs: list) -> Any:
        return pair_dataset(
            {
                f"{side}_{key}": [getattr(getattr(p, side), key) for p in pairs]
                for side in ("chosen", "rejected")
                for key in ("input_ids", "labels")
            }
        )

    model = ctx.model
    keep_only_adapter_dropout(model)  # before the fused LoRA kernel is chosen: it takes dropout-free layers
    reference = stage.reference_source(ctx.recipe.finetune)
    ref_model = None  # LoRA: the base with the adapter disabled; precomputed: none kept
    if reference is Reference.FROZEN_COPY:
        ref_model = copy.deepcopy(model).eval().requires_grad_(False)
    args = trl_config(
        DPOConfig,
        ctx,
        beta=stage.beta,
        loss_type=[stage.loss_type],
        label_smoothing=stage.label_smoothing,
        precompute_ref_log_probs=reference is Reference.PRECOMPUTED,
        max_length=None,  # llmft already fitted every pair to data.max_length (and counted the drops)
        disable_dropout=False,  # done above, keeping LoRA's dropout
    )
    trainer = trainer_class()(
        model=model,
        ref_model=ref_model,
        args=args,
        data_collator=PairCollator(ctx.tokenizer.pad_token_id),
        train_dataset=dataset(train),
        eval_dataset=dataset(evaluation) if evaluation else None,
        processing_class=ctx.tokenizer,
        callbacks=llmft_callbacks(ctx, model),
    )
    settle_lora_reference(model, keep_copy=not ctx.recipe.finetune.starts_at_base)
    log.info(reference.describe())
    own_head = not trainer.use_weighting  # WPO's weights need log(sum p^2), which only TRL's head computes
    trainer.forward_tokens = take_fast_forward(ctx, trainer, own_head=own_head).forward_tokens
    return finish(trainer, ctx)
