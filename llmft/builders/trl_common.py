"""What the TRL-backed builders (dpo, kto, orpo, grpo) share: llmft's records as TRL datasets (with
every left-out record counted), the trainer with llmft's callbacks, and the LoRA reference."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from llmft.builders.context import RunContext

log = logging.getLogger("llmft")

#: Rows and the report of what was left out, from one split's normalised records.
ToRows = Callable[[Sequence[Any]], tuple[list[dict], Any]]


def trl_datasets(
    ctx: RunContext, to_rows: ToRows, order: Callable[[list[dict]], list[dict]] | None = None
) -> tuple[Any, Any | None]:
    """Read the recipe's data for its stage (before the model loads, so data errors surface fast)
    and turn each split into a `datasets.Dataset` of TRL rows."""
    from datasets import Dataset

    from llmft.data.dataset import load_items
    from llmft.data.render import warn_unrendered_tools
    from llmft.errors import UserError

    loaded = load_items(ctx.recipe.stage.name, ctx.recipe.data, ctx.recipe.training.seed)
    for source in loaded.sources:
        log.info(source.line())
    warn_unrendered_tools([*loaded.train, *(loaded.eval or [])], ctx.tokenizer, ctx.recipe.data.template)
    out = []
    for split, items in (("train", loaded.train), ("eval", loaded.eval)):
        if items is None or (split == "eval" and not ctx.recipe.evaluates):
            out.append(None)
            continue
        rows, report = to_rows(items)
        log.info(report.summary(f"data.{split}"))
        if not rows:
            raise UserError(f"data.{split}: no usable examples remain. {report.summary('data.' + split)}")
        out.append(Dataset.from_list(order(rows) if order else rows))
    return out[0], out[1]


def trl_trainer(ctx: RunContext, trainer_cls: type, config: Any, train: Any, evaluation: Any | None, **kwargs: Any) -> Any:
    """Build a TRL trainer on the run's model and tokenizer (TRL renders the chat template
    installed on it), attach llmft's callbacks, and confirm TRL kept every row."""
    from transformers.trainer_callback import PrinterCallback

    from llmft.builders.preference import keep_only_adapter_dropout
    from llmft.builders.trainer import optimizer_groups
    from llmft.callbacks import callbacks_for
    from llmft.data.trl_rows import check_kept

    model = ctx.model
    keep_only_adapter_dropout(model)  # with disable_dropout=False in the config: finetune.dropout applies
    callbacks = callbacks_for(ctx.recipe, ctx.output_dir, vocab_size=model.config.vocab_size)
    trainer = trainer_cls(
        model=model,
        args=config,
        train_dataset=train,
        eval_dataset=evaluation,
        processing_class=ctx.tokenizer,
        callbacks=callbacks,
        **kwargs,
    )
    trainer.remove_callback(PrinterCallback)  # llmft's LogLines prints instead
    optimizer_groups(trainer, ctx)
    check_kept("train", len(train), trainer.train_dataset)
    if evaluation is not None:
        check_kept("eval", len(evaluation), trainer.eval_dataset)
    return trainer


def settle_lora_reference(model: Any, keep_copy: bool) -> None:
    """Given a model that already carries its (LoRA) adapter, TRL's DPO, KTO and GRPO trainers copy
    that adapter into a frozen second adapter named "ref" and use it as the reference. A fresh
    adapter is zero at the start (lora_B = 0), so the copy is the base model at the cost of a second
    adapter (and a `ref/` folder in every save): it is deleted, and TRL computes the reference with
    the adapter disabled. An adapter that does not start at zero (`keep_copy`: a continued
    `finetune.adapter_path`, or `finetune.init` pissa/olora/loftq: Reference.STARTING_ADAPTER, and what
    dpo's precomputed log-probs are computed from) keeps the copy: the reference is then the adapter
    as training started (e.g. the SFT policy), not the bare base; its dropout is switched off so the
    reference is deterministic."""
    import torch

    peft_config = getattr(model, "peft_config", None)
    if peft_config is None or "ref" not in peft_config:
        return
    if not keep_copy:
        model.delete_adapter("ref")
        return
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Dropout) and name.endswith(".lora_dropout.ref"):
            module.p = 0.0


def take_fast_forward(ctx: RunContext, trainer: Any, own_head: bool = False, temperature: float = 1.0) -> Any:
    """The fast path's batching, attention and fused ops on a TRL trainer that scores through TRL's
    fused log-prob head (stage trait `fast_forward`): padded rows scored as one padding-free row, a
    prefix rows share (a pair's prompt, a group's prompt) computed once where the attention is
    llmft's branch-aware kernel (`llmft.fastpath.unpadded_scoring`), for the policy and for a
    reference model kept beside it. Called once the trainer exists: TRL installs its fused head in
    its constructor. `own_head`: the trainer reads only log-probs, entropy, mean logits and top-1 of
    the distribution at `temperature` (dpo, kto; grpo at its sampling temperature): a frozen plain
    head then scores through `llmft.fastpath.logprob_head`. Returns the path (`FastPath`), its passes
    sized by the memory plan."""
    from llmft.fastpath.decide import apply, causal_lm, choose
    from llmft.fastpath.logprob_head import frozen_plain_head
    from llmft.fastpath.unpadded_scoring import unpad_reward_scoring, unpad_scoring
    from llmft.plan.passes import settle_passes

    path = choose(ctx.recipe, ctx.model, ctx.settings)
    path = settle_passes(path, ctx.recipe, causal_lm(ctx.model).config, ctx.settings)
    models = [ctx.model]
    if getattr(trainer, "ref_model", None) is not None:
        models.append(trainer.accelerator.unwrap_model(trainer.ref_model))
    for model in models:
        apply(path, model, ctx.settings)
        if path.batching == "padding-free" and ctx.recipe.stage.traits.task == "reward":
            unpad_reward_scoring(causal_lm(model), share_prefixes=path.shares_prefixes)
        elif path.batching == "padding-free":
            lm = causal_lm(model)
            plain = frozen_plain_head(lm) is not None  # a head that trains (full) keeps TRL's kernel
            unpad_scoring(lm, share_prefixes=path.shares_prefixes, own_head=own_head and plain, temperature=temperature)
    log.info("path: %s", path.describe())
    _small_head_tiles(ctx.model)
    return path


#: Positions per tile of TRL's fused log-prob head on a CPU (TRL's 4,096 is sized for GPUs): each
#: tile's logits are [positions, 32,768] fp32, 512 MB at TRL's size, 32 MB here, at the same speed.
CPU_HEAD_TILE = 256


def _small_head_tiles(model: Any) -> None:
    """TRL's fused head on a CPU in tiles of CPU_HEAD_TILE positions (a module constant of TRL's
    kernel, read at each call; left alone if a TRL release renames it)."""
    from trl.kernels import chunked_logprob

    device = next(model.parameters()).device
    if device.type == "cpu" and hasattr(chunked_logprob, "TOKEN_CHUNK_SIZE"):
        chunked_logprob.TOKEN_CHUNK_SIZE = CPU_HEAD_TILE
