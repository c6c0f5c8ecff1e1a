"""Batch and step arithmetic of a run."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Schedule:
    """Batch and step arithmetic; counts are None when the data was not counted."""

    micro_batch_size: int
    gradient_accumulation_steps: int
    num_processes: int
    examples: int | None = None  # training examples (or packed rows) per epoch
    tokens_per_example: float | None = None  # mean, when counted
    supervised_per_example: float | None = None
    max_length: int | None = None
    epochs: float = 1.0
    max_steps: int | None = None

    @property
    def global_batch(self) -> int:
        return self.micro_batch_size * self.gradient_accumulation_steps * self.num_processes

    @property
    def steps_per_epoch(self) -> int | None:
        if self.examples is None:
            return None
        per_process = math.ceil(self.examples / self.num_processes)
        return max(1, math.ceil(math.ceil(per_process / self.micro_batch_size) / self.gradient_accumulation_steps))

    @property
    def total_steps(self) -> int | None:
        if self.max_steps:
            return self.max_steps
        per_epoch = self.steps_per_epoch
        return None if per_epoch is None else math.ceil(self.epochs * per_epoch)

    @property
    def tokens_per_step(self) -> float | None:
        """Mean tokens per optimizer step (counted data), or the most (max_length) otherwise."""
        per = self.tokens_per_example if self.tokens_per_example is not None else self.max_length
        return None if per is None else self.global_batch * per
