"""orpo on the fast path: TRL's ORPOTrainer's forward replaced by scoring through the fused log-prob
head (`llmft.builders.orpo`), padding-free with each pair's prompt once. The reply log-probs, the
chosen rows' next-token loss and the gradients equal TRL's own full-logits computation on the same
batch (fp32); training logs the padded run's losses; the backbone sees only the real tokens, less the
shared prompts."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_logged_alike, perturb_adapter
from test_kto_orpo_grpo import _recipe, data  # noqa: F401 - the data fixture

from llmft.builders import get_builder
from llmft.builders.orpo import orpo_classes
from llmft.config import validate_recipe
from llmft.fastpath.decide import causal_lm
from llmft.run import prepare, train


def _orpo_recipe(model_dir, data, out, mode="lora", **data_section):  # noqa: F811
    raw = _recipe("orpo", mode, model_dir, data, out)
    raw["data"].update(data_section)
    return validate_recipe(raw)


def _trainer(model_dir, data, out, mode="lora"):  # noqa: F811
    return get_builder("orpo", mode)(prepare(_orpo_recipe(model_dir, data, out, mode)))


def _loss_and_grads(trainer, forward, batch):
    model = trainer.model.train()
    model.zero_grad()
    chosen, rejected, chosen_logits, rejected_logits, nll = forward(trainer, model, batch)[:5]
    losses = trainer.odds_ratio_loss(chosen, rejected)[0]
    (nll - losses.mean()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return (chosen.detach(), rejected.detach(), nll.detach(), chosen_logits.mean(), rejected_logits.mean()), grads


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_scores_and_gradients_equal_trl(tiny_model_dir, data, tmp_path, mode):  # noqa: F811
    """The fast forward against TRL's own `concatenated_forward` (the model's full logits) on one
    batch of 4 pairs: reply log-probs, next-token loss and every gradient agree; the mean logits
    agree with TRL's taken over real tokens only."""
    trainer = _trainer(tiny_model_dir, data, tmp_path / "run", mode)
    if mode == "lora":
        perturb_adapter(trainer.model)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    seen = []
    handle = causal_lm(trainer.model).model.register_forward_pre_hook(
        lambda m, a, k: seen.append((a[0] if a else k["input_ids"]).shape), with_kwargs=True
    )
    try:
        fast, fast_grads = _loss_and_grads(trainer, type(trainer).concatenated_forward, batch)
        trl, trl_grads = _loss_and_grads(trainer, orpo_classes()[1].concatenated_forward, batch)
    finally:
        handle.remove()
    for a, b in zip(fast[:3], trl[:3]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert fast_grads.keys() == trl_grads.keys() and fast_grads
    for name in fast_grads:
        torch.testing.assert_close(fast_grads[name], trl_grads[name], atol=1e-5, rtol=1e-4, msg=name)

    ids = trainer.concatenated_inputs(batch, is_encoder_decoder=False, padding_value=trainer.padding_value)
    mask = ids["concatenated_attention_mask"]
    with torch.no_grad():
        logits = trainer.model(ids["concatenated_input_ids"], attention_mask=mask).logits[:, :-1]
    scored = (mask[:, :-1] * mask[:, 1:]).bool()
    chosen = len(batch["chosen_labels"])
    torch.testing.assert_close(fast[3], logits[:chosen].mean(-1)[scored[:chosen]].mean(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast[4], logits[chosen:].mean(-1)[scored[chosen:]].mean(), atol=1e-5, rtol=1e-5)

    padded_tokens = mask.numel()
    assert seen[0][0] == 1 and seen[0][1] < int(mask.sum()) < padded_tokens  # one row, prompts once, no pads
    assert seen[1] == tuple(mask.shape)  # TRL's forward: the padded batch


def test_training_matches_padded_run(tiny_model_dir, data, tmp_path, caplog):  # noqa: F811
    """Three steps padding-free and padded (both through the fused head): the same logged losses
    and metrics (fp32); the run log names the path."""
    runs = {}
    with caplog.at_level("INFO", logger="llmft"):
        for name, padding_free in (("fast", True), ("padded", False)):
            recipe = _orpo_recipe(tiny_model_dir, data, tmp_path / name, padding_free=padding_free)
            runs[name] = [h for h in train(recipe).log_history if "loss" in h]
    assert len(runs["fast"]) == 3
    assert_logged_alike(runs["fast"], runs["padded"], ("loss", "nll_loss", "log_odds_ratio", "rewards/margins"), atol=1e-4)
    paths = [r.getMessage() for r in caplog.records if r.getMessage().startswith("path:")]
    assert any("padded rows scored as one row, shared prompts once" in p for p in paths), paths


def test_passes_of_whole_pairs_give_the_micro_batch_gradient(tiny_model_dir, data, tmp_path, caplog):  # noqa: F811
    """`training.max_tokens_per_forward` on orpo: a micro-batch of 4 pairs run one pair per pass logs
    the same losses, gradient norms and metrics as whole micro-batches (fp32): the next-token loss
    of each pass is divided by the whole micro-batch's chosen tokens."""
    runs = {}
    with caplog.at_level("INFO", logger="llmft"):
        for name, tokens in (("whole", None), ("passes", 1)):
            raw = _recipe("orpo", "lora", tiny_model_dir, data, tmp_path / name, training={"max_tokens_per_forward": tokens})
            runs[name] = [h for h in train(validate_recipe(raw)).log_history if "loss" in h]
    assert len(runs["passes"]) == 3
    keys = ("loss", "grad_norm", "nll_loss", "log_odds_ratio", "rewards/margins")
    assert_logged_alike(runs["passes"], runs["whole"], keys, atol=1e-5)
    assert any("passes of <= 1 tokens of whole pairs" in r.getMessage() for r in caplog.records)


def test_sided_pairs_split_into_whole_pairs_each_side_trimmed():
    from llmft.fastpath.passes import split_sided_pairs

    def side(lengths, width):
        mask = torch.tensor([[1] * n + [0] * (width - n) for n in lengths])
        return mask * torch.arange(1, width + 1), mask

    chosen_ids, chosen_mask = side([3, 5, 2], 6)
    rejected_ids, rejected_mask = side([4, 1, 2], 5)
    batch = {
        "chosen_input_ids": chosen_ids,
        "chosen_attention_mask": chosen_mask,
        "rejected_input_ids": rejected_ids,
        "rejected_attention_mask": rejected_mask,
        "prompt": ["a", "b", "c"],
        "beta": 0.1,
    }
    pieces = split_sided_pairs(batch, 10)  # pair tokens 7, 6, 4: [0], [1, 2]
    assert [share for _, share in pieces] == [1 / 3, 2 / 3]
    first, second = (piece for piece, _ in pieces)
    assert first["chosen_input_ids"].tolist() == [[1, 2, 3]] and first["rejected_input_ids"].tolist() == [[1, 2, 3, 4]]
    assert second["chosen_input_ids"].tolist() == [[1, 2, 3, 4, 5], [1, 2, 0, 0, 0]]
    assert second["rejected_attention_mask"].tolist() == [[1, 0], [1, 1]]
    assert second["prompt"] == ["b", "c"] and second["beta"] == 0.1
    assert split_sided_pairs(batch, 100) == [(batch, 1.0)]
