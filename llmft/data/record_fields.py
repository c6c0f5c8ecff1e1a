"""Reading one record's fields and messages: string fields, messages in OpenAI (role/content) or
ShareGPT (from/value) layout with an assistant's reasoning and tool calls, `tools`, alpaca's
`history`, a `system` field. Each raises `BadRecord` naming what is wrong and where
(`llmft.data.formats` adds the record's location)."""

from __future__ import annotations

import json
from typing import Any

from llmft.data.sources import RawRecord

ROLES = ("system", "user", "assistant", "tool")
#: ShareGPT `from` tags and the role each becomes (a function call is the assistant's turn).
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
    "function_call": "assistant",
    "observation": "tool",
    "tool": "tool",
}
#: message layouts: (role key, content key, role names -> llmft role)
MESSAGE_STYLES = {
    "openai": ("role", "content", {role: role for role in ROLES}),
    "sharegpt": ("from", "value", SHAREGPT_ROLES),
}
#: where an assistant message may carry its reasoning (both become `reasoning_content`)
REASONING_KEYS = ("reasoning_content", "thinking")

Message = dict[str, Any]
Messages = tuple[Message, ...]


class BadRecord(ValueError):
    """One record does not fit its format; the message names the field."""


def require_dict(record: RawRecord) -> dict[str, Any]:
    if not isinstance(record.value, dict):
        raise BadRecord(f"a record is a JSON object (got {type(record.value).__name__})")
    return record.value


def string_field(value: dict[str, Any], name: str, required: bool = True) -> str:
    if name not in value or value[name] is None:
        if required:
            raise BadRecord(f"missing field {name!r}")
        return ""
    if not isinstance(value[name], str):
        raise BadRecord(f"field {name!r} should be a string (got {type(value[name]).__name__})")
    return value[name]


def parse_message(raw: Any, path: str, style: str) -> Message:
    """One message; `style` is `openai` (role/content), `sharegpt` (from/value) or `either`."""
    if style == "either" and isinstance(raw, dict) and "role" not in raw and "from" in raw:
        style = "sharegpt"
    role_key, content_key, roles = MESSAGE_STYLES["sharegpt" if style == "sharegpt" else "openai"]
    if not isinstance(raw, dict):
        raise BadRecord(f"{path} should be an object with {role_key} and {content_key}")
    tag, content = raw.get(role_key), raw.get(content_key)
    if tag not in roles:
        raise BadRecord(f"{path}.{role_key} should be one of {', '.join(roles)} (got {tag!r})")
    extras = _assistant_extras(raw, path) if roles[tag] == "assistant" else {}
    if content is None and "tool_calls" in extras:
        content = ""  # OpenAI's shape: a message that only calls tools has no content
    if not isinstance(content, str):
        raise BadRecord(f"{path}.{content_key} should be a string (got {type(content).__name__})")
    if tag == "function_call":
        parse_json(content, f"{path}.value (a function_call)")
    message = {"role": roles[tag], "content": content, **extras}
    loss = raw.get("loss")
    if loss is not None:  # absent (or null, as Arrow stores a missing key) means the default
        if not isinstance(loss, bool):
            raise BadRecord(f"{path}.loss should be true or false (got {type(loss).__name__})")
        message["loss"] = loss
    return message


def _assistant_extras(raw: dict, path: str) -> dict[str, Any]:
    """An assistant message's reasoning (`reasoning_content`, or `thinking`, kept as
    `reasoning_content`, the key reasoning templates read) and OpenAI `tool_calls`, when present."""
    extras: dict[str, Any] = {}
    given = [key for key in REASONING_KEYS if raw.get(key) is not None]
    if len(given) > 1:
        raise BadRecord(f"{path} has both {given[0]!r} and {given[1]!r}; keep one")
    if given:
        if not isinstance(raw[given[0]], str):
            raise BadRecord(f"{path}.{given[0]} should be a string (got {type(raw[given[0]]).__name__})")
        extras["reasoning_content"] = raw[given[0]]
    calls = raw.get("tool_calls")
    if calls:
        if not isinstance(calls, list) or not all(isinstance(c, dict) for c in calls):
            raise BadRecord(f"{path}.tool_calls should be a list of tool calls (objects)")
        extras["tool_calls"] = calls
    return extras


def message_list(raw: Any, name: str, style: str) -> list[Message]:
    if not isinstance(raw, list) or not raw:
        raise BadRecord(f"field {name!r} should be a non-empty list")
    return [parse_message(m, f"{name}[{i}]", style) for i, m in enumerate(raw)]


def parse_json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadRecord(f"{what} is not valid JSON: {exc.msg} (line {exc.lineno} column {exc.colno})") from None


def tools_field(value: dict[str, Any]) -> str | None:
    """`tools` as a JSON string or a list (or one object) -> a JSON array string; empty -> None."""
    tools = value.get("tools")
    if tools is None or (isinstance(tools, str) and not tools.strip()):
        return None
    if isinstance(tools, str):
        tools = parse_json(tools, "field 'tools'")
    if isinstance(tools, dict):
        tools = [tools]
    if not isinstance(tools, list):
        raise BadRecord(f"field 'tools' should be a list of tool definitions (got {type(tools).__name__})")
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise BadRecord(f"tools[{i}] should be an object (a tool definition), got {type(tool).__name__}")
    return json.dumps(tools, ensure_ascii=False) if tools else None


def history_messages(value: dict[str, Any]) -> list[Message]:
    history = value.get("history") or []
    if not isinstance(history, list):
        raise BadRecord("field 'history' should be a list of [user, assistant] pairs")
    messages: list[Message] = []
    for i, turn in enumerate(history):
        if not (isinstance(turn, (list, tuple)) and len(turn) == 2 and all(isinstance(t, str) for t in turn)):
            raise BadRecord(f"history[{i}] should be a [user, assistant] pair of strings")
        messages += [{"role": "user", "content": turn[0]}, {"role": "assistant", "content": turn[1]}]
    return messages


def history_origins(value: dict[str, Any]) -> list[str]:
    """Where `_history`'s messages sit in the record."""
    return [f"history[{i}][{j}]" for i in range(len(value.get("history") or [])) for j in (0, 1)]


def with_system(messages: list[Message], system: str, name: str) -> list[Message]:
    if not system:
        return messages
    if messages and messages[0]["role"] == "system":
        raise BadRecord(f"both field 'system' and a system message at {name}[0]; keep one")
    return [{"role": "system", "content": system}, *messages]


def check_conversation(messages: list[Message], opening: str) -> None:
    if not any(m["role"] == "assistant" for m in messages):
        raise BadRecord("no assistant message: nothing to train on")
    if messages[0]["role"] not in ("system", "user"):
        # the prompt before a first reply cannot be told apart from it, so it would be trained on
        raise BadRecord(f"{opening}: a conversation cannot open with the {messages[0]['role']}")
