"""Per-token losses at learning rate 0, fp32: llmft's fast path against a plain reference.

Reference: TRL's own tokenization of each prompt -> completion row (its labels), one
row at a time through the unmodified model (SDPA, nothing padded), cross-entropy per token.
llmft: its prepared examples in padding-free micro-batches, per-example attention, fused ops and
the chunked loss — what a default recipe trains with. Compared on the tokens both supervise (TRL
also trains the newline after the end-of-turn token; llmft does not)."""

from __future__ import annotations

from pathlib import Path

import torch
from jobs import Job
from runners import llmft_recipe


def reference_losses(job: Job) -> list[tuple[tuple[int, ...], dict[int, float]]]:
    """Per row: (token ids, {target position: loss})."""
    import datasets
    from trl import SFTConfig, SFTTrainer

    from llmft.config.model import ModelConfig
    from llmft.modeling.load import load_model, load_tokenizer

    base = ModelConfig(**job.model)
    tokenizer, model = load_tokenizer(base), load_model(base, torch.float32).eval()
    config = SFTConfig(output_dir="/tmp/llmft-loss-check", max_length=job.max_length, report_to="none", use_cpu=True, bf16=False)
    trainer = SFTTrainer(model=model, args=config, train_dataset=datasets.Dataset.from_list(job.rows), processing_class=tokenizer)
    rows = []
    for item in trainer.train_dataset:
        ids = torch.tensor([item["input_ids"]])
        with torch.no_grad():
            nll = torch.nn.functional.cross_entropy(model(input_ids=ids).logits[0, :-1].float(), ids[0, 1:], reduction="none")
        targets = {t: nll[t - 1].item() for t in range(1, ids.shape[1]) if item["labels"][t] != -100}
        rows.append((tuple(item["input_ids"]), targets))
    return rows


def llmft_losses(job: Job, out: Path) -> list[tuple[tuple[int, ...], dict[int, float]]]:
    from llmft.config import validate_recipe
    from llmft.data.collate import FlatCollator
    from llmft.data.dataset import prepare_data
    from llmft.fastpath.chunked_loss import per_token_losses
    from llmft.fastpath.decide import apply, choose
    from llmft.fastpath.trainer import final_hidden
    from llmft.run import prepare

    recipe = validate_recipe(llmft_recipe(job, out) | {"training": {"learning_rate": 0.0, "precision": "fp32", "report_to": []}})
    ctx = prepare(recipe)
    examples = prepare_data("sft", recipe.data, ctx.tokenizer, recipe.training.seed).train
    apply(choose(recipe, ctx.model, ctx.settings), ctx.model, ctx.settings)
    rows = []
    for start in range(0, len(examples), job.micro):
        batch = examples[start : start + job.micro]
        inputs = FlatCollator()([vars(e) for e in batch])
        labels = inputs.pop("labels")
        with torch.no_grad():
            hidden, head = final_hidden(ctx.model, inputs)
        losses = per_token_losses(hidden, head.weight, labels).tolist()
        for e in batch:
            positions = [t for t in range(1, len(e.labels)) if e.labels[t] != -100]
            rows.append((tuple(e.input_ids), dict(zip(positions, losses[: len(positions)]))))
            losses = losses[len(positions) :]
    return rows


def compare(reference: list, ours: list) -> dict:
    """Rows matched by token ids; per common supervised token, |difference|."""
    by_ids = dict(ours)
    diffs, only_ref, only_ours, unmatched = [], 0, 0, 0
    for ids, ref in reference:
        mine = by_ids.get(ids)
        if mine is None:  # same conversation, same template: the ids must be the same
            unmatched += 1
            continue
        common = ref.keys() & mine.keys()
        diffs += [abs(ref[t] - mine[t]) for t in common]
        only_ref += len(ref.keys() - mine.keys())
        only_ours += len(mine.keys() - ref.keys())
    return {
        "tokens": len(diffs),
        "max_abs_diff": max(diffs) if diffs else float("nan"),
        "only_reference": only_ref,
        "only_llmft": only_ours,
        "unmatched_rows": unmatched,
    }
