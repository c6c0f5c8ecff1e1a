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
        "(verified: same logits within 1e-4), ready to be the next stage's model.path.",
    )
