"""Per-token losses at learning rate 0 (fp32): llmft's default path — padding-free micro-batches,
per-example attention, fused ops, chunked loss — against TRL's tokenization run through the plain
model one row at a time (the benchmark's check, on the tiny model)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from conftest import CONVERSATIONS

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from jobs import Job, prompt_completion  # noqa: E402
from loss_check import compare, llmft_losses, reference_losses  # noqa: E402


def test_every_common_token_loss_agrees(tiny_model_dir, tmp_path):
    rows = [prompt_completion(c[-2]["content"], c[-1]["content"]) for c in CONVERSATIONS] * 2
    job = Job("tiny", {"path": str(tiny_model_dir)}, rows, max_length=128, micro=3, precision="fp32")
    result = compare(reference_losses(job), llmft_losses(job, tmp_path / "run"))
    assert result["unmatched_rows"] == 0
    assert result["tokens"] >= 8 * 3
    assert result["max_abs_diff"] < 1e-4
    assert result["only_llmft"] == 0  # llmft trains nothing TRL does not
    assert result["only_reference"] == len(rows)  # TRL's extra: the newline after each end-of-turn


@pytest.mark.parametrize("variant", [{"use_rslora": True}, {"use_dora": True}], ids=["rslora", "dora"])
def test_lora_variants_lose_on_the_fast_path_what_pefts_forward_loses(variant, tiny_model_dir, tmp_path, monkeypatch):
    """rsLoRA on the fused LoRA kernel (it reads the layer's scaling), DoRA on peft's own forward:
    per-token losses equal peft's forward of the same adapter, one row at a time, unpadded."""
    from conftest import make_recipe, write_jsonl

    from llmft.config import validate_recipe
    from llmft.data.collate import FlatCollator
    from llmft.data.dataset import prepare_data
    from llmft.fastpath import fused_lora
    from llmft.fastpath.chunked_loss import per_token_losses
    from llmft.fastpath.decide import apply, choose
    from llmft.fastpath.trainer import final_hidden
    from llmft.run import prepare

    data = write_jsonl(tmp_path / "sft.jsonl", [{"messages": c} for c in CONVERSATIONS])
    recipe = validate_recipe(make_recipe(tiny_model_dir, data, tmp_path / "run", finetune=variant))
    ctx = prepare(recipe)
    model = ctx.model
    torch.manual_seed(1)
    for name, param in model.named_parameters():
        if "lora_B" in name:  # peft starts B at zero; make the adapter matter
            torch.nn.init.normal_(param, std=0.1)
    examples = prepare_data("sft", recipe.data, ctx.tokenizer, recipe.training.seed).train
    reference = []
    with torch.no_grad():
        for e in examples:
            ids = torch.tensor([e.input_ids])
            nll = torch.nn.functional.cross_entropy(model(input_ids=ids).logits[0, :-1], ids[0, 1:], reduction="none")
            reference += [nll[t - 1].item() for t in range(1, len(e.labels)) if e.labels[t] != -100]
    path = choose(recipe, model, ctx.settings)
    assert path.fused_ops and path.chunked_loss and path.batching == "padding-free"
    assert ("DoRA layers run peft's own forward" in path.describe()) is bool(variant.get("use_dora"))
    calls = []
    original = fused_lora._no_grad_product  # the fused layer's product without gradient
    monkeypatch.setattr(fused_lora, "_no_grad_product", lambda *a: calls.append(1) or original(*a))
    apply(path, model, ctx.settings)
    inputs = FlatCollator()([vars(e) for e in examples])
    labels = inputs.pop("labels")
    with torch.no_grad():
        hidden, head = final_hidden(model, inputs)
    ours = per_token_losses(hidden, head.weight, labels).tolist()
    assert len(ours) == len(reference) >= 20
    assert max(abs(a - b) for a, b in zip(ours, reference)) < 1e-4
    assert bool(calls) is not bool(variant.get("use_dora"))  # rsLoRA fused, DoRA not
