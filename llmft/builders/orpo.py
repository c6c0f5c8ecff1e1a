"""orpo: odds-ratio preference optimisation (TRL's experimental ORPOTrainer): the chosen reply's
next-token loss plus `beta` times an odds-ratio term against the rejected one. No reference model.

TRL's ORPOTrainer runs the padded chosen and rejected rows through the model for their full
[rows, tokens, vocabulary] logits, then takes a cross-entropy and a log-softmax of them. llmft keeps
TRL's tokenization, loss and metrics, and replaces only that forward (`concatenated_forward`): the
rows are scored through TRL's fused log-prob head (never the full logits), which the fast path
(`take_fast_forward`) runs padding-free, each pair's prompt once, through llmft's frozen-head kernel
where the head does not train. From the per-token log-probs of every real token: the chosen rows'
mean next-token loss (TRL's, over prompt and reply), and each row's mean log-prob over its reply
(TRL's `average_log_prob`). The `logits/chosen|rejected` metrics are the mean logit over real tokens
(TRL's also averaged the pad positions' logits).

`training.max_tokens_per_forward` runs a micro-batch in passes of whole pairs (`PairPasses`): the
odds-ratio term is a mean over pairs (weighed by each pass's share), and the next-token loss a mean
over the micro-batch's chosen tokens, so each pass's sum is divided by the whole micro-batch's count.
"""

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


def trainer_class() -> type:
    from llmft.builders.preference import PairPasses
    from llmft.fastpath.passes import split_sided_pairs

    _, ORPOTrainer = orpo_classes()

    class LlmftORPOTrainer(PairPasses, ORPOTrainer):
        """TRL's ORPOTrainer scoring through the fused log-prob head, in passes of whole pairs (module docstring)."""

        _nll_scale = 1.0

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            from trl.trainer.utils import add_fused_lm_head

            from llmft.fastpath.decide import causal_lm

            super().__init__(*args, **kwargs)
            add_fused_lm_head(causal_lm(self.model), outputs=("log_probs", "mean_logits"))

        def pieces(self, inputs: dict[str, Any]) -> list[tuple[dict[str, Any], float]]:
            return split_sided_pairs(inputs, self.forward_tokens)

        def start_pass(self, whole: dict[str, Any], piece: dict[str, Any], share: float) -> None:
            """The pass's next-token mean times its tokens' share of the micro-batch's, over its pairs'
            share (the loss is multiplied by that): the micro-batch's token mean, summed over passes."""
            self._nll_scale = chosen_tokens(piece) / chosen_tokens(whole) / share

        def concatenated_forward(self, model: Any, batch: dict[str, Any]) -> tuple:
            if self.aux_loss_enabled or self.is_encoder_decoder:  # router losses need the model's own forward
                return super().concatenated_forward(model, batch)
            rows = self.concatenated_inputs(
                batch, is_encoder_decoder=False, padding_value=self.padding_value, device=self.accelerator.device
            )
            ids, mask = rows["concatenated_input_ids"], rows["concatenated_attention_mask"]
            out = model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100), fused_lm_head=True)
            scores = orpo_scores(out.log_probs, out.mean_logits, mask, rows["concatenated_labels"], len(batch["chosen_labels"]))
            return (*scores[:4], scores[4] * self._nll_scale)

    return LlmftORPOTrainer


def chosen_tokens(batch: dict[str, Any]) -> int:
    """Chosen tokens the next-token loss scores (each real token after the row's first)."""
    return int((batch["chosen_attention_mask"].sum(1) - 1).clamp(min=0).sum())


def orpo_scores(log_probs: Any, mean_logits: Any, mask: Any, labels: Any, chosen: int) -> tuple:
    """What TRL's `concatenated_forward` returns, from per-token outputs of every real token
    ([rows, tokens - 1], position t scoring token t + 1): the chosen and rejected rows' mean reply
    log-probs, their mean logits (1-D: TRL's metrics take `.mean()` of them), and the chosen rows'
    mean next-token loss over every real token."""
    scored = (mask[:, :-1] * mask[:, 1:]).bool()
    reply = labels[:, 1:] != -100
    logps = (log_probs * reply).sum(-1) / reply.sum(-1)
    nll = -log_probs[:chosen][scored[:chosen]].sum() / scored[:chosen].sum()
    logits = mean_logits.detach()
    return logps[:chosen], logps[chosen:], logits[:chosen][scored[:chosen]], logits[chosen:][scored[chosen:]], nll


@register_builder("orpo", modes=("full", "freeze", "lora", "qlora"))
def build_orpo(ctx: RunContext) -> TrainerLike:
    from llmft.builders.trl_common import take_fast_forward
    from llmft.data.trl_rows import pair_rows

    data = ctx.recipe.data
    config = orpo_config(ctx)
    train, evaluation = trl_datasets(ctx, lambda items: pair_rows(items, ctx.tokenizer, data.max_length, data.truncation))
    trainer = trl_trainer(ctx, trainer_class(), config, train, evaluation)
    trainer.forward_tokens = take_fast_forward(ctx, trainer, own_head=True).forward_tokens
    return trainer
