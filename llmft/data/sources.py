"""Read dataset files into raw records, each tagged with where it came from (file:line)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmft.errors import UserError

SUFFIXES = (".json", ".jsonl", ".txt")


@dataclass(frozen=True)
class RawRecord:
    value: Any
    where: str  # "file:line" for line-based files, "file record N" for JSON arrays


def read_records(path: str, key: str) -> list[RawRecord]:
    """Every record of one dataset file. `key` is the recipe key that named it (for errors)."""
    file = Path(path).expanduser()
    if not file.exists():
        raise UserError(f"{key}: file not found: {path}")
    if file.is_dir():
        raise UserError(f"{key}: {path} is a directory; name a {', '.join(SUFFIXES)} file")
    if file.suffix not in SUFFIXES:
        raise UserError(f"{key}: {path}: unsupported file type {file.suffix or '(none)'!r}; use {', '.join(SUFFIXES)}")
    text = _read_text(file, key)
    if not text.strip():
        raise UserError(f"{key}: {path} is empty")
    reader = {".json": _read_json, ".jsonl": _read_jsonl, ".txt": _read_txt}[file.suffix]
    records = reader(text, str(file))
    if not records:
        raise UserError(f"{key}: {path} holds no records")
    return records


def _read_text(file: Path, key: str) -> str:
    data = file.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise UserError(f"{key}: {file}:{line}: not UTF-8 (byte {exc.start}); re-encode the file as UTF-8") from None


def _read_json(text: str, name: str) -> list[RawRecord]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        hint = "; if it has one JSON object per line, name it .jsonl" if exc.msg == "Extra data" else ""
        raise UserError(f"{name}:{exc.lineno}: invalid JSON: {exc.msg}{hint}") from None
    if not isinstance(value, list):
        raise UserError(f"{name}: a .json dataset is an array of records (got a {type(value).__name__})")
    return [RawRecord(v, f"{name} record {i}") for i, v in enumerate(value)]


def _read_jsonl(text: str, name: str) -> list[RawRecord]:
    records = []
    for number, line in enumerate(_lines(text), start=1):
        if not line.strip():
            continue
        try:
            records.append(RawRecord(json.loads(line), f"{name}:{number}"))
        except json.JSONDecodeError as exc:
            raise UserError(f"{name}:{number}: invalid JSON: {exc.msg}") from None
    return records


def _read_txt(text: str, name: str) -> list[RawRecord]:
    """One document per non-empty line."""
    return [
        RawRecord({"text": line}, f"{name}:{number}")
        for number, line in enumerate(_lines(text), start=1)
        if line.strip()
    ]


def _lines(text: str) -> list[str]:
    """Lines split at newlines only: `str.splitlines` also splits at U+2028, U+0085 and others,
    which JSON strings may hold unescaped (and editors don't count as lines)."""
    return [line.removesuffix("\r") for line in text.split("\n")]
