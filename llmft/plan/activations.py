"""Activations and logits of one micro-batch: what autograd keeps from the forward pass for backward."""

from __future__ import annotations

from llmft.plan.knobs import Knobs

#: Output-head logits elements per chunk of the chunked cross-entropy (llmft.fastpath.chunked_loss).
CHUNK_ELEMENTS = 1 << 23
#: Bytes one decoder layer keeps for backward, per token: (per hidden unit, per MLP unit, per
#: key/value unit), by (finetune kind, compute precision, whether peft casts adapter inputs to fp32,
#: whether llmft's fused RMSNorm/SwiGLU replace transformers' modules). Llama-shaped models, sdpa
#: attention, no dropout. "measured": slopes of torch's memory-profiler peak of live tensors over
#: models of 2 and 4 layers and different widths, 2048-token micro-batches (full bf16 agrees with
#: autograd's saved-tensor count within 1%); "saved": autograd's saved-tensor count; "derived":
#: a measured row adjusted by what the difference removes. LoRA's rank-wide outputs come on top.
LAYER_BYTES = {
    ("full", "mixed", False, False): (30.0, 8.0, 4.0),  # measured
    ("full", "mixed", False, True): (22.0, 6.0, 4.0),  # measured
    ("full", "fp32", False, False): (32.0, 16.0, 8.0),  # saved
    ("full", "fp32", False, True): (24.0, 8.0, 8.0),  # derived
    ("lora", "mixed", False, False): (16.2, 8.05, 0.0),  # measured
    ("lora", "mixed", False, True): (12.2, 6.05, 0.0),  # measured
    ("lora", "mixed", True, False): (24.2, 8.05, 0.0),  # derived: + the fp32 adapter inputs (saved)
    ("lora", "mixed", True, True): (20.2, 6.05, 0.0),  # derived
    ("lora", "fp32", False, False): (24.0, 16.0, 8.0),  # saved
    ("lora", "fp32", False, True): (16.0, 8.0, 8.0),  # derived
}


def targeted_linears(dims, targets: tuple[str, ...] | str) -> list:
    if targets == "all-linear":
        return list(dims.linears)
    wanted = {t.rsplit(".", 1)[-1] for t in targets}
    return [linear for linear in dims.linears if linear.name in wanted]


def layer_activation_bytes(dims, knobs: Knobs) -> float:
    """Bytes saved for backward per token by one decoder layer."""
    a = knobs.compute_bytes
    kind = "full" if knobs.full_weights else "lora"
    cast = kind == "lora" and knobs.mixed and knobs.lora_input_cast
    per_h, per_i, per_kv = LAYER_BYTES[(kind, "mixed" if knobs.mixed else "fp32", cast, knobs.fused_ops)]
    value = per_h * dims.hidden + per_i * dims.intermediate + per_kv * dims.kv_dim
    if kind == "lora":
        per_layer = [(l.in_features, l.count / max(dims.layers, 1)) for l in targeted_linears(dims, knobs.lora_targets)]
        rank_bytes = 4 if cast or not knobs.mixed else a
        value += sum(rank_bytes * knobs.lora_rank * c for _, c in per_layer)  # the rank-wide A outputs
        if knobs.lora_dropout > 0:  # the dropped-out input of every adapted layer, and its mask
            value += sum(((4 if cast else a) + 1) * i * c for i, c in per_layer)
    if knobs.attn_implementation == "eager":  # the [heads, seq, seq] attention probabilities, fp32 and compute dtype
        value += dims.heads * knobs.seq_len * (4 + a)
    return value


def activation_bytes(dims, knobs: Knobs) -> tuple[int, str]:
    """Activations of one micro-batch at the end of its forward pass."""
    t = knobs.pass_tokens
    layer = layer_activation_bytes(dims, knobs)
    outside = 16 * dims.hidden  # embeddings output, final norm
    if knobs.gradient_checkpointing:
        residual = 4 if (knobs.full_weights and knobs.weight_bytes == 4) or not knobs.mixed else knobs.compute_bytes
        total = t * (dims.layers * dims.hidden * residual + layer + outside)
        why = (
            f"{dims.layers} layer inputs x {t:,} tokens x {dims.hidden * residual:,} B, "
            f"+ one layer recomputed in backward ({layer / 1024:,.1f} KiB/token)"
        )
    else:
        total = t * (dims.layers * layer + outside)
        why = f"{dims.layers} layers x {t:,} tokens x {layer / 1024:,.1f} KiB (no gradient checkpointing)"
    if knobs.full_weights and knobs.mixed and not knobs.deepspeed and knobs.weight_bytes == 4:
        # autocast keeps a bf16/fp16 copy of every fp32 weight it multiplies, until backward is done
        total += (dims.linear_params + dims.vocab * dims.hidden) * knobs.compute_bytes
        why += f" + autocast's {knobs.precision} weight copies"
    return int(total), why


def logits_bytes(dims, knobs: Knobs, head_trains: bool) -> tuple[int, str]:
    t, a = knobs.pass_tokens, knobs.compute_bytes
    if knobs.task == "reward":
        return t * 4, "a one-score head"
    if knobs.chunked_loss:
        grad_weight = dims.vocab * dims.hidden * 4 if head_trains else 0  # fp32 head gradient, built in forward
        chunk = min(CHUNK_ELEMENTS, t * dims.vocab)
        # per chunk: logits in the compute dtype and in fp32, their gradient in the compute dtype
        total = chunk * (10 + 2 * a) + 2 * t * dims.hidden * a + grad_weight
        return int(total), f"chunked cross-entropy: {chunk // dims.vocab:,}-token chunks of {dims.vocab:,} logits"
    total = t * dims.vocab * (10 + a)
    return int(total), (f"{t:,} tokens x {dims.vocab:,} logits x {10 + a} B (logits, fp32 copy and log-softmax, their gradients)")
