"""`training.max_tokens_per_forward: auto`, sized by the memory plan: whole micro-batches unless the
plan says micro_batch_size x data.max_length tokens do not fit the memory at hand (the RAM available
when the run starts, the GPU's memory, or `llmft plan`'s budget); then the largest pass size that fits.
`llmft train` and `llmft plan` both settle the fast path's passes here."""

from __future__ import annotations

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
    fits, the reason added to the path's."""
    if path.forward_tokens != "auto":
        return path
    try:
        dims = dims_from_config(config, task=recipe.stage.traits.task, trust_remote_code=recipe.model.trust_remote_code)
    except Exception as exc:  # noqa: BLE001 - an exotic model: run whole, and say so
        return path.with_passes(None, f"micro-batches run whole: memory not planned ({exc})")
    budget, source = (budget_bytes, "the planned device") if budget_bytes is not None else available_memory()
    knobs, _ = knobs_for(recipe, dims, settings, path.with_passes(None))
    knobs = whole_micro_batches(knobs, recipe)
    size = pass_size_needed(dims, knobs, budget)
    if size is None:
        return path.with_passes(None)
    whole = estimate(dims, knobs).per_device_bytes
    return path.with_passes(
        size,
        f"passes: whole micro-batches of {knobs.tokens:,} tokens would need {whole / GIB:.1f} GiB, "
        f"{source} has {budget / GIB:.1f} GiB",
    )
