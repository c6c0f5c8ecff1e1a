"""The supported (stage, finetune mode) table, read off each stage's traits (`StageTraits.modes`).

Validation reads it without importing any builder; the builder registry (`llmft.registry`) is
checked against it when the builders load, so the two cannot drift.
"""

from __future__ import annotations

from collections.abc import Iterable

from llmft.config.finetune import MODES
from llmft.config.stage import STAGES, TRAITS

Pair = tuple[str, str]
#: Every (stage, mode) pair llmft trains, in schema order.
SUPPORTED: tuple[Pair, ...] = tuple((stage, mode) for stage in STAGES for mode in MODES if mode in TRAITS[stage].modes)


def is_supported(stage: str, mode: str) -> bool:
    return (stage, mode) in SUPPORTED


def unsupported_message(stage: str, mode: str, supported: Iterable[Pair] = SUPPORTED) -> str:
    pairs = ", ".join(f"{s}/{m}" for s, m in supported)
    return f"stage {stage!r} with finetune mode {mode!r} is not available; available stage/mode pairs: {pairs}"
