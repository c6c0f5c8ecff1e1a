"""`model:` — which weights and tokenizer to start from and how to load them."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from llmft.config.base import Section


class RopeScaling(Section):
    type: Literal["linear", "dynamic", "yarn"] = Field(
        description="How rotary position embeddings stretch to longer contexts: `linear` divides "
        "positions by `factor` (position interpolation); `dynamic` rescales the RoPE base only once a "
        "sequence exceeds the model's `max_position_embeddings` (dynamic NTK); `yarn` interpolates "
        "low frequencies, keeps high ones and scales attention (YaRN)."
    )
    factor: float = Field(
        gt=1.0,
        description="Context extension factor, e.g. 4.0 to go from 4k to 16k tokens. `linear` and "
        "`yarn` also raise the model's `max_position_embeddings` by this factor.",
    )
    original_max_position_embeddings: int | None = Field(
        default=None,
        gt=0,
        description="`yarn` only: the context length the model was pretrained with. Default: the "
        "model's `max_position_embeddings`.",
    )

    @model_validator(mode="after")
    def _yarn_only(self) -> RopeScaling:
        if self.original_max_position_embeddings is not None and self.type != "yarn":
            raise ValueError(f"original_max_position_embeddings only applies to type: yarn (got type: {self.type})")
        return self


class ModelConfig(Section):
    path: str = Field(
        description="Local directory or hub id of the pretrained model to start from. "
        "With `gguf_file`, the directory (or hub repo) that holds the GGUF file."
    )
    gguf_file: str | None = Field(
        default=None,
        description="Name of a GGUF checkpoint inside `path`; transformers dequantizes it "
        "into a trainable model. Needs the `gguf` package.",
    )
    tokenizer: str | None = Field(
        default=None,
        description="Tokenizer directory or hub id when it differs from `path` "
        "(e.g. an extended vocabulary). Defaults to `path`.",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto",
        description="Storage dtype of the loaded weights. `auto`: frozen base weights of "
        "LoRA runs in the training precision, fully trained weights in float32 "
        "(mixed precision keeps float32 master weights).",
    )
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = Field(
        default="sdpa",
        description="Attention kernel. `flash_attention_2` needs CUDA and the flash-attn package (`pip install llmft[gpu]`).",
    )
    rope_scaling: RopeScaling | None = Field(
        default=None,
        description="Stretch the rotary position embeddings (RoPE) to train on longer sequences than "
        "the model was pretrained on: `{type: linear | dynamic | yarn, factor: 4.0}`. Written into "
        "the loaded model's config (`rope_parameters`), so it is saved with a full model. Only for "
        "models with RoPE (Llama, Qwen, Mistral, ...).",
    )
    trust_remote_code: bool = Field(
        default=False,
        description="Run model code shipped with the checkpoint. Off unless you trust its author.",
    )

    def describe(self) -> str:
        """The model as a message names it: its path, and its GGUF file if any."""
        return f"{self.path} ({self.gguf_file})" if self.gguf_file else self.path
