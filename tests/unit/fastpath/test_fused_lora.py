"""The one-function LoRA linear layer against peft's own forward: outputs and gradients (input, A,
B) in fp32 and bf16, through a whole model; and every case it does not cover goes to peft."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from tiny import build_model

from llmft.fastpath import fused_lora
from llmft.fastpath.fused_lora import apply_fused_lora


def lora_model(dtype=torch.float32, dropout=0.0, **config):
    torch.manual_seed(0)
    model = get_peft_model(
        build_model(64).to(dtype), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=dropout, **config)
    )
    for name, p in model.named_parameters():
        if "lora_" in name:  # peft starts B at zero; make both sides of the adapter matter
            torch.nn.init.normal_(p, std=0.1)
            p.data = p.data.float()
    return model


def run(model, ids):
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=next(model.parameters()).dtype == torch.bfloat16):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    grads = {n: p.grad.float().clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.float().item(), grads


def test_same_loss_and_adapter_gradients_as_peft_in_fp32():
    ids = torch.randint(0, 64, (2, 12))
    plain, fused = lora_model(), lora_model()
    assert apply_fused_lora(fused) == 14  # 2 layers x 7 linear layers
    loss_a, grads_a = run(plain, ids)
    loss_b, grads_b = run(fused, ids)
    assert abs(loss_a - loss_b) < 1e-5
    assert grads_a.keys() == grads_b.keys() and len(grads_a) == 28  # every A and B
    for name in grads_a:
        assert (grads_a[name] - grads_b[name]).abs().max().item() <= 1e-5 * max(grads_a[name].abs().max().item(), 1.0), name


def test_bf16_is_as_close_to_fp32_as_peft_in_bf16():
    ids = torch.randint(0, 64, (2, 12))
    _, exact = run(lora_model(torch.float32), ids)
    _, plain = run(lora_model(torch.bfloat16), ids)
    fused_model = lora_model(torch.bfloat16)
    apply_fused_lora(fused_model)
    _, fused = run(fused_model, ids)

    def worst(grads):
        return max(((grads[n] - exact[n]).abs().max() / exact[n].abs().max()).item() for n in exact)

    assert worst(fused) <= 1.25 * worst(plain)


def test_it_is_really_used(monkeypatch):
    calls = []
    original = fused_lora._LoRALinear.apply
    monkeypatch.setattr(fused_lora._LoRALinear, "apply", lambda *a: calls.append(1) or original(*a))
    model = lora_model()
    apply_fused_lora(model)
    run(model, torch.randint(0, 64, (1, 5)))
    assert len(calls) == 14


def _fused_calls(model, monkeypatch, ids):
    """(fused layer calls, logits) of a no-gradient forward: the fused product without an autograd node."""
    calls = []
    original = fused_lora._no_grad_product
    monkeypatch.setattr(fused_lora, "_no_grad_product", lambda *a: calls.append(1) or original(*a))
    monkeypatch.setattr(fused_lora._LoRALinear, "apply", lambda *a: pytest.fail("an autograd node without gradient"))
    with torch.no_grad():
        out = model(input_ids=ids).logits
    return len(calls), out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_no_gradient_forward_equals_the_autograd_function_and_follows_updates(dtype):
    """Without gradient (rollouts, kto's KL pass) the layer skips the autograd node and keeps A and B
    cast to the input's dtype until an update: the same values, bit for bit, before and after one."""
    model = lora_model(dtype)
    apply_fused_lora(model)
    ids = torch.randint(0, 64, (2, 9))

    def logits(grad):
        with torch.set_grad_enabled(grad), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            return model(input_ids=ids).logits.detach()

    before = logits(False)
    assert torch.equal(before, logits(True))
    layer = next(m for m in model.modules() if hasattr(m, "_llmft_adapter_copies"))
    held = layer._llmft_adapter_copies
    assert torch.equal(logits(False), before) and layer._llmft_adapter_copies is held  # kept while unchanged
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.add_(0.05)  # what an optimizer step does: in place, the version bumped
    updated = logits(False)
    assert layer._llmft_adapter_copies is not held
    assert torch.equal(updated, logits(True)) and not torch.equal(updated, before)


def test_dropout_merged_and_disabled_adapters_go_to_peft(monkeypatch):
    ids = torch.randint(0, 64, (1, 6))
    with_dropout = lora_model(dropout=0.1)
    apply_fused_lora(with_dropout)
    assert _fused_calls(with_dropout, monkeypatch, ids)[0] == 0

    model = lora_model()
    reference = _fused_calls(model, monkeypatch, ids)[1]
    apply_fused_lora(model)
    calls, fused_out = _fused_calls(model, monkeypatch, ids)
    assert calls == 14 and torch.allclose(fused_out, reference, atol=1e-5)
    with model.disable_adapter():
        calls, base_out = _fused_calls(model, monkeypatch, ids)
    assert calls == 0 and not torch.allclose(base_out, reference, atol=1e-3)
    model.merge_adapter()
    calls, merged_out = _fused_calls(model, monkeypatch, ids)
    assert calls == 0 and torch.allclose(merged_out, reference, atol=1e-4)


def test_dora_goes_to_peft(monkeypatch):
    model = lora_model(use_dora=True)
    apply_fused_lora(model)
    assert _fused_calls(model, monkeypatch, torch.randint(0, 64, (1, 6)))[0] == 0
