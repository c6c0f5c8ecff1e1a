"""The memory plan's arithmetic, worked by hand on a Llama-2-7B-shaped model, and its orderings."""

from __future__ import annotations

from dataclasses import replace

import pytest

from llmft.plan import Knobs, ModelDims, Schedule, checkpointing_needed, compare_zero, estimate
from llmft.plan.activations import layer_activation_bytes, logits_bytes
from llmft.plan.estimate import GIB, adapter_params

# Llama-2-7B: hidden 4096, 32 layers, 32 heads, MLP 11008, vocabulary 32000, untied head
L7B = ModelDims.llama(hidden=4096, layers=32, heads=32, intermediate=11008, vocab=32000)
P = 6_738_415_616  # 2 x 32000 x 4096 + 32 x (4 x 4096^2 + 3 x 4096 x 11008 + 2 x 4096) + 4096
LORA_QV = 8_388_608  # 32 layers x (q, v) x 16 x (4096 + 4096)


def knobs(**kw) -> Knobs:
    return Knobs(**{"micro_batch_size": 1, "seq_len": 2048, "device": "cuda", **kw})


def test_parameter_count():
    assert L7B.params == P
    assert L7B.kv_dim == 4096 and L7B.head_params == 32000 * 4096


def test_full_finetune_one_gpu():
    """Mixed precision, plain PyTorch: fp32 weights (they are the master copy), fp32 gradients,
    two fp32 AdamW moments: 4 + 4 + 8 = 16 bytes per parameter."""
    m = estimate(L7B, knobs(mode="full", weight_bytes=4)).memory
    assert (m.weights, m.gradients, m.optimizer) == (4 * P, 4 * P, 8 * P)


def test_lora_one_gpu():
    """bf16 frozen base (2 B), fp32 adapters (4 B) with fp32 gradients and two fp32 moments."""
    plan = estimate(L7B, knobs(mode="lora", lora_rank=16, lora_targets=("q_proj", "v_proj"), weight_bytes=2))
    assert plan.trainable == LORA_QV == adapter_params(L7B, plan.knobs)
    m = plan.memory
    assert m.weights == 2 * P + 4 * LORA_QV
    assert (m.gradients, m.optimizer) == (4 * LORA_QV, 8 * LORA_QV)


