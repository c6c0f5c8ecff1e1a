"""`training:` — optimisation, precision and cadence; each key maps onto the HF Trainer."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

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
    max_steps: int | None = Field(default=None, gt=0, description="Stop after this many optimizer steps (overrides `epochs`).")
    micro_batch_size: int = Field(default=1, gt=0, description="Sequences per device per forward pass.")
    gradient_accumulation_steps: int = Field(default=1, gt=0, description="Micro-batches per optimizer step.")
    learning_rate: float = Field(default=2e-5, ge=0, description="Peak learning rate.")
    weight_decay: float = Field(default=0.0, ge=0, description="Decoupled weight decay.")
    scheduler: Scheduler = Field(default="cosine", description="Learning-rate schedule after warm-up.")
    warmup_ratio: float = Field(default=0.0, ge=0, lt=1, description="Warm-up length as a fraction of all steps.")
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
    chunked_loss: bool = Field(
        default=True,
        description="pt/sft: compute the next-token cross-entropy over supervised positions only, a chunk "
        "at a time, never holding the [tokens, vocabulary] logits (same loss, less memory and time). "
        "Used where the model's output head is a plain projection (Llama, Mistral, Qwen2/3, Phi-3, Gemma) "
        "and not under ZeRO-3; elsewhere the model's own loss is used and the run log says why.",
    )
    max_tokens_per_forward: int | Literal["auto"] | None = Field(
        default="auto",
        description="pt/sft with the chunked loss, dpo, rm and orpo: run a micro-batch with more tokens than this as "
        "several forward/backward passes, cut at example boundaries (dpo, rm, orpo: whole pairs; never within one). The gradient is the "
        "micro-batch's own (every pass divides by the same supervised-token count; dpo, rm, orpo: each pass's pair mean is weighed by its share of the pairs); only one pass's "
        "activations are alive at a time, but every pass streams all weights again (on the SmolLM2-135M "
        "LoRA benchmark, passes of 512: peak RSS -18%, training time +11%). `auto`: whole micro-batches "
        "unless the memory plan (`llmft plan`) says micro_batch_size x data.max_length tokens do not fit "
        "the RAM available when the run starts (or the GPU's memory); then the largest of "
        "4096/2048/1024/512/256 that fits; on a CPU, dpo, rm and orpo run a micro-batch of several pairs a "
        "full-length pair (2 x data.max_length tokens) per pass, which there costs no measurable time. "
        "`null`: never cut. Single-process runs only.",
    )
    neftune_alpha: float | None = Field(
        default=None,
        gt=0,
        description="NEFTune: add uniform noise of scale alpha / sqrt(tokens x hidden) to the input "
        "embeddings in training (never in evaluation or generation); 5 is the paper's usual value. "
        "Not for the stages that sample from the model (grpo, ppo).",
    )
    shift_attn: bool = Field(
        default=False,
        description="Shifted sparse attention (S2-Attn, LongLoRA) in training: each token attends only "
        "within its group of a quarter of the sequence, with half the heads' groups shifted by half a "
        "group; evaluation and generation use full attention. Saves attention compute on long "
        "sequences. Stages pt and sft, models using transformers' attention interface (Llama, "
        "Qwen2/3, Mistral, ...), `model.attn_implementation` sdpa or eager.",
    )
    fused_ops: bool = Field(
        default=True,
        description="pt/sft/rm/dpo/kto/orpo/grpo/ppo: RMSNorm and SwiGLU that keep only their inputs for backward and recompute the "
        "rest (same values; about a quarter less activation memory on Llama-family models), their outputs rebuilt in "
        "backward instead of kept as the next linear layers' inputs (bit for bit; the longest pair of the rm "
        "benchmark: -415 MB), and each LoRA "
        "linear layer as one autograd function (on the CPU benchmark: -155 MB peak, same speed). Applied to Llama, "
        "Mistral, Qwen2/3 and Phi-3 norms and gated MLPs and to plain LoRA layers (no dropout, no DoRA); "
        "other modules run as they are. grpo/ppo rollouts: plain LoRA layers sample as one product with a merged "
        "copy of their weights (the base never written; not under autocast or over a bf16 base) and a prompt "
        "repeated across rows is prefilled once (same tokens from the same seed).",
    )
    allocator: Literal["auto", "tcmalloc", "system"] = Field(
        default="auto",
        description="Host memory allocator. `auto`: tcmalloc when the machine has it (`llmft train` re-executes "
        "itself once with LD_PRELOAD), else the system's malloc, and the run log says how to install it; "
        "`tcmalloc`: required (an error if missing); `system`: never preload. Measured on the SmolLM2-135M "
        "LoRA benchmark (2 CPU cores): 1,756 MB peak with tcmalloc, 2,054 MB with glibc, same speed within 2%.",
    )
    release_memory: bool = Field(
        default=False,
        description="Return freed activation memory to the OS at once (glibc: blocks from 256 KiB up are "
        "mmapped). Measured on the SmolLM2-135M LoRA benchmark: peak RSS 1,986 MB instead of 2,438, but "
        "training 1.7x slower (fresh pages are zeroed on every allocation). For runs that must fit in RAM.",
    )
    torch_compile: bool = Field(
        default=False,
        description="Compile the model with torch.compile (inductor). Off by default: measured on a 2-core "
        "CPU, a 4-step LoRA job took 184 s compiled vs 30 s eager (compilation and recompiles for varying "
        "sequence lengths outweigh the gain); it can pay off on long GPU runs with fixed shapes (packing).",
    )
    logging_steps: int = Field(default=10, gt=0, description="Log loss and learning rate every N steps.")
    save_strategy: Literal["steps", "epoch", "no"] = Field(default="steps", description="When to write `checkpoint-N/` folders.")
    save_steps: int = Field(default=500, gt=0, description="Checkpoint every N steps (with `save_strategy: steps`).")
    save_total_limit: int | None = Field(
        default=None,
        gt=0,
        description="Keep at most this many complete checkpoints (oldest removed first, and only once a newer one is "
        "complete: a save that fails never costs an earlier checkpoint).",
    )
    eval_strategy: Literal["steps", "epoch", "no"] = Field(
        default="epoch",
        description="When to evaluate on `data.eval`. Without eval data nothing is evaluated; "
        "setting this explicitly without eval data is an error.",
    )
    eval_steps: int | None = Field(
        default=None, gt=0, description="Evaluate every N steps (with `eval_strategy: steps`); defaults to `logging_steps`."
    )
    eval_on_start: bool = Field(default=False, description="Also evaluate before the first step, for a before/after comparison.")
    resume_from_checkpoint: str | None = Field(
        default=None,
        description="`auto`: continue from the newest complete checkpoint-N in output.dir (every file checked "
        "against the checkpoint's manifest; damaged or unfinished ones are skipped, each named with the reason), or "
        "start from step 0 when there is none; or a checkpoint directory, refused if damaged. Optimizer, scheduler, "
        "RNG and data position are restored; the recipe must match the interrupted run's (output.dir aside: a run "
        "directory may be moved).",
    )
    report_to: list[Literal["tensorboard", "wandb", "mlflow"]] = Field(
        default_factory=lambda: ["tensorboard"],
        description="Metric sinks, any of them; `[]` turns logging off. `tensorboard` writes every session of the run "
        "(resumed ones too) to `<output.dir>/logs` (`tensorboard --logdir <output.dir>/logs`). `wandb` logs offline to "
        "`<output.dir>/wandb/` (`WANDB_MODE`, `WANDB_DIR`, `WANDB_PROJECT` change that; `wandb sync` uploads) and "
        "`mlflow` to the file store `<output.dir>/mlruns` (`MLFLOW_TRACKING_URI`, `MLFLOW_EXPERIMENT_NAME` change "
        "that), each with the run's metrics and its resolved recipe; both need `pip install 'llmft[trackers]'`.",
    )

    @field_validator("max_tokens_per_forward")
    @classmethod
    def _positive_tokens(cls, value: int | str | None) -> int | str | None:
        if isinstance(value, int) and value < 1:
            raise ValueError("must be a positive number of tokens, 'auto', or null (never cut micro-batches)")
        return value

    @model_validator(mode="after")
    def _one_warmup(self) -> TrainingConfig:
        if self.warmup_ratio and self.warmup_steps:
            raise ValueError("set warmup_ratio or warmup_steps, not both")
        return self
