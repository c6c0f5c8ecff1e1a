"""The recipe reference (docs/config.md), generated from the schema so it cannot drift."""

from __future__ import annotations

import typing
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from llmft.config.introspect import model_classes, tag_field
from llmft.config.recipe import Recipe

HEADER = """# Recipe reference

Generated from the schema by `llmft schema --format markdown`; do not edit by hand
(`make docs` regenerates it, and a test fails when it is stale).

A recipe is a YAML or JSON file with the sections below. Unknown keys are errors. Any key can be
overridden on the command line as `section.key=value`, and values may use OmegaConf
interpolation (`${stage.name}`; `${pkg:NAME}` is the directory of an installed Python package).
"""


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        members = _members(annotation)
        if len(members) > 1 and tag_field(members[0]):  # a tagged union of sections
            return f"`{tag_field(members[0])}`-tagged entry"
        return " \\| ".join(_type_name(a) for a in args if a is not type(None)) + (" \\| null" if type(None) in args else "")
    if origin is list:
        return f"list of {_type_name(args[0])}" if args else "list"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation.__name__
    return getattr(annotation, "__name__", str(annotation))


def _default(field: Any) -> str:
    if field.is_required():
        return "**required**"
    if field.default_factory is not None:
        return f"`{field.default_factory()!r}`"
    if field.default is PydanticUndefined:
        return ""
    return f"`{field.default!r}`"


def _table(model: type[BaseModel], skip: tuple[str, ...] = ()) -> list[str]:
    rows = ["| key | type | default | description |", "| --- | --- | --- | --- |"]
    for name, field in model.model_fields.items():
        if name in skip:
            continue
        description = (field.description or "").replace("|", "\\|").replace("\n", " ")
        rows.append(f"| `{name}` | {_type_name(field.annotation)} | {_default(field)} | {description} |")
    return rows


def _members(annotation: Any) -> list[type[BaseModel]]:
    return list(model_classes(annotation))


def _entries(model: type[BaseModel], section: str, written: set[str]) -> list[str]:
    """The variants of each list-of-tagged-union field of `model` (`stage.rewards`), one heading each;
    once per key (grpo and ppo share `stage.rewards`): `written` holds the keys already documented."""
    lines: list[str] = []
    for name, field in model.model_fields.items():
        members = _members(field.annotation)
        if len(members) < 2 or not tag_field(members[0]) or f"{section}.{name}" in written:
            continue
        written.add(f"{section}.{name}")
        tag = tag_field(members[0])
        lines.append(f"#### `{section}.{name}` entries\n")
        for member in members:
            value = typing.get_args(member.model_fields[tag].annotation)[0]
            lines.append(f"##### `{tag}: {value}`\n")
            lines.append(f"{member.model_fields[tag].description}\n")
            lines.extend(_table(member, skip=(tag,)))
            lines.append("")
    return lines


def config_reference() -> str:
    lines = [HEADER]
    written: set[str] = set()
    for section, field in Recipe.model_fields.items():
        lines.append(f"## `{section}`\n")
        lines.append(f"{field.description}\n")
        members = _members(field.annotation)
        if len(members) > 1:
            tag = tag_field(members[0])
            for member in members:
                value = typing.get_args(member.model_fields[tag].annotation)[0]
                lines.append(f"### `{section}.{tag}: {value}`\n")
                lines.append(f"{member.model_fields[tag].description}\n")
                if len(member.model_fields) > 1:
                    lines.extend(_table(member, skip=(tag,)))
                    lines.append("")
                lines.extend(_entries(member, section, written))
            continue
        model = members[0]
        lines.extend(_table(model))
        lines.append("")
        for name, sub in model.model_fields.items():
            nested = _members(sub.annotation)
            if nested and nested[0] is not model:
                lines.append(f"### `{section}.{name}` entries\n")
                lines.extend(_table(nested[0]))
                lines.append("")
    return "\n".join(lines).rstrip() + "\n"
