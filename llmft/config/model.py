"""`model:` — which weights and tokenizer to start from and how to load them."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from llmft.config.base import Section


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
        description="Attention kernel. `flash_attention_2` needs CUDA and the flash-attn "
        "package (`pip install llmft[gpu]`).",
    )
    trust_remote_code: bool = Field(
        default=False,
        description="Run model code shipped with the checkpoint. Off unless you trust its author.",
    )
