"""Per-device training memory, by arithmetic on the model's shape and the run's knobs. Pure: no
torch, no files; `estimate(dims, knobs)` is cheap enough to call for every alternative.

Bytes per parameter, per device (P all parameters, T trainable ones, N processes):

| part | plain PyTorch (ZeRO 0) | DeepSpeed ZeRO 1 / 2 / 3 |
| --- | --- | --- |
| weights | P x storage dtype (full: fp32 under mixed precision, the master copy itself) | P x 2 (bf16/fp16), / N at stage 3 |
| gradients | T x trainable dtype | T x 2, / N from stage 2 |
| optimizer | T x moments (AdamW: 2 x 4 B) | T x (moments + 4 B fp32 master), / N |

Activations per micro-batch: bytes each decoder layer keeps for backward per token, counted with
autograd's saved-tensor hooks and torch's memory profiler on Llama-shaped models
(llmft.plan.activations.LAYER_BYTES);
docs/plan.md has the measurements and the comparison with real runs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from llmft.plan.activations import activation_bytes, logits_bytes, targeted_linears
from llmft.plan.knobs import GIB, Knobs

__all__ = ["GIB", "Knobs", "Memory", "Plan", "compare_zero", "checkpointing_needed", "estimate", "pass_size_needed"]

#: Optimizer -> bytes of state per trainable parameter (beside any fp32 master copy), and a name.
OPTIMIZER_STATE = {
    "adamw_torch": (8.0, "AdamW: two fp32 moments"),
    "adamw_torch_fused": (8.0, "AdamW: two fp32 moments"),
    "paged_adamw_32bit": (8.0, "paged AdamW: two fp32 moments (pages can spill to CPU RAM)"),
    "adamw_8bit": (2.0, "8-bit AdamW: two 8-bit moments"),
    "adamw_bnb_8bit": (2.0, "8-bit AdamW: two 8-bit moments"),
    "paged_adamw_8bit": (2.0, "paged 8-bit AdamW: two 8-bit moments"),
    "adafactor": (0.0, "Adafactor: factored second moment (rows + columns)"),
    "sgd": (0.0, "SGD without momentum: no state"),
}
#: bitsandbytes 4-bit: 4 bits + one fp32 absmax per block of 64 (double quant: an 8-bit absmax and
#: one fp32 constant per 256 blocks).
QUANT_BYTES = {(4, True): 0.5 + 1 / 64 + 4 / (64 * 256), (4, False): 0.5 + 4 / 64, (8, True): 1.0, (8, False): 1.0}
#: A process that trains on a CUDA GPU holds the CUDA context and kernels there (~0.5 GiB; an
#: assumption from common reports, not measured by llmft: this machine has no GPU).
CUDA_FRAMEWORK_BYTES = int(0.5 * GIB)
#: A process that trains on the CPU: resident size of the interpreter, torch, transformers, peft,
#: tokenizer, data and the Trainer's own machinery, without the model (measured with
#: benchmarks/plan_memory.py on the tiny test model and SmolLM2-135M: 0.53-0.61 GiB).
CPU_FRAMEWORK_BYTES = int(0.6 * GIB)
#: Memory the allocator holds beyond the live tensors that come and go each step (activations,
#: logits), as a fraction of them. CUDA: the caching allocator's fragmentation, assumed 10% (not
#: measured here). CPU: none — the CPU calibration runs (docs/plan.md) are within ~10% without a term
#: for it (llmft/allocator.py: tcmalloc where installed, capped kernel caches).
ALLOCATOR_SLACK = {"cpu": 0.0, "cuda": 0.1}


@dataclass
class Memory:
    """Bytes per device, by what holds them."""

    weights: int = 0
    gradients: int = 0
    optimizer: int = 0
    activations: int = 0
    logits: int = 0
    buffers: int = 0  # communication buckets, DDP's gradient copy, optimizer-step temporaries
    allocator: int = 0  # held by the allocator beyond the live tensors
    framework: int = 0
    overlap: int = 0  # parts above that are never alive at the same time (subtracted)

    @property
    def total(self) -> int:
        parts = asdict(self)
        overlap = parts.pop("overlap")
        return sum(parts.values()) - overlap


@dataclass
class Plan:
    params: int
    trainable: int
    memory: Memory  # per device
    cpu_offload: int  # bytes of CPU RAM per process for offloaded ZeRO state
    tokens_per_micro_batch: int
    knobs: Knobs
    why: dict[str, str] = field(default_factory=dict)  # per Memory part: how it was computed

    @property
    def per_device_bytes(self) -> int:
        return self.memory.total

    def fits(self, budget_bytes: int) -> bool:
        return self.per_device_bytes <= budget_bytes

    def to_dict(self) -> dict:
        return {
            "params": self.params,
            "trainable": self.trainable,
            "per_device_bytes": self.per_device_bytes,
            "memory": asdict(self.memory),
            "cpu_offload_bytes": self.cpu_offload,
            "tokens_per_micro_batch": self.tokens_per_micro_batch,
            "knobs": asdict(self.knobs),
            "why": dict(self.why),
        }


def _saved_module_params(dims, names: tuple[str, ...]) -> int:
    total = 0
    for name in names:
        if name in ("embed_tokens", "wte", "word_embeddings"):
            total += dims.embedding_params
        elif name in ("lm_head", "embed_out", "output"):
            total += dims.vocab * dims.hidden
        else:
            total += sum(l.params for l in dims.linears if l.name == name)
    return total


def adapter_params(dims, knobs: Knobs) -> int:
    """LoRA A and B matrices: rank x (in + out) per targeted linear layer (+ out: DoRA's magnitudes)."""
    per_row = knobs.lora_rank + (1 if knobs.dora else 0)
    return sum(
        (knobs.lora_rank * l.in_features + per_row * l.out_features) * l.count for l in targeted_linears(dims, knobs.lora_targets)
    )


def trainable_params(dims, knobs: Knobs) -> int:
    if knobs.mode == "full":
        return dims.params
    if knobs.mode == "freeze":
        return knobs.freeze_trainable
    return adapter_params(dims, knobs) + _saved_module_params(dims, knobs.modules_to_save)


def _weights(dims, knobs: Knobs, trainable: int) -> tuple[float, float, str]:
    """(bytes of trainable weights, bytes of frozen weights, explanation), before any sharding."""
    n_bytes = knobs.weight_bytes
    if knobs.full_weights:  # freeze: the frozen part is held like the trained part
        per = knobs.compute_bytes if knobs.deepspeed and knobs.mixed else n_bytes
        return trainable * per, (dims.params - trainable) * per, f"{dims.params / 1e6:,.1f}M x {per:g} B"
    adapters = adapter_params(dims, knobs)
    saved = trainable - adapters
    adapter_bytes = knobs.compute_bytes if knobs.deepspeed and knobs.mixed else 4  # peft keeps adapters in fp32
    if knobs.mode == "qlora":
        quantized = dims.linear_params
        per_q = QUANT_BYTES[(knobs.qlora_bits, knobs.double_quant)]
        rest = dims.params - quantized  # embeddings, head, norms: fp32 after prepare_model_for_kbit_training
        frozen = quantized * per_q + rest * 4 + saved * 4
        why = f"{quantized / 1e6:,.1f}M x {per_q:.3g} B ({knobs.qlora_bits}-bit) + {rest / 1e6:,.1f}M x 4 B"
    else:
        base_bytes = knobs.compute_bytes if knobs.deepspeed and knobs.mixed else n_bytes
        frozen = dims.params * base_bytes + saved * base_bytes
        why = f"{dims.params / 1e6:,.1f}M x {base_bytes:g} B"
    return adapters * adapter_bytes, frozen, why + f" + {adapters / 1e6:,.2f}M adapter x {adapter_bytes:g} B"


def estimate(dims, knobs: Knobs) -> Plan:
    """Per-device peak memory of one training process (and the CPU RAM ZeRO offload takes)."""
    n = knobs.num_processes
    stage, offload = knobs.zero_stage, knobs.offload
    why: dict[str, str] = {}
    trainable = trainable_params(dims, knobs)
    train_w, frozen_w, why["weights"] = _weights(dims, knobs, trainable)
    ref = dims.params * knobs.weight_bytes if knobs.reference_model else 0
    if ref:
        why["weights"] += f" + reference copy {dims.params / 1e6:,.1f}M x {knobs.weight_bytes:g} B"

    ds_mixed = knobs.deepspeed and knobs.mixed
    grad_per = knobs.compute_bytes if ds_mixed else (train_w / trainable if trainable else 4)
    state_per, state_name = OPTIMIZER_STATE.get(knobs.optimizer, (8.0, f"{knobs.optimizer}: assumed like AdamW"))
    if knobs.optimizer == "adafactor":
        state_per = 4 * 2 / dims.hidden  # one row and one column of fp32 per weight matrix
    elif state_per == 8.0 and not ds_mixed and grad_per < 4:
        state_per = 2 * grad_per  # torch keeps moments in the parameters' dtype
    master = 4 if ds_mixed else 0

    weights = train_w + frozen_w
    if stage == 3:
        weights /= n
    gradients = trainable * grad_per / (n if stage >= 2 else 1)
    optimizer = trainable * (state_per + master) / (n if stage >= 1 else 1)
    cpu = 0.0
    if offload in ("optimizer", "optimizer_and_params") and stage >= 1:
        cpu += optimizer + trainable * 4 / n  # moments + master, and the fp32 gradient partition
        why["optimizer"] = f"{state_name}{' + fp32 master' if master else ''}: in CPU RAM (offload)"
        optimizer = 0
    else:
        why["optimizer"] = (
            f"{state_name}"
            + (" + fp32 master weights" if master else "")
            + (f", sharded over {n}" if stage >= 1 and n > 1 else "")
        )
    buffers = 0.0
    gathered = 0.0
    if stage == 3:
        gathered = (2 * dims.layer_params + dims.embedding_params) * knobs.compute_bytes  # layers being used + prefetched
        if offload == "optimizer_and_params":
            cpu += weights
            weights = 0
        weights += gathered
    why["gradients"] = f"{trainable / 1e6:,.2f}M x {grad_per:g} B" + (f", sharded over {n}" if stage >= 2 and n > 1 else "")
    why["weights"] += (
        (f", sharded over {n}" if stage == 3 and n > 1 else "")
        + (", partitions in CPU RAM (offload)" if stage == 3 and offload == "optimizer_and_params" else "")
        + (" + gathered layers" if stage == 3 else "")
    )
    weights += ref
    if knobs.deepspeed:
        buffers += 2 * dims.hidden * dims.hidden * knobs.compute_bytes  # reduce / prefetch buckets ('auto' = hidden^2)
    elif n > 1:
        buffers += trainable * grad_per  # DDP's gradient buckets are a second copy of the gradients
    # optimizer step: foreach AdamW on a GPU makes one temporary the size of all states' tensors; the
    # per-tensor CPU loop one the size of the largest tensor
    step_temp = 0.0
    if state_per > 2 and offload == "none":
        step_tensors = trainable / (n if stage >= 1 else 1) if knobs.device == "cuda" else min(trainable, dims.largest_tensor)
        step_temp = step_tensors * 4
    activations, why["activations"] = activation_bytes(dims, knobs)
    head_trains = knobs.mode == "full" or knobs.freeze_head or bool(set(knobs.modules_to_save) & {"lm_head", "embed_tokens"})
    logits, why["logits"] = logits_bytes(dims, knobs, head_trains and stage < 3)
    framework = CUDA_FRAMEWORK_BYTES if knobs.device == "cuda" else CPU_FRAMEWORK_BYTES
    why["framework"] = (
        "CUDA context and kernels (assumed ~0.5 GiB)"
        if knobs.device == "cuda"
        else "CPU process: interpreter, libraries, tokenizer, data, Trainer (measured)"
    )
    fraction = ALLOCATOR_SLACK[knobs.device] if knobs.allocator_slack is None else knobs.allocator_slack
    slack = fraction * (activations + logits)
    why["allocator"] = f"{fraction:.0%} of activations and logits" + (
        ": caching-allocator fragmentation (assumed)"
        if knobs.device == "cuda" and knobs.allocator_slack is None
        else " (llmft returns freed CPU memory to the system)"
        if knobs.device == "cpu" and not fraction
        else ""
    )
    # The peak: at the end of a micro-batch's forward pass (activations, logits) or at the optimizer
    # step (all gradients, the step's temporaries). Gradients live through forward passes only when
    # they accumulate over micro-batches or sit in DeepSpeed's buffers; otherwise only the output
    # head's (computed first) overlap the activations.
    head_grad = (dims.vocab * dims.hidden * grad_per) if head_trains and not knobs.chunked_loss else 0
    if knobs.gradient_accumulation_steps > 1 or knobs.deepspeed:
        dynamic = gradients + max(activations + logits, step_temp)
    else:
        dynamic = max(activations + logits + min(head_grad, gradients), gradients + step_temp)
    overlap = gradients + activations + logits + step_temp - dynamic
    why["overlap"] = "not alive together: the peak is the end of a forward pass or the optimizer step" if overlap else ""
    why["buffers"] = "DeepSpeed buckets" if knobs.deepspeed else "DDP gradient buckets" if n > 1 else "optimizer-step temporaries"
    memory = Memory(
        weights=int(weights),
        gradients=int(gradients),
        optimizer=int(optimizer),
        activations=activations,
        logits=logits,
        buffers=int(buffers + step_temp),
        allocator=int(slack),
        framework=framework,
        overlap=int(overlap),
    )
    return Plan(dims.params, trainable, memory, int(cpu), knobs.tokens, knobs, why)


def checkpointing_needed(dims, knobs: Knobs, budget_bytes: int) -> bool:
    """True when the run does not fit `budget_bytes` without gradient checkpointing but does with it."""
    without = estimate(dims, replace(knobs, gradient_checkpointing=False))
    return not without.fits(budget_bytes) and estimate(dims, replace(knobs, gradient_checkpointing=True)).fits(budget_bytes)


#: The pass sizes `training.max_tokens_per_forward: auto` picks from, largest first.
PASS_SIZES = (4096, 2048, 1024, 512, 256)


def pass_size_needed(dims, knobs: Knobs, budget_bytes: int) -> int | None:
    """`training.max_tokens_per_forward: auto`: None (whole micro-batches) when they fit `budget_bytes`;
    else the largest of PASS_SIZES below a micro-batch's tokens that fits (the smallest if none does)."""
    if estimate(dims, replace(knobs, forward_tokens=None)).fits(budget_bytes):
        return None
    sizes = [n for n in PASS_SIZES if n < knobs.tokens]
    for n in sizes:
        if estimate(dims, replace(knobs, forward_tokens=n)).fits(budget_bytes):
            return n
    return sizes[-1] if sizes else None


#: The alternatives `llmft plan` compares: (ZeRO stage, offload).
ZERO_VARIANTS = (
    (0, "none"),
    (1, "none"),
    (2, "none"),
    (3, "none"),
    (2, "optimizer"),
    (3, "optimizer"),
    (3, "optimizer_and_params"),
)


def compare_zero(dims, knobs: Knobs) -> list[Plan]:
    return [estimate(dims, replace(knobs, zero_stage=s, offload=o)) for s, o in ZERO_VARIANTS]
