"""(stage, mode) -> trainer builder. Filled by the `register_builder` decorator.

Builder modules import nothing heavy at module level, so validating a recipe (which asks the
registry whether its pair exists) stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Callable, Iterable

if TYPE_CHECKING:
    from llmft.run_context import RunContext

Builder = Callable[["RunContext"], object]
STAGES = ("pt", "sft", "rm", "dpo", "kto", "orpo", "grpo", "ppo")
MODES = ("full", "lora", "qlora")

_BUILDERS: dict[tuple[str, str], Builder] = {}
_BUILDER_PACKAGE = "llmft.builders"


class RegistryError(Exception):
    """A builder was registered twice, or for a stage or mode the schema does not know."""


def register_builder(stage: str, modes: Iterable[str]) -> Callable[[Builder], Builder]:
    """Register `fn` as the builder for `stage` in each of `modes`."""
    modes = tuple(modes)

    def decorate(fn: Builder) -> Builder:
        if stage not in STAGES:
            raise RegistryError(f"unknown stage {stage!r}; stages are {STAGES}")
        for mode in modes:
            if mode not in MODES:
                raise RegistryError(f"unknown mode {mode!r}; modes are {MODES}")
            if (stage, mode) in _BUILDERS:
                other = _BUILDERS[(stage, mode)]
                raise RegistryError(
                    f"builder for ({stage}, {mode}) registered twice: "
                    f"{other.__module__}.{other.__qualname__} and {fn.__module__}.{fn.__qualname__}"
                )
        for mode in modes:
            _BUILDERS[(stage, mode)] = fn
        return fn

    return decorate


def _load_builtin() -> None:
    importlib.import_module(_BUILDER_PACKAGE)


def available() -> list[tuple[str, str]]:
    """Every registered (stage, mode) pair, in schema order."""
    _load_builtin()
    return sorted(_BUILDERS, key=lambda p: (STAGES.index(p[0]), MODES.index(p[1])))


def get_builder(stage: str, mode: str) -> Builder:
    _load_builtin()
    try:
        return _BUILDERS[(stage, mode)]
    except KeyError:
        raise RegistryError(unsupported_message(stage, mode)) from None


def unsupported_message(stage: str, mode: str) -> str:
    pairs = ", ".join(f"{s}/{m}" for s, m in available())
    return f"stage {stage!r} with finetune mode {mode!r} is not available; available stage/mode pairs: {pairs}"


def is_available(stage: str, mode: str) -> bool:
    _load_builtin()
    return (stage, mode) in _BUILDERS
