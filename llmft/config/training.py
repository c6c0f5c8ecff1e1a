"""`training:` — optimisation, precision and cadence; each key maps onto the HF Trainer."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from llmft.config.base import Section

Scheduler = Literal[
    "cosine",
    "linear",
    "constant",
    "constant_with_warmup",
    "cosine_with_restarts",
    "polynomial",
    "inverse_sqrt",
    "cosine_with_min_lr",
    "warmup_stable_decay",
]
Optimizer = Literal[
    "adamw_torch",
    "adamw_torch_fused",
    "adafactor",
    "sgd",
    "paged_adamw_32bit",
    "paged_adamw_8bit",
    "adamw_bnb_8bit",
    "adamw_8bit",
]
#: Optimizers that come from bitsandbytes (need its CUDA kernels for the paged ones).
BNB_OPTIMIZERS = frozenset({"paged_adamw_32bit", "paged_adamw_8bit", "adamw_bnb_8bit", "adamw_8bit"})


class TrainingConfig(Section):
    epochs: float = Field(default=3.0, gt=0, description="Passes over the training data.")
    max_steps: int | None = Field(
        default=None, gt=0, description="Stop after this many optimizer steps (overrides `epochs`)."
    )
    micro_batch_size: int = Field(default=1, gt=0, description="Sequences per device per forward pass.")
    gradient_accumulation_steps: int = Field(
        default=1, gt=0, description="Micro-batches per optimizer step."
    )
    learning_rate: float = Field(default=2e-5, ge=0, description="Peak learning rate.")
    weight_decay: float = Field(default=0.0, ge=0, description="Decoupled weight decay.")
    scheduler: Scheduler = Field(default="cosine", description="Learning-rate schedule after warm-up.")
    warmup_ratio: float = Field(
        default=0.0, ge=0, lt=1, description="Warm-up length as a fraction of all steps."
    )
    warmup_steps: int = Field(default=0, ge=0, description="Warm-up length in steps (instead of a ratio).")
    max_grad_norm: float = Field(default=1.0, ge=0, description="Gradient clipping norm; 0 disables clipping.")
    optimizer: Optimizer = Field(
        default="adamw_torch",
        description="Optimizer. The `paged_*` and `*8bit` ones come from bitsandbytes and need a CUDA GPU.",
    )
    seed: int = Field(default=42, description="Seed for initialisation, dropout and data order.")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        default="auto",
        description="Compute precision. `auto`: bf16 where the device has fast bf16 "
        "(recent GPUs, CPUs with AVX512-BF16/AMX), else fp32. fp16 needs a CUDA GPU.",
    )
    gradient_checkpointing: bool = Field(
        default=False, description="Recompute activations in backward to save memory (~30% slower)."
    )
    logging_steps: int = Field(default=10, gt=0, description="Log loss and learning rate every N steps.")
    save_strategy: Literal["steps", "epoch", "no"] = Field(
        default="steps", description="When to write `checkpoint-N/` folders."
    )
    save_steps: int = Field(default=500, gt=0, description="Checkpoint every N steps (with `save_strategy: steps`).")
    save_total_limit: int | None = Field(
        default=None, gt=0, description="Keep at most this many checkpoints (oldest removed first)."
    )
    eval_strategy: Literal["steps", "epoch", "no"] = Field(
        default="epoch",
        description="When to evaluate on `data.eval`. Without eval data nothing is evaluated; "
        "setting this explicitly without eval data is an error.",
    )
    eval_steps: int | None = Field(
        default=None, gt=0, description="Evaluate every N steps (with `eval_strategy: steps`); defaults to `logging_steps`."
    )
    eval_on_start: bool = Field(
        default=False, description="Also evaluate before the first step, for a before/after comparison."
    )
    resume_from_checkpoint: str | None = Field(
        default=None,
        description="`auto`: continue from the newest complete checkpoint-N in output.dir; or a "
        "checkpoint directory. Optimizer, scheduler, RNG and data position are restored; the recipe "
        "must match the interrupted run's.",
    )
    report_to: list[Literal["tensorboard"]] = Field(
        default_factory=lambda: ["tensorboard"],
        description="Metric sinks. `tensorboard` writes to `<output.dir>/logs`; `[]` turns it off.",
    )

    @model_validator(mode="after")
    def _one_warmup(self) -> "TrainingConfig":
        if self.warmup_ratio and self.warmup_steps:
            raise ValueError("set warmup_ratio or warmup_steps, not both")
        return self
