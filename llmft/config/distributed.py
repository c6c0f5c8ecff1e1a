"""`distributed:` — how many processes train and how their state is sharded."""

from __future__ import annotations

from pydantic import Field, field_validator

from llmft.config.base import Section


class DistributedConfig(Section):
    num_processes: int = Field(
        default=1,
        ge=1,
        description="Training processes. This release trains in one process; multi-process "
        "and multi-node launch is not available yet.",
    )
    zero_stage: int = Field(
        default=0,
        ge=0,
        le=3,
        description="DeepSpeed ZeRO stage. This release supports 0 (no DeepSpeed) only.",
    )

    @field_validator("num_processes")
    @classmethod
    def _single_process(cls, value: int) -> int:
        if value != 1:
            raise ValueError("multi-process training is not available in this release; use 1")
        return value

    @field_validator("zero_stage")
    @classmethod
    def _no_zero(cls, value: int) -> int:
        if value != 0:
            raise ValueError("DeepSpeed ZeRO is not available in this release; use 0")
        return value
