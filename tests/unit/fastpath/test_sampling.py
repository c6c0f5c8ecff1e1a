"""Rollout sampling (`llmft.fastpath.sampling`) against plain peft generation on the tiny model: the
merged LoRA layers give peft's logits and leave the base weights untouched; prompts shared between
rows are prefilled once and the same tokens come out, greedy and seeded sampling alike; every case
it does not cover runs peft's layers or plain `generate`."""

from __future__ import annotations

import contextlib

import pytest
import torch
from peft import LoraConfig, get_peft_model
from tiny import build_model
from transformers import GenerationConfig

from llmft.fastpath import sampling
from llmft.fastpath.fused_lora import apply_fused_lora
from llmft.fastpath.sampling import fast_sampling, generate_sharing_prompts, merged_lora

VOCAB = 64
PAD = 0


def lora_model(dtype=torch.float32, dropout=0.0, **config):
    torch.manual_seed(0)
    model = get_peft_model(
        build_model(VOCAB).to(dtype), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=dropout, **config)
    )
    for name, p in model.named_parameters():
        if "lora_" in name:  # peft starts B at zero; make the adapter matter
            torch.nn.init.normal_(p, std=0.1)
            p.data = p.data.float()
    return model.eval()


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_merged_layers_give_peft_logits_and_leave_the_base_untouched():
    model = lora_model()
    ids = torch.randint(1, VOCAB, (3, 10))
    base = {n: p.clone() for n, p in model.named_parameters() if "base_layer" in n}
    want = logits(model, ids)
    with merged_lora(model) as merged:
        got = logits(model, ids)
    assert merged == 14  # 2 layers x 7 linear layers
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    assert all(torch.equal(p, base[n]) for n, p in model.named_parameters() if "base_layer" in n)
    assert all("forward" not in m.__dict__ for m in model.modules() if hasattr(m, "lora_A"))
    torch.testing.assert_close(logits(model, ids), want, rtol=0, atol=0)


def test_the_adapter_counts_in_the_merged_product():
    model = lora_model()
    ids = torch.randint(1, VOCAB, (2, 8))
    with model.disable_adapter():
        without = logits(model, ids)
    with merged_lora(model):
        merged = logits(model, ids)
    assert (merged - without).abs().max() > 1e-2


def test_fused_lora_forward_is_put_back():
    model = lora_model()
    apply_fused_lora(model)
    before = {id(m): m.__dict__["forward"] for m in model.modules() if hasattr(m, "lora_A")}
    with merged_lora(model) as merged:
        assert merged == 14
    assert {id(m): m.__dict__["forward"] for m in model.modules() if hasattr(m, "lora_A")} == before


@pytest.mark.parametrize(
    "case",
    ["dropout in training", "dora", "bf16 base", "autocast", "adapter disabled", "no room"],
)
def test_what_is_not_plain_lora_runs_peft_layers(case, monkeypatch):
    model = lora_model(
        dtype=torch.bfloat16 if case == "bf16 base" else torch.float32,
        dropout=0.1 if case == "dropout in training" else 0.0,
        use_dora=case == "dora",
    )
    if case == "dropout in training":
        model.train()
    if case == "no room":
        monkeypatch.setattr(sampling, "free_memory", lambda device: 1000)
    context = {
        "autocast": torch.autocast("cpu", dtype=torch.bfloat16),
        "adapter disabled": model.disable_adapter(),
    }.get(case)
    if context is not None:
        with context, merged_lora(model) as merged:
            pass
    else:
        with merged_lora(model) as merged:
            pass
    assert merged == 0
    assert all("forward" not in m.__dict__ for m in model.modules() if hasattr(m, "lora_A"))


def test_dropout_outside_training_is_no_dropout():
    model = lora_model(dropout=0.1)  # eval(): the dropout is the identity
    with merged_lora(model) as merged:
        assert merged == 14


def left_padded(rows):
    width = max(len(r) for r in rows)
    ids = torch.tensor([[PAD] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


# two prompts of different lengths, each asked three times, interleaved (left padding differs)
PROMPTS = [[5, 9, 11, 3], [7, 2, 8, 30, 12, 4, 6]]
ROWS = [PROMPTS[0], PROMPTS[1], PROMPTS[0], PROMPTS[1], PROMPTS[0], PROMPTS[1]]


@pytest.mark.parametrize("sample", [False, True])
def test_shared_prompts_are_prefilled_once_and_give_the_same_tokens(sample):
    model = lora_model()
    ids, mask = left_padded(ROWS)
    config = GenerationConfig(max_new_tokens=6, do_sample=sample, temperature=0.9, top_k=0, pad_token_id=PAD, eos_token_id=1)

    torch.manual_seed(3)
    want = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
    widths = []
    hook = model.get_base_model().model.register_forward_pre_hook(
        lambda module, args, kwargs: widths.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True
    )
    torch.manual_seed(3)
    got = generate_sharing_prompts(model, model.generate, input_ids=ids, attention_mask=mask, generation_config=config)
    hook.remove()
    assert torch.equal(got, want)
    assert widths[0] == (2, ids.shape[1] - 1)  # each distinct prompt once, all but its last token
    assert widths[1] == (6, 1)  # generation goes on from each row's last prompt token


def test_rows_without_repeats_go_to_generate_as_they_are():
    calls = []
    ids, mask = left_padded(PROMPTS)
    generate_sharing_prompts(None, lambda **kwargs: calls.append(kwargs), input_ids=ids, attention_mask=mask)
    assert len(calls) == 1 and "past_key_values" not in calls[0]


def test_fast_sampling_samples_what_peft_samples(merge_counts):
    model, plain = lora_model(), lora_model()
    description = fast_sampling(model)
    assert "merged" in description
    ids, mask = left_padded(ROWS)
    config = GenerationConfig(max_new_tokens=6, do_sample=True, temperature=0.9, top_k=0, pad_token_id=PAD, eos_token_id=1)
    torch.manual_seed(5)
    want = plain.generate(input_ids=ids, attention_mask=mask, generation_config=config)
    torch.manual_seed(5)
    got = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
    assert torch.equal(got, want)
    assert merge_counts == [14]


def test_free_memory_reads_what_the_kernel_reports():
    from pathlib import Path

    from llmft.plan.machine import free_memory

    meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    reported = int(meminfo["MemAvailable"].split()[0]) * 1024
    assert abs(free_memory(torch.device("cpu")) - reported) < 256 * 2**20  # read moments apart


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_eval_answers_through_merged_layers_are_peft_answers(temperature, tokenizer, merge_counts, monkeypatch):
    """`llmft eval`'s batched answers: an adapter's layers run merged, the answers are peft's own;
    with the adapter off (the base's answers) nothing is merged."""
    from llmft.evaluation.generation import generate_with_ids

    torch.manual_seed(0)
    model = get_peft_model(
        build_model(len(tokenizer)), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0)
    )
    for name, p in model.named_parameters():
        if "lora_" in name:
            torch.nn.init.normal_(p, std=0.1)
    model.eval()
    prompts = [tokenizer(text)["input_ids"] for text in ["hello there", "a b", "the sea is wide and blue"]]
    got = generate_with_ids(model, tokenizer, prompts, 5, temperature=temperature, batch_size=2)
    generate_with_ids(model, tokenizer, prompts, 5, adapter_off=True)
    assert merge_counts == [14]  # the adapter's answers only
    monkeypatch.setattr(sampling, "merged_lora", lambda m: contextlib.nullcontext(0))
    want = generate_with_ids(model, tokenizer, prompts, 5, temperature=temperature, batch_size=2)
    assert got == want
