"""Normalise raw records into the two shapes training uses: conversations and texts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llmft.data.sources import RawRecord
from llmft.errors import UserError

ROLES = ("system", "user", "assistant")
MAX_REPORTED = 5


@dataclass(frozen=True)
class Conversation:
    messages: tuple[dict[str, str], ...]
    where: str


@dataclass(frozen=True)
class Text:
    text: str
    where: str


class BadRecord(ValueError):
    """One record does not fit its format; the message names the field."""


def detect_format(record: RawRecord) -> str:
    value = record.value
    if isinstance(value, dict):
        if "messages" in value:
            return "messages"
        if "instruction" in value and "output" in value:
            return "alpaca"
        if "text" in value:
            return "text"
    keys = ", ".join(sorted(value)) if isinstance(value, dict) else type(value).__name__
    raise UserError(
        f"{record.where}: cannot detect the data format from keys ({keys}); expected "
        "instruction/output (alpaca), messages, or text. Set the dataset's `format`."
    )


def normalise(records: list[RawRecord], fmt: str) -> list[Conversation] | list[Text]:
    """Convert every record; report every bad record (up to a few) at once."""
    convert = {"alpaca": _alpaca, "messages": _messages, "text": _text}[fmt]
    out: list[Any] = []
    problems: list[str] = []
    for record in records:
        try:
            out.append(convert(record))
        except BadRecord as exc:
            problems.append(f"{record.where}: {exc}")
    if problems:
        shown = "\n".join(f"  - {p}" for p in problems[:MAX_REPORTED])
        more = f"\n  ... and {len(problems) - MAX_REPORTED} more" if len(problems) > MAX_REPORTED else ""
        raise UserError(f"{len(problems)} bad {fmt} record(s):\n{shown}{more}")
    return out


def _field(value: dict[str, Any], name: str, required: bool = True) -> str:
    if name not in value or value[name] is None:
        if required:
            raise BadRecord(f"missing field {name!r}")
        return ""
    if not isinstance(value[name], str):
        raise BadRecord(f"field {name!r} should be a string (got {type(value[name]).__name__})")
    return value[name]


def _require_dict(record: RawRecord) -> dict[str, Any]:
    if not isinstance(record.value, dict):
        raise BadRecord(f"a record is a JSON object (got {type(record.value).__name__})")
    return record.value


def _alpaca(record: RawRecord) -> Conversation:
    value = _require_dict(record)
    instruction, extra = _field(value, "instruction"), _field(value, "input", required=False)
    output, system = _field(value, "output"), _field(value, "system", required=False)
    messages: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    history = value.get("history") or []
    if not isinstance(history, list):
        raise BadRecord("field 'history' should be a list of [user, assistant] pairs")
    for i, turn in enumerate(history):
        if not (isinstance(turn, (list, tuple)) and len(turn) == 2 and all(isinstance(t, str) for t in turn)):
            raise BadRecord(f"history[{i}] should be a [user, assistant] pair of strings")
        messages += [{"role": "user", "content": turn[0]}, {"role": "assistant", "content": turn[1]}]
    prompt = f"{instruction}\n{extra}" if extra else instruction
    if not prompt.strip() or not output.strip():
        raise BadRecord("empty instruction or output")
    messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}]
    return Conversation(tuple(messages), record.where)


def _messages(record: RawRecord) -> Conversation:
    value = _require_dict(record)
    messages = value.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRecord("field 'messages' should be a non-empty list")
    clean = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise BadRecord(f"messages[{i}] should be an object with role and content")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise BadRecord(f"messages[{i}].role should be one of {', '.join(ROLES)} (got {role!r})")
        if not isinstance(content, str):
            raise BadRecord(f"messages[{i}].content should be a string (got {type(content).__name__})")
        clean.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" for m in clean):
        raise BadRecord("no assistant message: nothing to train on")
    if clean[0]["role"] == "assistant":
        # the prompt before a first reply cannot be told apart from it, so it would be trained on
        raise BadRecord("messages[0].role should be system or user: a conversation cannot open with the assistant")
    return Conversation(tuple(clean), record.where)


def _text(record: RawRecord) -> Text:
    value = _require_dict(record)
    text = _field(value, "text")
    if not text.strip():
        raise BadRecord("empty text")
    return Text(text, record.where)
