"""`distributed:` — how many processes train, on how many machines, and how DeepSpeed shards them."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from llmft.config.base import Section

Offload = Literal["none", "optimizer", "optimizer_and_params"]


class DistributedConfig(Section):
    num_processes: int = Field(
        default=1,
        ge=1,
        description="Training processes in total, over all machines (one per GPU). More than 1 (or a ZeRO "
        "stage) makes `llmft train` launch them through `accelerate launch` (docs/distributed.md).",
    )
    zero_stage: Literal[0, 1, 2, 3] = Field(
        default=0,
        description="DeepSpeed ZeRO stage: 0 no DeepSpeed (plain data parallel), 1 shards optimizer "
        "states, 2 also gradients, 3 also parameters.",
    )
    offload: Offload = Field(
        default="none",
        description="Move ZeRO state to CPU memory: `optimizer` (ZeRO 1-3; the optimizer step then runs "
        "`training.optimizer` on the CPU, best `adamw_torch_fused`) or `optimizer_and_params` (ZeRO-3).",
    )
    deepspeed_config: str | None = Field(
        default=None,
        description="Path of your own DeepSpeed JSON, used instead of the bundled one chosen by "
        "`zero_stage`/`offload` (its ZeRO stage is read from the file).",
    )
    num_machines: int = Field(default=1, ge=1, description="Machines (nodes) taking part.")
    machine_rank: int = Field(default=0, ge=0, description="This machine's index, 0 .. num_machines-1 (0 is the main node).")
    main_process_ip: str | None = Field(
        default=None, description="Address of machine 0, which every machine connects to (needed with num_machines > 1)."
    )
    main_process_port: int = Field(default=29500, ge=1, le=65535, description="Port on machine 0 for the rendezvous.")

    @model_validator(mode="after")
    def _consistent(self) -> DistributedConfig:
        problems = []
        if self.offload == "optimizer_and_params" and self.zero_stage != 3 and self.deepspeed_config is None:
            problems.append(
                f"offload: optimizer_and_params needs zero_stage: 3 (parameters are only sharded by ZeRO-3; got zero_stage {self.zero_stage})"
            )
        if self.offload == "optimizer" and self.zero_stage == 0 and self.deepspeed_config is None:
            problems.append("offload: optimizer needs a ZeRO stage (zero_stage: 1, 2 or 3)")
        if self.deepspeed_config is not None and ({"zero_stage", "offload"} & self.model_fields_set):
            problems.append("set deepspeed_config or zero_stage/offload, not both (your JSON decides the stage and offload)")
        if self.machine_rank >= self.num_machines:
            problems.append(f"machine_rank {self.machine_rank} must be below num_machines ({self.num_machines})")
        if self.num_machines > 1:
            if not self.main_process_ip:
                problems.append("num_machines > 1 needs main_process_ip (the address of machine 0)")
            if self.num_processes % self.num_machines:
                problems.append(
                    f"num_processes ({self.num_processes}) must be a multiple of num_machines ({self.num_machines}): "
                    "it counts processes over all machines"
                )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def uses_deepspeed(self) -> bool:
        return self.zero_stage > 0 or self.deepspeed_config is not None

    @property
    def launches(self) -> bool:
        """True when training needs more than this one process."""
        return self.num_processes > 1 or self.num_machines > 1
