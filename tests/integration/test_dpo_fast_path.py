"""dpo on the fast path: TRL's DPOTrainer scores a micro-batch's padded chosen/rejected rows as one
padding-free row (`llmft.fastpath.unpadded_scoring`). Per-token log-probs (and TRL's other per-token
outputs) equal TRL's padded computation and a plain transformers log-softmax, for the policy and for
the reference (adapter disabled); training gives the padded run's losses; the backbone never sees a
pad token, and each pair's prompt once."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_logged_alike, perturb_adapter
from test_dpo import dpo_recipe

from llmft.builders import get_builder
from llmft.fastpath.decide import causal_lm
from llmft.fastpath.unpadded_scoring import MIN_SHARED, flatten
from llmft.run import prepare, train

#: TRL's per-token outputs DPO reads (log-probs for the loss; the rest for its metrics).
FIELDS = ("log_probs", "entropy", "mean_logits", "is_top1")


def _trainer(model_dir, tmp_path, mode="lora", **data):
    recipe = dpo_recipe(model_dir, tmp_path, mode, evaluate=False, data={"max_train_samples": 8, **data})
    ctx = prepare(recipe)
    return get_builder("dpo", mode)(ctx)


def _scores(trainer, batch, disabled: bool = False) -> dict[str, torch.Tensor]:
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    model = trainer.model.eval()
    kwargs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        if disabled:
            with model.disable_adapter():
                out = model(**kwargs, labels=labels, fused_lm_head=True, use_cache=False)
        else:
            out = model(**kwargs, labels=labels, fused_lm_head=True, use_cache=False)
    return {name: getattr(out, name) for name in FIELDS}


def _plain_log_probs(model, batch) -> torch.Tensor:
    """log p(token t+1 | ...) from the model's own logits, zero where TRL's loss ignores the token."""
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    logp = logits[:, :-1].float().log_softmax(-1).gather(2, batch["input_ids"][:, 1:, None]).squeeze(2)
    return logp * batch["completion_mask"][:, 1:]


@pytest.fixture(scope="module")
def both(tiny_model_dir, tmp_path_factory):
    """The same 4 pairs through a padding-free trainer and a padded one, with the same adapter."""
    fast = _trainer(tiny_model_dir, tmp_path_factory.mktemp("fast"))
    padded = _trainer(tiny_model_dir, tmp_path_factory.mktemp("padded"), padding_free=False)
    for trainer in (fast, padded):
        torch.manual_seed(0)
        perturb_adapter(trainer.model)
    batch = fast.data_collator([fast.train_dataset[i] for i in range(4)])
    assert bool((batch["attention_mask"] == 0).any()), "the pairs must need padding for the comparison to mean anything"
    return fast, padded, batch


@pytest.mark.parametrize("disabled", [False, True], ids=["policy", "reference"])
def test_scores_equal_trl_padded_computation(both, disabled):
    fast, padded, batch = both
    got, want = _scores(fast, batch, disabled), _scores(padded, batch, disabled)
    for name in FIELDS:
        torch.testing.assert_close(got[name].float(), want[name].float(), atol=1e-5, rtol=1e-5, msg=name)
    assert got["log_probs"].abs().sum() > 0
    model = fast.model
    if disabled:
        with model.disable_adapter():
            plain = _plain_log_probs(model, batch)
    else:
        plain = _plain_log_probs(model, batch)
    torch.testing.assert_close(got["log_probs"], plain, atol=1e-5, rtol=1e-5)


def test_backbone_sees_no_pad_token(both):
    fast, padded, batch = both
    seen = {}

    def record(name):
        def hook(module, args, kwargs):
            seen[name] = (kwargs.get("input_ids") if kwargs.get("input_ids") is not None else args[0]).shape

        return hook

    handles = [
        causal_lm(t.model).model.register_forward_pre_hook(record(n), with_kwargs=True)
        for n, t in (("fast", fast), ("padded", padded))
    ]
    try:
        _scores(fast, batch)
        _scores(padded, batch)
    finally:
        for h in handles:
            h.remove()
    real = int(batch["attention_mask"].sum())
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    shared = flatten(batch["input_ids"], batch["attention_mask"], labels, share_prefixes=True).shared_tokens
    assert shared >= 4 * MIN_SHARED  # each pair's prompt once
    assert seen["fast"] == (1, real - shared)
    assert seen["padded"] == tuple(batch["input_ids"].shape) and batch["input_ids"].numel() > real


def test_generation_and_plain_forward_unchanged(both):
    """Calls that are not TRL's fused scoring (generation, the model's own forward) pass through."""
    fast, padded, batch = both
    ids = batch["input_ids"][:1, :6]
    for trainer in (fast, padded):
        trainer.model.eval()
    a = fast.model.generate(input_ids=ids, max_new_tokens=4, do_sample=False)
    b = padded.model.generate(input_ids=ids, max_new_tokens=4, do_sample=False)
    assert torch.equal(a, b)


def _four_steps(model_dir, directory, data: dict | None = None, **training) -> list[dict]:
    """The logged steps of a 4-step LoRA dpo run, micro-batches of 4 pairs."""
    directory.mkdir()
    recipe = dpo_recipe(
        model_dir,
        directory,
        "lora",
        evaluate=False,
        data={"max_train_samples": 16, **(data or {})},
        max_steps=4,
        micro_batch_size=4,
        logging_steps=1,
        **training,
    )
    return [h for h in train(recipe).log_history if "loss" in h]


def test_training_matches_padded_run(tiny_model_dir, tmp_path, caplog):
    """Four steps padding-free and padded: the same losses and rewards (fp32), and the run log says
    which path dpo took."""
    with caplog.at_level("INFO", logger="llmft"):
        fast = _four_steps(tiny_model_dir, tmp_path / "fast")
        padded = _four_steps(tiny_model_dir, tmp_path / "padded", {"padding_free": False})
    assert len(fast) == 4
    assert_logged_alike(fast, padded, ("loss", "rewards/chosen", "rewards/rejected", "logps/chosen"), atol=1e-4)
    assert fast[-1]["loss"] < fast[0]["loss"]  # it learns
    paths = [r.getMessage() for r in caplog.records if r.getMessage().startswith("path:")]
    assert any("padding-free" in p and "padded rows scored as one row, shared prompts once" in p for p in paths), paths
    assert any("data.padding_free is false" in p for p in paths), paths


def test_passes_of_whole_pairs_give_the_micro_batch_gradient(tiny_model_dir, tmp_path, caplog):
    """`training.max_tokens_per_forward` on dpo: a micro-batch of 4 pairs run one pair per pass logs
    the same losses, gradient norms and rewards as whole micro-batches (fp32)."""
    with caplog.at_level("INFO", logger="llmft"):
        whole = _four_steps(tiny_model_dir, tmp_path / "whole", max_tokens_per_forward=None)
        passes = _four_steps(tiny_model_dir, tmp_path / "passes", max_tokens_per_forward=1)
    assert_logged_alike(passes, whole, ("loss", "grad_norm", "rewards/margins", "rewards/chosen"), atol=1e-5)
    assert any("passes of <= 1 tokens of whole pairs" in r.getMessage() for r in caplog.records)
