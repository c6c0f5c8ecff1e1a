"""(stage, mode) -> trainer builder, filled by the `register_builder` decorator.

What may be registered is the supported table (`llmft.config.matrix.SUPPORTED`, read off the
stages' traits): registering a pair outside it, or twice, raises; `llmft.builders` checks on
import that every pair of the table has its builder. The registry never imports the builders
(they import it), and validating a recipe never imports the registry.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from llmft.config.matrix import SUPPORTED, Pair, unsupported_message

if TYPE_CHECKING:
    from llmft.builders.context import RunContext
    from llmft.builders.protocol import TrainerLike

Builder = Callable[["RunContext"], "TrainerLike"]


class RegistryError(Exception):
    """A builder registered twice or for a pair outside the supported table, or a pair left without one."""


class Registry:
    """Builders for the pairs of one supported table (the package's, or a test's own)."""

    def __init__(self, supported: Iterable[Pair]):
        self.supported: tuple[Pair, ...] = tuple(supported)
        self._builders: dict[Pair, Builder] = {}

    def register(self, stage: str, modes: Iterable[str]) -> Callable[[Builder], Builder]:
        """Register `fn` as the builder for `stage` in each of `modes` (all or nothing)."""
        modes = tuple(modes)

        def decorate(fn: Builder) -> Builder:
            for mode in modes:
                if (stage, mode) not in self.supported:
                    raise RegistryError(
                        f"({stage}, {mode}) is not in the supported table; add the mode to the stage's traits "
                        f"(llmft/config/stage.py). {unsupported_message(stage, mode, self.supported)}"
                    )
                if (stage, mode) in self._builders:
                    other = self._builders[(stage, mode)]
                    raise RegistryError(
                        f"builder for ({stage}, {mode}) registered twice: "
                        f"{other.__module__}.{other.__qualname__} and {fn.__module__}.{fn.__qualname__}"
                    )
            for mode in modes:
                self._builders[(stage, mode)] = fn
            return fn

        return decorate

    def check_complete(self) -> None:
        """Every pair of the supported table has a builder."""
        missing = [f"{s}/{m}" for s, m in self.supported if (s, m) not in self._builders]
        if missing:
            raise RegistryError(f"no builder registered for {', '.join(missing)} (in the supported table)")

    def get(self, stage: str, mode: str) -> Builder:
        try:
            return self._builders[(stage, mode)]
        except KeyError:
            raise RegistryError(unsupported_message(stage, mode, self.supported)) from None

    def available(self) -> list[Pair]:
        """Every registered pair, in the table's order."""
        return [pair for pair in self.supported if pair in self._builders]


#: The package's registry; `llmft.builders` fills it.
REGISTRY = Registry(SUPPORTED)
register_builder = REGISTRY.register
