"""Held-out data for `llmft eval`: a file in any format llmft reads (format detected as training
detects it), or a recipe's own eval split (`data.eval` or `data.eval_split`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from llmft.data.formats import Completion, Conversation, Pair, Text, detect_records_format, normalise
from llmft.data.sources import read_records
from llmft.errors import UserError

Kind = Literal["conversation", "text", "pair"]


@dataclass(frozen=True)
class EvalSet:
    name: str  # where the records came from, for the report
    kind: Kind
    records: list[Any]  # Conversation | Text | Pair, all of one kind


def _kind_of(records: list[Any], name: str) -> Kind:
    kinds = {type(r) for r in records}
    if kinds == {Conversation}:
        return "conversation"
    if kinds == {Text}:
        return "text"
    if kinds == {Pair}:
        return "pair"
    if Completion in kinds:
        raise UserError(
            f"{name}: KTO records (one reply with a label) have no reference to measure against; "
            "give conversations or preference pairs"
        )
    raise UserError(f"{name}: mixes record kinds ({', '.join(sorted(k.__name__ for k in kinds))}); give one kind")


def from_file(path: str, fmt: str = "auto", max_samples: int | None = None) -> EvalSet:
    raw = read_records(path, "--data")
    if not raw:
        raise UserError(f"--data: {path} holds no records")
    if fmt == "auto":
        fmt = detect_records_format(raw, f"--data: {path}")
    records, _ = normalise(raw, fmt, "error")
    records = records[:max_samples] if max_samples else records
    return EvalSet(path, _kind_of(records, "--data"), records)


def from_recipe(recipe: Any, max_samples: int | None = None) -> EvalSet:
    """The recipe's eval split, exactly as training holds it out."""
    from llmft.data.dataset import load_items

    if not recipe.data.has_eval:
        raise UserError("--recipe: the recipe has no eval data; add data.eval or data.eval_split, or give --data FILE")
    records = load_items(recipe.stage.name, recipe.data, recipe.training.seed).eval or []
    records = records[:max_samples] if max_samples else records
    if not records:
        raise UserError("--recipe: the recipe's eval split is empty")
    return EvalSet("the recipe's eval split", _kind_of(records, "--recipe"), records)
