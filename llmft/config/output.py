"""`output:` — where the run writes checkpoints, the final model and logs."""

from __future__ import annotations

from pydantic import Field

from llmft.config.base import Section


class OutputConfig(Section):
    dir: str = Field(
        description="Run directory. Must not already hold another run: llmft never writes over "
        "earlier checkpoints or models."
    )
