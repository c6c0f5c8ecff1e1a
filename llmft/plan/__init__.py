"""Memory and batch planning before a run: `llmft plan`.

`estimate(dims, knobs) -> Plan` is pure arithmetic (estimate, activations, knobs, dims, schedule);
`recipe_knobs` turns a resolved recipe and its fast path into knobs; `passes` sizes the fast path's
passes from the plan (`training.max_tokens_per_forward: auto`); `data_count` counts the data;
`machine` probes the memory; `from_recipe.plan_recipe` puts them together; `render` prints it.
"""

from llmft.plan.dims import Linear, ModelDims, dims_from_config
from llmft.plan.estimate import Knobs, Memory, Plan, checkpointing_needed, compare_zero, estimate, pass_size_needed
from llmft.plan.from_recipe import RecipePlan, plan_recipe
from llmft.plan.schedule import Schedule

__all__ = [
    "Knobs",
    "Linear",
    "Memory",
    "ModelDims",
    "Plan",
    "RecipePlan",
    "Schedule",
    "checkpointing_needed",
    "compare_zero",
    "dims_from_config",
    "estimate",
    "pass_size_needed",
    "plan_recipe",
]
