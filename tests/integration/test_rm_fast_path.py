"""rm on the fast path: TRL's RewardTrainer scores a micro-batch's padded chosen/rejected rows as one
padding-free row, each pair's prompt once (`llmft.fastpath.unpadded_scoring.unpad_reward_scoring`).
Scores and gradients equal the padded computation (transformers' last-non-pad-token pooling);
training logs the padded run's losses and accuracies; the backbone sees only the real tokens, less
the shared prompts."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_logged_alike, perturb_adapter
from test_rm import rm_recipe

from llmft.builders import get_builder
from llmft.fastpath.decide import causal_lm
from llmft.fastpath.unpadded_scoring import MIN_SHARED, flatten
from llmft.run import prepare, train


def _trainer(model_dir, tmp_path, **data):
    recipe = rm_recipe(model_dir, tmp_path, "lora")
    raw = recipe.model_dump(mode="json", exclude_unset=True)
    raw["data"].update({"max_train_samples": 8, **data})
    from llmft.config import validate_recipe

    recipe = validate_recipe(raw)
    return get_builder("rm", "lora")(prepare(recipe))


@pytest.fixture(scope="module")
def both(tiny_model_dir, tmp_path_factory):
    fast = _trainer(tiny_model_dir, tmp_path_factory.mktemp("fast"))
    padded = _trainer(tiny_model_dir, tmp_path_factory.mktemp("padded"), padding_free=False)
    for trainer in (fast, padded):
        perturb_adapter(trainer.model)
    batch = fast.data_collator([fast.train_dataset[i] for i in range(4)])
    assert bool((batch["attention_mask"] == 0).any())
    return fast, padded, batch


def test_scores_and_gradients_equal_padded(both):
    fast, padded, batch = both
    seen = []
    handle = causal_lm(fast.model).model.register_forward_pre_hook(
        lambda m, a, k: seen.append(k["input_ids"].shape[1]), with_kwargs=True
    )
    outs = []
    try:
        for trainer in (fast, padded):
            trainer.model.train()
            logits = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
            chosen, rejected = logits.squeeze(-1).chunk(2)
            (-torch.nn.functional.logsigmoid(chosen - rejected).mean()).backward()
            outs.append(logits)
    finally:
        handle.remove()
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-5)
    grads = [{n: p.grad for n, p in t.model.named_parameters() if p.requires_grad} for t in (fast, padded)]
    assert grads[0].keys() == grads[1].keys() and any("score" in n for n in grads[0])
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-5, rtol=1e-4, msg=name)
    mask = batch["attention_mask"]
    shared = flatten(batch["input_ids"], mask, mask.new_full(mask.shape, -100), share_prefixes=True).shared_tokens
    assert shared >= 4 * MIN_SHARED and seen == [int(mask.sum()) - shared]


def test_training_matches_padded_run(tiny_model_dir, tmp_path):
    runs = {}
    for name, padding_free in (("fast", True), ("padded", False)):
        (tmp_path / name).mkdir()
        recipe = rm_recipe(tiny_model_dir, tmp_path / name, "lora", max_steps=4, logging_steps=1, micro_batch_size=4)
        raw = recipe.model_dump(mode="json", exclude_unset=True)
        raw["data"].update({"max_train_samples": 16, "padding_free": padding_free})
        from llmft.config import validate_recipe

        runs[name] = [h for h in train(validate_recipe(raw)).log_history if "loss" in h and "accuracy" in h]
    assert len(runs["fast"]) == 4
    assert_logged_alike(runs["fast"], runs["padded"], ("loss", "accuracy", "margin", "grad_norm"), atol=1e-4)


def test_passes_of_whole_pairs_give_the_micro_batch_gradient(tiny_model_dir, tmp_path, caplog):
    """`training.max_tokens_per_forward` on rm: a micro-batch of 4 pairs run one pair per pass logs
    the same losses, gradient norms, accuracies and margins as whole micro-batches (fp32)."""
    from llmft.config import validate_recipe

    runs = {}
    for name, tokens in (("whole", None), ("passes", 1)):
        (tmp_path / name).mkdir()
        recipe = rm_recipe(
            tiny_model_dir,
            tmp_path / name,
            "lora",
            max_steps=3,
            logging_steps=1,
            micro_batch_size=4,
            max_tokens_per_forward=tokens,
        )
        raw = recipe.model_dump(mode="json", exclude_unset=True)
        raw["data"]["max_train_samples"] = 12
        with caplog.at_level("INFO", logger="llmft"):
            runs[name] = [h for h in train(validate_recipe(raw)).log_history if "loss" in h and "accuracy" in h]
    assert len(runs["passes"]) == 3
    assert_logged_alike(runs["passes"], runs["whole"], ("loss", "grad_norm", "accuracy", "margin"), atol=1e-5)
    assert any("passes of <= 1 tokens of whole pairs" in r.getMessage() for r in caplog.records)
