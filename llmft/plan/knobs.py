"""What the recipe (and the machine) decide, in the memory estimator's terms."""

from __future__ import annotations

from dataclasses import dataclass

GIB = 1 << 30
#: Compute precision -> bytes per activation element.
COMPUTE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}


@dataclass(frozen=True)
class Knobs:
    """What the recipe (and the machine) decide, in the estimator's terms."""

    mode: str = "full"  # full | freeze | lora | qlora
    freeze_trainable: int = 0  # freeze: parameters the recipe trains (its modules and layers)
    freeze_head: bool = False  # freeze: the output head (or the embedding tied to it) trains
    lora_rank: int = 8
    lora_targets: tuple[str, ...] | str = "all-linear"
    lora_dropout: float = 0.0
    dora: bool = False  # DoRA: a trained magnitude per output row of each adapted layer
    modules_to_save: tuple[str, ...] = ()
    qlora_bits: int = 4
    double_quant: bool = True
    weight_bytes: float = 4.0  # storage dtype of the loaded (not quantized) weights
    precision: str = "bf16"  # compute: bf16 | fp16 | fp32
    optimizer: str = "adamw_torch"
    micro_batch_size: int = 1
    gradient_accumulation_steps: int = 1
    seq_len: int = 1024  # tokens of the longest sequence in a micro-batch
    sequences_per_example: int = 1  # 2 when chosen and rejected replies go through together
    num_processes: int = 1
    zero_stage: int = 0
    offload: str = "none"  # none | optimizer | optimizer_and_params
    gradient_checkpointing: bool = False
    chunked_loss: bool = True
    attn_implementation: str = "sdpa"
    lora_input_cast: bool = True  # peft casts adapter inputs to fp32 (llmft's pt/sft fast path turns it off)
    fused_ops: bool = False  # llmft's RMSNorm/SwiGLU that keep less for backward (training.fused_ops)
    forward_tokens: int | None = None  # micro-batches run in passes of at most this (training.max_tokens_per_forward)
    allocator_slack: float | None = None  # fraction of activations + logits; None: ALLOCATOR_SLACK[device]
    reference_model: bool = False  # a frozen copy of the weights (dpo/kto/ppo/grpo, full mode)
    task: str = "causal_lm"  # causal_lm | reward
    device: str = "cuda"  # cuda | cpu: which framework constant applies

    @property
    def full_weights(self) -> bool:
        """Full and freeze: the whole model is loaded as trained (fp32 master weights under mixed
        precision), no adapter."""
        return self.mode in ("full", "freeze")

    @property
    def compute_bytes(self) -> int:
        return COMPUTE_BYTES[self.precision]

    @property
    def mixed(self) -> bool:
        return self.precision in ("bf16", "fp16")

    @property
    def deepspeed(self) -> bool:
        return self.zero_stage > 0

    @property
    def tokens(self) -> int:
        """Tokens of one micro-batch as the model sees them."""
        return self.micro_batch_size * self.seq_len * self.sequences_per_example

    @property
    def pass_tokens(self) -> int:
        """Tokens whose activations are alive at once: one pass (an example is never cut)."""
        if self.forward_tokens is None:
            return self.tokens
        return min(self.tokens, max(self.forward_tokens, self.seq_len * self.sequences_per_example))
