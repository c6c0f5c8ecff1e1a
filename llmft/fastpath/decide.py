"""Which parts of the fast path (`llmft.fastpath`) a run takes, and why; an explicit `true` that
cannot be honoured is a UserError naming the key. `llmft train` and `llmft plan` both decide here."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

from llmft.config.recipe import Recipe
from llmft.errors import UserError
from llmft.modeling.families import family
from llmft.resolve import Resolved

#: `training.max_tokens_per_forward` once decided: a pass size, None (micro-batches run whole), or
#: "auto" until the memory plan sizes it (`llmft.plan.passes.settle_passes`).
ForwardTokens = int | Literal["auto"] | None


@dataclass(frozen=True)
class FastPath:
    batching: str  # padding-free | packed | padded
    attention: str  # the attn_implementation the model trains with
    chunked_loss: bool
    fused_ops: bool
    reasons: list[str] = field(default_factory=list)
    forward_tokens: ForwardTokens = None  # micro-batches cut into passes of at most this many tokens
    # a TRL trainer scoring whole sequences (dpo, kto, grpo: TRL's fused log-prob head; rm: the score
    # head): what scores them, None on the next-token path
    scoring: str | None = None

    @property
    def shares_prefixes(self) -> bool:
        """Scoring padding-free with llmft's branch-aware attention: a prefix rows share runs once."""
        from llmft.fastpath.varlen_attention import NAME

        return self.scoring is not None and self.batching == "padding-free" and self.attention == NAME

    def describe(self) -> str:
        if self.scoring:
            loss = self.scoring
            if self.batching == "padding-free":
                loss += ", padded rows scored as one row" + (", shared prompts once" if self.shares_prefixes else "")
        else:
            loss = "chunked cross-entropy" if self.chunked_loss else "the model's own loss"
        ops = ", fused RMSNorm/SwiGLU" if self.fused_ops else ""
        passes = ""
        if isinstance(self.forward_tokens, int):
            passes = f", passes of <= {self.forward_tokens} tokens" + (" of whole pairs" if self.scoring else "")
        text = f"batches {self.batching}, attention {self.attention}, {loss}{ops}{passes}"
        return text + (f" ({'; '.join(self.reasons)})" if self.reasons else "")

    def with_passes(self, forward_tokens: int | None, reason: str | None = None) -> FastPath:
        """The path with its pass size decided (and the reason, if any, added)."""
        return replace(self, forward_tokens=forward_tokens, reasons=self.reasons + ([reason] if reason else []))


