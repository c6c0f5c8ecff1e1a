"""`training.max_tokens_per_forward: auto`, sized by the memory plan: whole micro-batches unless the
plan says micro_batch_size x data.max_length tokens do not fit the memory at hand (the RAM available
when the run starts, the GPU's memory, or `llmft plan`'s budget); then the largest pass size that fits.
On a CPU, a stage whose passes hold whole pairs (dpo, rm, orpo) runs a micro-batch of several pairs
a full-length pair at a time: such a pass is long enough that reading the weights again costs no
measurable time there, and only one pair's activations are alive. `llmft train` and `llmft plan`
both settle the fast path's passes here."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from llmft.config.recipe import Recipe
from llmft.fastpath.decide import FastPath
from llmft.plan.dims import dims_from_config
from llmft.plan.estimate import GIB, estimate, pass_size_needed
from llmft.plan.machine import available_memory
from llmft.plan.recipe_knobs import knobs_for, whole_micro_batches
from llmft.resolve import Resolved


def settle_passes(path: FastPath, recipe: Recipe, config: Any, settings: Resolved, budget_bytes: int | None = None) -> FastPath:
    """`path` with "auto" passes decided for the model `config`: None (whole micro-batches) when
    they fit `budget_bytes` (default: the memory available now), else the largest pass size that
    fits, the reason added to the path's; on a CPU, pair stages a full-length pair per pass at most."""
    if path.forward_tokens != "auto":
        return path
    try:
        dims = dims_from_config(config, task=recipe.stage.traits.task, trust_remote_code=recipe.model.trust_remote_code)
    except Exception as exc:  # noqa: BLE001 - an exotic model: run whole, and say so
        return path.with_passes(None, f"micro-batches run whole: memory not planned ({exc})")
    budget, source = (budget_bytes, "the planned device") if budget_bytes is not None else available_memory()
    knobs, _ = knobs_for(recipe, dims, settings, path.with_passes(None))
    knobs = whole_micro_batches(knobs, recipe)
    pair = pair_pass(recipe, settings)
    if pair is not None and estimate(dims, replace(knobs, forward_tokens=pair)).fits(budget):
        return path.with_passes(
            pair, "passes: a pair at a time, up to 2 x data.max_length tokens (on a CPU no slower, and less memory)"
        )
    size = pass_size_needed(dims, knobs, budget)
    if size is None:
        return path.with_passes(None)
    whole = estimate(dims, knobs).per_device_bytes
    return path.with_passes(
        size,
        f"passes: whole micro-batches of {knobs.tokens:,} tokens would need {whole / GIB:.1f} GiB, "
        f"{source} has {budget / GIB:.1f} GiB",
    )


def pair_pass(recipe: Recipe, settings: Resolved) -> int | None:
    """The pass size `auto` starts from for a stage whose passes hold whole pairs, trained on a CPU
    with several pairs per micro-batch: one full-length pair (2 x data.max_length tokens). On the
    preference benchmarks (pairs of up to 2,000 tokens) a pass per pair took the same time as whole
    micro-batches (rm x0.94, dpo x1.00, orpo x1.04) at 15-20% less peak RSS; on a GPU, where a pair
    may not fill the device, micro-batches stay whole unless the memory plan needs passes."""
    if settings.device != "cpu" or recipe.stage.traits.examples != "pair" or recipe.training.micro_batch_size < 2:
        return None
    return 2 * recipe.data.max_length
