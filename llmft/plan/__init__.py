"""Memory and batch planning before a run: `llmft plan`.

`estimate(dims, knobs) -> Plan` is pure arithmetic (llmft.plan.estimate); `plan_recipe(recipe)`
reads the model's config (no weights) and, when cheap, counts the data (llmft.plan.from_recipe);
llmft.plan.render prints it.
"""

from llmft.plan.dims import Linear, ModelDims, dims_from_config
from llmft.plan.estimate import Knobs, Memory, Plan, checkpointing_needed, compare_zero, estimate, pass_size_needed
from llmft.plan.schedule import Schedule
from llmft.plan.from_recipe import RecipePlan, plan_recipe

__all__ = [
    "Knobs", "Linear", "Memory", "ModelDims", "Plan", "RecipePlan", "Schedule",
    "checkpointing_needed", "compare_zero", "dims_from_config", "estimate", "pass_size_needed", "plan_recipe",
]
