"""Small helpers to walk the schema's type annotations (used by error messages and docs)."""

from __future__ import annotations

import typing
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel


def model_classes(annotation: Any) -> Iterator[type[BaseModel]]:
    """The pydantic models inside an annotation (through list, Optional, Annotated, unions)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
        return
    for arg in typing.get_args(annotation):
        yield from model_classes(arg)


def tag_field(model: type[BaseModel]) -> str | None:
    """The required Literal field that tags a union member (`mode`, `name`), if any."""
    for name, field in model.model_fields.items():
        if typing.get_origin(field.annotation) is typing.Literal and field.is_required():
            return name
    return None
