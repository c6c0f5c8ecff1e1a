"""`output:` — where the run writes checkpoints, the final model and logs."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from llmft.config.base import Section

Measure = Literal["lm", "generate", "preference", "reward", "win_rate", "verify"]


class EvalAtEnd(Section):
    metrics: list[Measure] | None = Field(
        default=None,
        description="What to measure (`llmft eval`'s measures); default: what the eval data allows (conversations: "
        "lm and generate; preference pairs: preference, or reward for an rm run; text: lm).",
    )
    max_samples: int | None = Field(default=64, gt=0, description="Measure at most this many eval records (the first ones).")
    max_new_tokens: int = Field(default=128, gt=0, description="Longest generated answer.")
    compare_base: bool | None = Field(
        default=None,
        description="Also measure the starting model (model.path) on the same data and print both side by side "
        "(before/after). Default: yes, except for rm runs (the starting model has no reward head).",
    )
    reward_model: str | None = Field(default=None, description="An rm run's output dir to judge answers (`win_rate`).")


class OutputConfig(Section):
    dir: str = Field(
        description="Run directory. Must not already hold another run: llmft never writes over earlier checkpoints or models."
    )
    merge_adapter: bool = Field(
        default=False,
        description="LoRA runs: also write `<dir>/merged/`, the base with the adapter folded in "
        "(checked: the base is the adapter's own, and the merged logits match base + adapter's), ready to be "
        "the next stage's model.path. If the check fails, the adapter stays saved and the error says how to merge it.",
    )
    eval: EvalAtEnd | None = Field(
        default=None,
        description="Measure the trained model on the recipe's eval data at the end (`llmft eval`), writing "
        "`<dir>/eval/` (eval.json, the generated answers) and printing the table; `{}` for the defaults.",
    )