def causal_lm(model: Any) -> Any:
    """The causal LM inside a peft model (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def config_blocker(recipe: Recipe, model_type: str | None, settings: Resolved) -> str | None:
    """Why the chunked loss cannot be used, from the recipe, the model type and the resolved
    settings alone (no model needed: `llmft plan` uses it when the model cannot be built)."""
    if not family(model_type).plain_head:
        return f"model type {model_type!r} is not one whose output head is known to be a plain projection"
    if settings.zero3:
        return "ZeRO-3 shards the output head's weight"
    return None


def _chunked_loss_blocker(recipe: Recipe, model: Any, settings: Resolved) -> str | None:
    lm = causal_lm(model)
    if blocker := config_blocker(recipe, getattr(lm.config, "model_type", None), settings):
        return blocker
    head = lm.get_output_embeddings() if hasattr(lm, "get_output_embeddings") else None
    if _carries_adapter(head):
        # the chunked loss projects with the head's weight directly: the adapter would never train
        return "the output head carries a LoRA adapter (finetune.target_modules), which the chunked loss would bypass"
    if head is None or getattr(head, "bias", None) is not None or not hasattr(head, "weight"):
        return "the model's output head is not a bias-free linear layer"
    if type(head.weight).__name__ != "Parameter" or head.weight.dim() != 2:
        return "the output head's weight is quantized or sharded"
    if recipe.distributed.launches and not recipe.distributed.uses_deepspeed and head.weight.requires_grad:
        # measured (torch 2.13): DDP fails with "Expected to mark a variable ready only once" when
        # a trained weight is used outside the wrapped forward
        return "DDP (several processes without DeepSpeed) needs a trained output head inside the model's forward"
    return None


def _carries_adapter(module: Any) -> bool:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return isinstance(module, BaseTunerLayer)


def _uses_dora(model: Any) -> bool:
    from llmft.fastpath.fused_lora import uses_dora

    return uses_dora(model)


def _padding_free_blocker(model: Any) -> str | None:
    lm = causal_lm(model)
    if not getattr(lm, "_supports_attention_backend", False):
        return f"{type(lm).__name__} does not take its attention from transformers' attention registry"
    return None


def choose(recipe: Recipe, model: Any, settings: Resolved) -> FastPath:
    """Decide the path for `model` under the resolved `settings`. `max_tokens_per_forward: auto`
    stays "auto" for the memory plan to size (`llmft.plan.passes.settle_passes`). A stage whose TRL
    trainer scores through TRL's fused head (traits `fast_forward` without `fast_path`) takes the
    batching, attention and fused ops only (`llmft.fastpath.unpadded_scoring`)."""
    reasons: list[str] = []
    training = recipe.training
    batching, attention = _batching(recipe, model, reasons)
    if not recipe.stage.traits.fast_path:
        fused = _fused_ops(training.fused_ops, model, reasons)
        head = (
            "the score head at each sequence's last token"
            if recipe.stage.traits.task == "reward"
            else "TRL's chunked log-prob head"
        )
        path = FastPath(batching, attention, False, fused, reasons, None, scoring=head)
        if batching == "padding-free" and not path.shares_prefixes:
            reasons.append(f"prompts scored once per sequence: only model.attn_implementation sdpa shares them, not {attention}")
        forward_tokens = resolve_forward_tokens(recipe, True, reasons) if recipe.stage.traits.forward_passes else None
        return replace(path, forward_tokens=forward_tokens)
    chunked = training.chunked_loss
    if chunked and (blocker := _chunked_loss_blocker(recipe, model, settings)):
        if "chunked_loss" in training.model_fields_set:
            raise UserError(f"training.chunked_loss: {blocker}; set training.chunked_loss: false for this model")
        chunked = False
        reasons.append(f"chunked loss off: {blocker}")
    elif not chunked:
        reasons.append("training.chunked_loss is false")
    fused = _fused_ops(training.fused_ops, model, reasons)
    forward_tokens = resolve_forward_tokens(recipe, chunked, reasons)
    return FastPath(batching, attention, chunked, fused, reasons, forward_tokens)


def _fused_ops(wanted: bool, model: Any, reasons: list[str]) -> bool:
    if not wanted:
        reasons.append("training.fused_ops is false")
    elif _uses_dora(model):
        reasons.append("DoRA layers run peft's own forward, not the fused LoRA kernel")
    return wanted


def _batching(recipe: Recipe, model: Any, reasons: list[str]) -> tuple[str, str]:
    """(batching, attention implementation) for the run."""
    data = recipe.data
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
        from llmft.fastpath.varlen_attention import register

        attention = register()
    return batching, attention


def resolve_forward_tokens(recipe: Recipe, chunked: bool, reasons: list[str]) -> ForwardTokens:
    """`training.max_tokens_per_forward` where passes can run (None: micro-batches run whole; "auto":
    the memory plan decides, `llmft.plan.passes`)."""
    wanted = recipe.training.max_tokens_per_forward
    if wanted is None:
        return None
    blocker = recipe.stage.passes_blocker()
    if blocker is None and not chunked:
        blocker = "the passes are part of the chunked loss, which is off"
    if blocker is None and (recipe.distributed.launches or recipe.distributed.uses_deepspeed):
        blocker = "several processes or DeepSpeed count each backward as a micro-batch"
    if blocker:
        if wanted != "auto":
            raise UserError(f"training.max_tokens_per_forward: {blocker}; remove it or set it to null")
        if chunked:  # without the chunked loss its own reason already says why
            reasons.append(f"micro-batches run whole: {blocker}")
        return None
    return wanted


def apply(path: FastPath, model: Any, settings: Resolved) -> None:
    """Set the model up for the chosen path: attention kernel, fused ops, and LoRA inputs not
    round-tripped to fp32 under autocast."""
    lm = causal_lm(model)
    if lm.config._attn_implementation != path.attention:
        lm.set_attn_implementation(path.attention)
    if path.fused_ops:
        from llmft.fastpath.fused_ops import apply_fused_ops

        apply_fused_ops(model)
    if settings.autocast_dtype is not None:
        # Under autocast a LoRA matmul runs in bf16/fp16 anyway; peft's cast of its input to the fp32
        # adapter dtype would only add a copy there and back for every adapted layer.
        for module in model.modules():
            if hasattr(module, "cast_input_dtype_enabled"):
                module.cast_input_dtype_enabled = False