def test_zero3_divides_everything_by_the_processes():
    """ZeRO-3 over 8 GPUs, bf16: weights 2 B and gradients 2 B per parameter, the optimizer's fp32
    master (4 B) and moments (8 B), each / 8; plus the layers gathered for compute."""
    m = estimate(L7B, knobs(mode="full", weight_bytes=4, num_processes=8, zero_stage=3)).memory
    gathered = (2 * (L7B.linear_params // 32 + 2 * 4096) + 32000 * 4096) * 2
    assert m.weights == int(2 * P / 8 + gathered)
    assert m.gradients == int(2 * P / 8)
    assert m.optimizer == int(12 * P / 8)


def test_zero1_and_2_shard_optimizer_then_gradients():
    z1 = estimate(L7B, knobs(mode="full", weight_bytes=4, num_processes=8, zero_stage=1)).memory
    z2 = estimate(L7B, knobs(mode="full", weight_bytes=4, num_processes=8, zero_stage=2)).memory
    assert z1.weights == z2.weights == 2 * P
    assert (z1.gradients, z2.gradients) == (2 * P, int(2 * P / 8))
    assert z1.optimizer == z2.optimizer == int(12 * P / 8)


def test_offload_moves_optimizer_and_params_to_cpu():
    plan = estimate(L7B, knobs(mode="full", weight_bytes=4, num_processes=8, zero_stage=3, offload="optimizer_and_params"))
    assert plan.memory.optimizer == 0
    assert plan.cpu_offload == int(12 * P / 8 + 4 * P / 8 + 2 * P / 8)  # master + moments, fp32 gradients, weights


def test_activation_and_logit_arithmetic():
    """fp32, no checkpointing: 32 x hidden + 16 x MLP + 8 x key/value bytes per token and layer;
    unchunked logits keep 10 + 4 bytes per token and vocabulary entry."""
    k = knobs(mode="full", precision="fp32", chunked_loss=False)
    assert layer_activation_bytes(L7B, k) == 32 * 4096 + 16 * 11008 + 8 * 4096
    assert logits_bytes(L7B, k, head_trains=True)[0] == 2048 * 32000 * 14
    assert estimate(L7B, k).memory.activations == 2048 * (32 * 339_968 + 16 * 4096)


def test_eight_bit_optimizer_states():
    full = estimate(L7B, knobs(mode="full", weight_bytes=4, optimizer="adamw_8bit")).memory
    assert full.optimizer == 2 * P


@pytest.mark.parametrize("mode", ["full", "lora", "qlora"])
@pytest.mark.parametrize("offload", [False, True])
def test_higher_zero_stage_never_needs_more_per_gpu(mode, offload):
    base = knobs(mode=mode, weight_bytes=4 if mode == "full" else 2, num_processes=8)
    totals = [
        estimate(L7B, replace(base, zero_stage=s, offload="optimizer" if offload and s else "none")).per_device_bytes
        for s in (0, 1, 2, 3)
    ]
    assert totals == sorted(totals, reverse=True), totals
    if mode == "full":
        assert totals[3] < totals[0] / 3


def test_offload_lowers_the_gpu_share():
    base = knobs(mode="full", weight_bytes=4, num_processes=8, zero_stage=3)
    plans = [estimate(L7B, replace(base, offload=o)) for o in ("none", "optimizer", "optimizer_and_params")]
    gpu = [p.per_device_bytes for p in plans]
    cpu = [p.cpu_offload for p in plans]
    assert gpu[0] > gpu[1] > gpu[2] and cpu[0] < cpu[1] < cpu[2]


@pytest.mark.parametrize("mode,precision", [("full", "fp32"), ("lora", "bf16")])
def test_checkpointing_and_chunked_loss_lower_activations(mode, precision):
    """(Full bf16 runs also keep autocast's bf16 weight copies until forward ends, checkpointed or not.)"""
    base = knobs(mode=mode, weight_bytes=4 if mode == "full" else 2, micro_batch_size=4, precision=precision)
    plain = estimate(L7B, base).memory
    checkpointed = estimate(L7B, replace(base, gradient_checkpointing=True)).memory
    unchunked = estimate(L7B, replace(base, chunked_loss=False)).memory
    assert checkpointed.activations < plain.activations / 10
    assert plain.logits < unchunked.logits


def test_activations_grow_with_tokens():
    sizes = [estimate(L7B, knobs(mode="lora", weight_bytes=2, seq_len=n)).memory.activations for n in (512, 1024, 2048)]
    assert sizes[0] < sizes[1] < sizes[2] and sizes[2] == pytest.approx(4 * sizes[0], rel=0.01)


def test_compare_zero_lists_every_variant():
    plans = compare_zero(L7B, knobs(mode="full", num_processes=8))
    assert [(p.knobs.zero_stage, p.knobs.offload) for p in plans] == [
        (0, "none"),
        (1, "none"),
        (2, "none"),
        (3, "none"),
        (2, "optimizer"),
        (3, "optimizer"),
        (3, "optimizer_and_params"),
    ]


def test_checkpointing_needed_only_when_it_makes_the_difference():
    k = knobs(mode="lora", weight_bytes=2, micro_batch_size=8, seq_len=4096)
    without = estimate(L7B, k).per_device_bytes
    with_gc = estimate(L7B, replace(k, gradient_checkpointing=True)).per_device_bytes
    assert checkpointing_needed(L7B, k, (without + with_gc) // 2)
    assert not checkpointing_needed(L7B, k, without + GIB)  # fits anyway
    assert not checkpointing_needed(L7B, k, with_gc - GIB)  # does not fit either way


def test_schedule():
    s = Schedule(
        micro_batch_size=4,
        gradient_accumulation_steps=8,
        num_processes=2,
        examples=1000,
        tokens_per_example=300.0,
        max_length=1024,
        epochs=3,
    )
    assert s.global_batch == 64
    assert s.steps_per_epoch == 16  # 500 per process -> 125 micro-batches -> 16 optimizer steps
    assert s.total_steps == 48
    assert s.tokens_per_step == 64 * 300
    unknown = replace(s, examples=None, tokens_per_example=None)
    assert unknown.steps_per_epoch is None and unknown.total_steps is None
    assert unknown.tokens_per_step == 64 * 1024  # the most it can be


def test_passes_hold_the_activations_of_one_pass():
    """training.max_tokens_per_forward: 4 x 512 tokens in passes of 512 keep one pass's activations;
    a pass never cuts an example, so 2,048-token sequences stay whole."""
    whole = knobs(mode="lora", weight_bytes=2, micro_batch_size=4, seq_len=512)
    passes = replace(whole, forward_tokens=512)
    assert passes.pass_tokens == 512 and whole.pass_tokens == passes.tokens == 2048
    assert estimate(L7B, passes).memory.activations == estimate(L7B, replace(whole, micro_batch_size=1)).memory.activations
    assert replace(passes, seq_len=2048).pass_tokens == 2048 * 1  # one long example per pass
    assert estimate(L7B, passes).tokens_per_micro_batch == 2048


def test_auto_pass_size_is_the_largest_that_fits():
    """training.max_tokens_per_forward: auto — whole micro-batches when they fit, else the largest pass size
    that does, else the smallest."""
    from llmft.plan.estimate import pass_size_needed

    whole = knobs(mode="lora", weight_bytes=2, micro_batch_size=16, seq_len=256)  # 4,096 tokens
    need = {n: estimate(L7B, replace(whole, forward_tokens=n)).per_device_bytes for n in (None, 2048, 1024, 512, 256)}
    assert need[None] > need[2048] > need[1024] > need[512] > need[256]
    assert pass_size_needed(L7B, whole, need[None]) is None
    assert pass_size_needed(L7B, whole, need[None] - 1) == 2048
    assert pass_size_needed(L7B, whole, need[1024]) == 1024
    assert pass_size_needed(L7B, whole, need[256] - 1) == 256  # nothing fits: the least memory
    assert pass_size_needed(L7B, replace(whole, micro_batch_size=1, seq_len=200), 1) is None  # nothing smaller to cut to
