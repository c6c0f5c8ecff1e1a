"""One builder module per stage, named for it (`llmft/builders/<stage>.py`); importing this package
imports every one of them, which registers their builders, and checks the registry against the
supported table (`llmft.config.matrix`)."""

from __future__ import annotations

import importlib

from llmft.config.stage import STAGES
from llmft.registry import REGISTRY, Builder

for _stage in STAGES:
    importlib.import_module(f"llmft.builders.{_stage}")
REGISTRY.check_complete()


def get_builder(stage: str, mode: str) -> Builder:
    """The builder for (stage, mode); a RegistryError lists the available pairs."""
    return REGISTRY.get(stage, mode)
