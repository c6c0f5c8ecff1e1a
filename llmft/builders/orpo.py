"""orpo: odds-ratio preference optimisation (TRL's experimental ORPOTrainer): the chosen reply's
next-token loss plus `beta` times an odds-ratio term against the rejected one. No reference model."""

from __future__ import annotations

from typing import Any

from llmft.builders.context import RunContext
from llmft.builders.protocol import TrainerLike
from llmft.builders.trainer import trl_config
from llmft.builders.trl_common import trl_datasets, trl_trainer
from llmft.registry import register_builder


def orpo_classes() -> tuple[type, type]:
    """TRL keeps ORPO under `trl.experimental` and warns on every import; llmft's tests exercise it
    against the installed TRL, so the notice is silenced here (a TRL that moves it fails loudly here)."""
    import warnings

    from trl.import_utils import TRLExperimentalWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TRLExperimentalWarning)
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer
    return ORPOConfig, ORPOTrainer


def orpo_config(ctx: RunContext) -> Any:
    ORPOConfig, _ = orpo_classes()
    recipe = ctx.recipe
    return trl_config(
        ORPOConfig,
        ctx,
        beta=recipe.stage.beta,
        max_length=recipe.data.max_length,
        disable_dropout=False,  # the model's own dropout is turned off by trl_trainer, LoRA's kept
    )


@register_builder("orpo", modes=("full", "freeze", "lora", "qlora"))
def build_orpo(ctx: RunContext) -> TrainerLike:
    from llmft.data.trl_rows import pair_rows

    data = ctx.recipe.data
    config = orpo_config(ctx)
    train, evaluation = trl_datasets(ctx, lambda items: pair_rows(items, ctx.tokenizer, data.max_length, data.truncation))
    return trl_trainer(ctx, orpo_classes()[1], config, train, evaluation)
