"""`llmft plan`: a recipe -> the estimator's inputs and its plan: the model's dimensions (from its
config, no weights), the settings resolved for the planned device, the fast path the run takes
(decided on a meta-device build of the model), the knobs, and the batch/step schedule (from the
data when it is cheap to count)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch

from llmft.config.recipe import Recipe
from llmft.fastpath.decide import FastPath, choose
from llmft.modeling.load import read_config
from llmft.plan.data_count import DataCount, count_training_data
from llmft.plan.dims import ModelDims, dims_from_config
from llmft.plan.estimate import Plan, compare_zero, estimate
from llmft.plan.machine import machine_memory
from llmft.plan.passes import settle_passes
from llmft.plan.recipe_knobs import knobs_for
from llmft.plan.schedule import Schedule
from llmft.preflight import WOULD_STOP, machine_error, machine_problems
from llmft.resolve import Resolved, resolve

log = logging.getLogger("llmft")


@dataclass
class RecipePlan:
    plan: Plan
    schedule: Schedule
    dims: ModelDims
    data: DataCount
    budget_bytes: int
    budget_source: str
    alternatives: list[Plan] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    path: str | None = None  # pt/sft: the fast path `llmft train` takes (llmft.fastpath.decide), and why

    @property
    def fits(self) -> bool:
        return self.plan.fits(self.budget_bytes)

    def to_dict(self) -> dict:
        s = self.schedule
        d = self.dims
        return {
            "model": {
                "type": d.model_type,
                "params": d.params,
                "hidden": d.hidden,
                "layers": d.layers,
                "heads": d.heads,
                "kv_heads": d.kv_heads,
                "head_dim": d.head_dim,
                "intermediate": d.intermediate,
                "vocab": d.vocab,
                "tied_embeddings": d.tied_embeddings,
                "counted_exactly": d.exact,
            },
            **self.plan.to_dict(),
            "budget_bytes": self.budget_bytes,
            "budget_source": self.budget_source,
            "fits": self.fits,
            "schedule": {
                "global_batch": s.global_batch,
                "micro_batch_size": s.micro_batch_size,
                "gradient_accumulation_steps": s.gradient_accumulation_steps,
                "num_processes": s.num_processes,
                "examples": s.examples,
                "steps_per_epoch": s.steps_per_epoch,
                "total_steps": s.total_steps,
                "tokens_per_step": s.tokens_per_step,
                "tokens_per_step_counted": s.tokens_per_example is not None,
                "data": self.data.how,
            },
            "zero_stages": [
                {
                    "zero_stage": p.knobs.zero_stage,
                    "offload": p.knobs.offload,
                    "per_device_bytes": p.per_device_bytes,
                    "memory": p.to_dict()["memory"],
                    "cpu_offload_bytes": p.cpu_offload,
                    "fits": p.fits(self.budget_bytes),
                }
                for p in self.alternatives
            ],
            "path": self.path,
            "notes": list(self.notes),
        }


def read_dims(recipe: Recipe, config: Any) -> ModelDims:
    return dims_from_config(config, task=recipe.stage.traits.task, trust_remote_code=recipe.model.trust_remote_code)


def planned_path(recipe: Recipe, config: Any, settings: Resolved, budget_bytes: int | None = None) -> FastPath | None:
    """The fast path the run will take (its log's `path:` line), decided on a meta-device build of
    the model under `settings`, its passes sized for `budget_bytes` (default: the memory available
    now). None for a stage off the fast path, or a model that cannot be built on the meta device.
    An explicit fast-path key the model cannot honour raises the same UserError as training would."""
    if not recipe.stage.traits.fast_forward:
        return None
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=recipe.model.trust_remote_code)
    except Exception as exc:  # noqa: BLE001 - an exotic model: the run log will say it
        log.debug("fast path not planned: %s", exc)
        return None
    return settle_passes(choose(recipe, model, settings), recipe, config, settings, budget_bytes)


def plan_recipe(
    recipe: Recipe,
    *,
    source: str | None = None,
    num_processes: int | None = None,
    budget_bytes: int | None = None,
    device: str | None = None,
    count_data: bool | None = None,
    examples: int | None = None,
) -> RecipePlan:
    """Plan `recipe`: dims from the model's config, knobs from the recipe, counts from the data.

    count_data: None counts when cheap (cached, or small files), True always, False never;
    `examples` gives the training-example count directly (no counting). First refuses, all at once,
    what `llmft train` would refuse for the planned device (`llmft.preflight.machine_problems`;
    `source` names the recipe file in that error).
    """
    device = device or ("cuda" if torch.cuda.is_available() or budget_bytes is not None or num_processes else "cpu")
    found = machine_problems(recipe, device)
    if found:
        raise machine_error(found, device, source=source, then=WOULD_STOP)
    config = read_config(recipe.model)
    dims = read_dims(recipe, config)
    if budget_bytes is None:
        budget_bytes, source = machine_memory()
    else:
        source = "--gpu-memory"
    if examples is not None:
        counted = DataCount(examples=examples, how=f"{examples} examples (given)")
    elif count_data is False:
        counted = DataCount(how="not counted (--no-count-data)")
    else:
        counted = count_training_data(recipe, force=bool(count_data))
    micro = recipe.training.micro_batch_size
    per_sequence = recipe.stage.traits.sequences_per_example
    seq_len = None
    if counted.longest_micro_batch:
        seq_len = max(1, round(counted.longest_micro_batch / (micro * per_sequence)))
    settings = resolve(recipe, device)
    path = planned_path(recipe, config, settings, budget_bytes)
    knobs, notes = knobs_for(recipe, dims, settings, path, num_processes, seq_len)
    if not dims.exact:
        notes.append(f"parameters counted with a Llama-shaped formula ({dims.model_type} could not be built on the meta device)")
    if seq_len is None:
        notes.append(f"activations for full micro-batches of data.max_length ({recipe.data.max_length}) tokens: an upper bound")
    plan = estimate(dims, knobs)
    schedule = Schedule(
        micro_batch_size=micro,
        gradient_accumulation_steps=recipe.training.gradient_accumulation_steps,
        num_processes=knobs.num_processes,
        examples=counted.examples,
        tokens_per_example=counted.tokens_per_example,
        supervised_per_example=counted.supervised_per_example,
        max_length=recipe.data.max_length * per_sequence,
        epochs=recipe.training.epochs,
        max_steps=recipe.training.max_steps,
    )
    alternatives = compare_zero(dims, knobs)
    if knobs.num_processes == 1:
        notes.append("one process: ZeRO has nothing to shard across; only its offload changes the GPU's share")
    return RecipePlan(
        plan, schedule, dims, counted, budget_bytes, source, alternatives, notes, path.describe() if path is not None else None
    )
