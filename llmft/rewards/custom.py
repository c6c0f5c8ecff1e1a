"""`python` rewards: a user's own function, named `package.module:callable` in the recipe.

It is imported only when the recipe allows it (`stage.allow_python_rewards: true`, checked at
validation, and again here). It is called once per batch:

    function(completions=["...", ...], answer=["...", ...], ...) -> [float | None, ...]

`completions` are the completions' texts; each of the reward's `columns` is a keyword argument
holding that column of each completion's record. It returns one reward per completion: a number
in [0, 1], or None (no reward for that completion). Anything else stops training with the
function and the completion named.
"""

from __future__ import annotations

import importlib
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from llmft.errors import UserError


def import_function(path: str, key: str) -> Callable[..., Any]:
    """The callable at `package.module:attr.path`; errors name `key` and say what to fix."""
    module_name, _, attribute = path.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserError(
            f"{key}: cannot import module {module_name!r} ({exc}); install it, or put its directory on "
            "PYTHONPATH (e.g. PYTHONPATH=. llmft train ...)"
        ) from None
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise UserError(f"{key}: module {module_name!r} has no {attribute!r}")
        target = getattr(target, part)
    if not callable(target):
        raise UserError(f"{key}: {path} is a {type(target).__name__}, not a function")
    return target


def checked(values: Any, count: int, name: str) -> list[float | None]:
    """A user function's rewards as floats, refusing anything but `count` numbers in [0, 1] or None."""
    if isinstance(values, (str, bytes, Mapping)) or not isinstance(values, Sequence):
        raise UserError(f"{name} returned a {type(values).__name__}; it should return a list of {count} rewards")
    if len(values) != count:
        raise UserError(f"{name} returned {len(values)} rewards for {count} completions; it should return one per completion")
    out: list[float | None] = []
    for i, value in enumerate(values):
        if value is None:
            out.append(None)
            continue
        if not isinstance(value, numbers.Real) or not math.isfinite(value) or not 0 <= value <= 1:
            raise UserError(f"{name} returned {value!r} for completion {i}; a reward is a number in [0, 1], or None")
        out.append(float(value))
    return out


def call(
    function: Callable[..., Any], name: str, completions: Sequence[str], columns: Mapping[str, Sequence[Any]]
) -> list[float | None]:
    """Call a user's reward function on a batch and check what it returns."""
    return checked(function(completions=list(completions), **{k: list(v) for k, v in columns.items()}), len(completions), name)
