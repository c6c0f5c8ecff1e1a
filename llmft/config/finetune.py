"""`finetune:` — which parameters train. A tagged union on `mode`."""

from __future__ import annotations

import typing
from typing import Annotated, Literal, Union

from pydantic import Field, model_validator

from llmft.config.base import Section


class FullFinetune(Section):
    mode: Literal["full"] = Field(description="Train every parameter of the model.")

    @property
    def continues_adapter(self) -> bool:
        return False

    @property
    def starts_at_base(self) -> bool:
        """Training starts from the loaded weights themselves."""
        return True


class FreezeFinetune(FullFinetune):
    """Full fine-tuning of a chosen part of the model: everything else is frozen, and the whole
    model is saved (a standalone checkpoint, as with `full`). Everything that treats a full run
    (reference copies, fp32 master weights, saving) treats it the same way."""

    mode: Literal["freeze"] = Field(  # type: ignore[assignment]
        description="Train only the named modules and/or the last decoder layers; the rest stays frozen. Saves the full weights."
    )
    trainable_modules: list[str] = Field(
        default_factory=list,
        description="Modules to train: a name matches a module whose dotted name is it or ends with "
        "`.name` (e.g. `lm_head`, `mlp`, `self_attn.o_proj`); a name with `*` is matched against whole "
        "parameter names (e.g. `*.layers.0.*`).",
    )
    trainable_layers: int | list[int] | None = Field(
        default=None,
        description="Decoder layers to train: a number N for the last N layers, or a list of layer "
        "indices (negative counts from the end).",
    )

    @model_validator(mode="after")
    def _something_trains(self) -> FreezeFinetune:
        if not self.trainable_modules and not self.trainable_layers:
            raise ValueError("set trainable_modules and/or trainable_layers (otherwise nothing would train)")
        if isinstance(self.trainable_layers, int) and self.trainable_layers < 1:
            raise ValueError("trainable_layers: a count of last layers must be at least 1")
        return self


#: peft's `init_lora_weights`, as a recipe names it (`default`: peft's default, `True`).
LoraInit = Literal["default", "gaussian", "pissa", "olora", "loftq"]
#: Inits that move part of the base weights into the adapter (base - B0 A0 + B A).
BASE_MOVING_INITS = ("pissa", "olora")


class LoraFinetune(Section):
    mode: Literal["lora"] = Field(description="Train low-rank adapters on frozen weights.")
    rank: int = Field(default=8, gt=0, description="LoRA rank r.")
    alpha: float = Field(default=16.0, gt=0, description="LoRA scaling numerator (scale = alpha / rank).")
    dropout: float = Field(default=0.05, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: Literal["all-linear"] | list[str] = Field(
        default="all-linear",
        description="Module names to adapt (e.g. `[q_proj, v_proj]`), or `all-linear` for "
        "every linear layer except the output head.",
    )
    modules_to_save: list[str] = Field(
        default_factory=list,
        description="Modules trained in full and saved with the adapter, e.g. "
        "`[embed_tokens, lm_head]` after extending the vocabulary.",
    )
    use_dora: bool = Field(
        default=False,
        description="DoRA: split each adapted weight into a magnitude vector (trained) and a direction "
        "that LoRA updates. Closer to full fine-tuning at low rank; slower per step (and off llmft's fused "
        "LoRA kernel).",
    )
    use_rslora: bool = Field(
        default=False,
        description="rsLoRA: scale the adapter by alpha / sqrt(rank) instead of alpha / rank, so high "
        "ranks still learn (with alpha = rank, the scale is sqrt(rank)).",
    )
    init: LoraInit = Field(
        default="default",
        description="How the adapter starts (peft's init_lora_weights). `default`: A Kaiming-uniform, "
        "B = 0; `gaussian`: A ~ N(0, 1/rank), B = 0; `pissa` / `olora`: A and B from the weight's SVD / "
        "QR, moved out of the base weight (same outputs at step 0); `loftq`: (qlora, 4-bit, CUDA) A and B "
        "that offset the quantization error of the base. These three save the change training made, "
        "as an adapter of rank x 2 for the original base.",
    )
    lora_plus_ratio: float | None = Field(
        default=None,
        gt=0,
        description="LoRA+: the B matrices train with learning_rate x this ratio (the paper suggests "
        "16), in their own optimizer group; null: one learning rate for all.",
    )
    adapter_path: str | None = Field(
        default=None,
        description="Continue training an existing adapter directory. Its own rank, alpha, targets "
        "and variant (use_dora, use_rslora) apply; setting different ones here is an error.",
    )

    @property
    def continues_adapter(self) -> bool:
        """True when training continues `adapter_path` rather than a fresh adapter."""
        return self.adapter_path is not None

    @property
    def saved_as_change(self) -> bool:
        """True when the saved adapter is rewritten as the change training made, for the original
        base (`llmft.modeling.moved_base`): a fresh pissa/olora adapter (exact) or loftq (whose start
        offsets the quantization error of the 4-bit base)."""
        return self.init in (*BASE_MOVING_INITS, "loftq") and not self.continues_adapter

    @property
    def starts_at_base(self) -> bool:
        """True when the model as training starts is the base with the adapter switched off: a fresh
        adapter whose B starts at zero (not a continued one, nor pissa/olora/loftq)."""
        return not self.continues_adapter and self.init in ("default", "gaussian")


class QLoraFinetune(LoraFinetune):
    mode: Literal["qlora"] = Field(  # type: ignore[assignment]
        description="LoRA on a base model quantized with bitsandbytes."
    )
    bits: Literal[4, 8] = Field(default=4, description="Quantization width of the frozen base (bitsandbytes).")
    quant_type: Literal["nf4", "fp4"] = Field(default="nf4", description="4-bit data type (with `bits: 4`).")
    double_quant: bool = Field(
        default=True, description="Also quantize the quantization constants (4-bit; saves ~0.4 bit/param)."
    )
    compute_dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        default="auto", description="Dtype the quantized layers compute in; `auto` follows training.precision."
    )

    @model_validator(mode="after")
    def _four_bit_knobs(self) -> QLoraFinetune:
        if self.bits == 8:
            set_4bit = sorted({"quant_type", "double_quant"} & self.model_fields_set)
            if set_4bit:
                raise ValueError(f"{', '.join(set_4bit)} only apply with bits: 4")
        return self


#: Every finetune mode, in schema order.
FINETUNE_VARIANTS = (FullFinetune, FreezeFinetune, LoraFinetune, QLoraFinetune)
Finetune = Annotated[Union[FINETUNE_VARIANTS], Field(discriminator="mode")]  # type: ignore[valid-type]  # noqa: UP007
MODES: tuple[str, ...] = tuple(typing.get_args(v.model_fields["mode"].annotation)[0] for v in FINETUNE_VARIANTS)
