"""`output:` — where the run writes checkpoints, the final model and logs."""

from __future__ import annotations

from pydantic import Field

from llmft.config.base import Section


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
