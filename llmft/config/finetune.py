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
    adapter_path: str | None = Field(
        default=None,
        description="Continue training an existing adapter directory. Its own rank, alpha and "
        "targets apply; setting different ones here is an error.",
    )

    @property
    def continues_adapter(self) -> bool:
        """True when training continues `adapter_path` rather than a fresh adapter."""
        return self.adapter_path is not None


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
FINETUNE_VARIANTS = (FullFinetune, LoraFinetune, QLoraFinetune)
Finetune = Annotated[Union[FINETUNE_VARIANTS], Field(discriminator="mode")]  # type: ignore[valid-type]  # noqa: UP007
MODES: tuple[str, ...] = tuple(typing.get_args(v.model_fields["mode"].annotation)[0] for v in FINETUNE_VARIANTS)
