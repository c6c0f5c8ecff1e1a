"""rm: a reward model — the causal LM under a one-score head, pairwise loss on preference pairs.

Trained with TRL's `RewardTrainer`, which fits llmft's tokenization without changes: it accepts
pre-tokenized pairs (`chosen_ids` / `rejected_ids`) and then does exactly what an rm stage is —
pads chosen and rejected into one batch, reads the score at the last non-pad token (the HF
sequence-classification head does that from `config.pad_token_id`), minimises
-logsigmoid(r_chosen - r_rejected), and logs `accuracy` (pairwise: r_chosen > r_rejected) and
`margin` (mean r_chosen - r_rejected), as `eval_accuracy` / `eval_margin` on the eval split
(TRL averages per-batch values: exact when the eval pairs fill whole micro-batches). Writing our own compute_loss would repeat those ~20 lines and lose TRL's metrics and
center_rewards option, for nothing.

The pairs are llmft's own (`prepare_data("rm", ...)`: the run's chat template, truncation, drops
counted, the cache), each side cut after its reply's end-of-turn token, so the score is read
there (see `llmft.modeling.reward`). The model comes from the run context, which loads the
checkpoint for the reward task: the load guard lets only the new `score` head be missing, and
LoRA trains the head in full and saves it with the adapter (`modules_to_save=["score"]`).
`training.max_tokens_per_forward` runs a micro-batch in passes of whole pairs (`PairPasses`): the
loss is a mean over pairs, so the gradient is unchanged.
"""

from __future__ import annotations

from typing import Any

from llmft.builders.context import RunContext
from llmft.builders.protocol import TrainerLike
from llmft.builders.trainer import trl_config
from llmft.registry import register_builder


def trainer_class() -> type:
    from trl import RewardTrainer

    from llmft.builders.preference import PairPasses

    class LlmftRewardTrainer(PairPasses, RewardTrainer):
        """TRL's RewardTrainer, a micro-batch run in passes of whole pairs when `forward_tokens` is set."""

    return LlmftRewardTrainer


@register_builder("rm", modes=("full", "freeze", "lora"))
def build_rm(ctx: RunContext) -> TrainerLike:
    from trl import RewardConfig

    from llmft.builders.preference import finish, keep_only_adapter_dropout, llmft_callbacks, pair_dataset, prepared_pairs
    from llmft.builders.trl_common import take_fast_forward
    from llmft.modeling.reward import through_reply

    train, evaluation = prepared_pairs(ctx)  # before the model loads, so data errors surface fast

    def dataset(pairs: list) -> Any:
        return pair_dataset(
            {
                "chosen_ids": [through_reply(p.chosen) for p in pairs],
                "rejected_ids": [through_reply(p.rejected) for p in pairs],
            }
        )

    model = ctx.model
    keep_only_adapter_dropout(model)
    args = trl_config(
        RewardConfig,
        ctx,
        max_length=None,  # llmft already fitted every pair to data.max_length (and counted the drops)
        disable_dropout=False,  # done above, keeping LoRA's dropout
        pad_to_multiple_of=8,
    )
    trainer = trainer_class()(
        model=model,
        args=args,
        train_dataset=dataset(train),
        eval_dataset=dataset(evaluation) if evaluation else None,
        processing_class=ctx.tokenizer,
        callbacks=llmft_callbacks(ctx, model),
    )
    trainer.forward_tokens = take_fast_forward(ctx, trainer).forward_tokens
    return finish(trainer, ctx)
