"""Normalise raw records into the shapes training uses.

SFT formats (alpaca, messages, sharegpt, csv, qa) become `Conversation`s, `text` becomes `Text`,
`preference` becomes `Pair`s and `kto` becomes `Completion`s. A message is
`{"role": system|user|assistant|tool, "content": str}` plus `"loss": bool` when the input had one;
an assistant message also keeps its `reasoning_content` (or `thinking`) and `tool_calls`
(`llmft.data.record_fields` reads the fields and messages of one record).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from llmft.data.record_fields import (
    BadRecord,
    Message,
    Messages,
    check_conversation,
    history_messages,
    history_origins,
    message_list,
    parse_message,
    require_dict,
    string_field,
    tools_field,
    with_system,
)
from llmft.data.render import supervised_turns
from llmft.data.sources import RawRecord
from llmft.errors import UserError

MAX_REPORTED = 5


@dataclass(frozen=True)
class Conversation:
    messages: Messages
    where: str
    tools: str | None = None  # a JSON array of tool definitions
    # the record's own fields as read (after `data.*.columns`), for GRPO rewards that read a column
    # (e.g. the `answer` an accuracy reward compares with); the same objects, not a copy
    record: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False, repr=False)
    # where each message sits in the record (`messages[2]`, `history[0][1]`, `output`), to name it in
    # problems found after normalising (`check_supervised`); empty for conversations built in code
    origins: tuple[str, ...] = field(default=(), compare=False, hash=False, repr=False)

    def origin(self, index: int) -> str:
        """Where message `index` came from in the record (`message N` when not known)."""
        return self.origins[index] if index < len(self.origins) else f"message {index}"


@dataclass(frozen=True)
class Text:
    text: str
    where: str


@dataclass(frozen=True)
class Pair:
    """A preference pair: `prompt` ends with a user message or a tool result (the reply follows the
    observation); `chosen`/`rejected` are the replies."""

    prompt: Messages
    chosen: Messages
    rejected: Messages
    where: str
    tools: str | None = None  # a JSON array of tool definitions, as on a Conversation


@dataclass(frozen=True)
class Completion:
    """A KTO example: a prompt, one reply, and whether the reply is desirable."""

    prompt: Messages
    completion: Messages
    label: bool
    where: str
    tools: str | None = None  # a JSON array of tool definitions, as on a Conversation


@dataclass
class BadRecords:
    """Records that did not fit their format: how many, and the first few problems with locations."""

    fmt: str
    count: int = 0
    examples: list[str] = field(default_factory=list)

    def add(self, problem: str) -> None:
        self.count += 1
        if len(self.examples) < MAX_REPORTED:
            self.examples.append(problem)

    def report(self) -> str:
        shown = "\n".join(f"  - {p}" for p in self.examples)
        more = f"\n  ... and {self.count - len(self.examples)} more" if self.count > len(self.examples) else ""
        return f"{self.count} bad {self.fmt} record(s):\n{shown}{more}"


#: Said once, after the bad records that stopped a run are listed.
SKIP_HINT = (
    "Fix them, or set data.on_bad_record: skip to leave them out and train on the rest "
    "(each one counted in the run log and in `llmft data`)."
)


def detect_format(record: RawRecord) -> str:
    value = record.value
    if isinstance(value, dict):
        keys = set(value)
        if {"chosen", "rejected"} <= keys or {"response_chosen", "response_rejected"} <= keys:
            return "preference"
        if "label" in keys and keys & {"messages", "conversations", "completion"}:
            return "kto"
        if "messages" in keys:
            return "messages"
        if "conversations" in keys:
            return "sharegpt"
        if "instruction" in keys and "output" in keys:
            return "alpaca"
        if "human" in keys and "assistant" in keys:
            return "csv"
        if "question" in keys and "answer" in keys:
            return "qa"
        if "text" in keys:
            return "text"
    keys_seen = ", ".join(sorted(map(str, value))) if isinstance(value, dict) else type(value).__name__
    raise UserError(
        f"{record.where}: cannot detect the data format from keys ({keys_seen}); expected "
        "instruction/output (alpaca), messages, conversations (sharegpt), human/assistant (csv), "
        "question/answer (qa), text, chosen/rejected (preference), or label with messages or completion (kto). "
        "Set the dataset's `format`, or rename fields with `columns`."
    )


def detect_records_format(records: list[RawRecord], key: str) -> str:
    """The format of the first record that was read cleanly (`key` names the source in the error
    when none was: every line invalid JSON, say)."""
    clean = next((r for r in records if r.problem is None), None)
    if clean is not None:
        return detect_format(clean)
    bad = BadRecords("unreadable")
    for record in records:
        bad.add(f"{record.where}: {record.problem}")
    raise UserError(f"{key}: no record could be read, so its format cannot be detected; {bad.report()}")


def normalise(
    records: list[RawRecord],
    fmt: str,
    on_bad_record: Literal["error", "skip"] = "error",
    check: Callable[[Any], None] | None = None,
) -> tuple[list[Any], BadRecords]:
    """Convert every record. `error`: raise listing every bad record (the first few shown);
    `skip`: leave them out and return them counted. `check`: what the stage adds to the format's own
    rules (`check_supervised`), run on each converted record; it raises BadRecord."""
    if fmt not in CONVERTERS:
        raise UserError(f"unknown data format {fmt!r}; use one of {', '.join(CONVERTERS)}")
    if on_bad_record not in ("error", "skip"):
        raise ValueError(f"on_bad_record is 'error' or 'skip' (got {on_bad_record!r})")
    convert = CONVERTERS[fmt]
    out: list[Any] = []
    bad = BadRecords(fmt)
    for record in records:
        try:
            if record.problem:
                raise BadRecord(record.problem)
            item = convert(record)
            if check is not None:
                check(item)
            out.append(item)
        except BadRecord as exc:
            bad.add(f"{record.where}: {exc}")
    if bad.count and on_bad_record == "error":
        raise UserError(f"{bad.report()}\n{SKIP_HINT}")
    return out, bad


def check_supervised(conversation: Conversation, supervision: str) -> None:
    """The rules of a stage that trains on a conversation's replies (sft; `supervision` is
    `data.supervision`), beyond the format's: an empty assistant message that is trained on would
    supervise its end-of-turn token alone, teaching the model to stop at once; a turn after the last
    reply is never trained on (except under `train_on: all`, which trains every token). Stages that
    sample their own replies (grpo, ppo) do not apply it: there an open question is the prompt."""
    messages = conversation.messages
    for i in supervised_turns(messages, supervision):
        if not messages[i]["content"].strip():
            raise BadRecord(
                f"{conversation.origin(i)}: empty assistant message: only its end-of-turn token would be "
                "trained, teaching the model to stop at once; remove the turn or give it its reply"
            )
    last_reply = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=-1)
    if supervision != "all" and last_reply < len(messages) - 1:
        role = messages[-1]["role"]
        raise BadRecord(
            f"ends with a {role} message after the last reply ({conversation.origin(last_reply + 1)}): "
            "that turn is never trained on; end the conversation with the reply"
        )


# --- SFT and PT formats ------------------------------------------------------------------


def _alpaca(record: RawRecord) -> Conversation:
    value = require_dict(record)
    instruction, extra = string_field(value, "instruction"), string_field(value, "input", required=False)
    output, system = string_field(value, "output"), string_field(value, "system", required=False)
    messages: list[Message] = [{"role": "system", "content": system}] if system else []
    messages += history_messages(value)
    prompt = f"{instruction}\n{extra}" if extra else instruction
    if not prompt.strip() or not output.strip():
        raise BadRecord("empty instruction or output")
    messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}]
    origins = ["system"] * bool(system) + history_origins(value) + ["instruction", "output"]
    return Conversation(tuple(messages), record.where, record=value, origins=tuple(origins))


def _messages(record: RawRecord) -> Conversation:
    value = require_dict(record)
    messages = message_list(value.get("messages"), "messages", "openai")
    check_conversation(messages, "messages[0].role should be system or user")
    origins = tuple(f"messages[{i}]" for i in range(len(messages)))
    return Conversation(tuple(messages), record.where, tools_field(value), value, origins)


def _sharegpt(record: RawRecord) -> Conversation:
    value = require_dict(record)
    turns = message_list(value.get("conversations"), "conversations", "sharegpt")
    messages = with_system(turns, string_field(value, "system", required=False), "conversations")
    check_conversation(messages, "conversations[0].from should be system or human")
    origins = ["system"] * (len(messages) - len(turns)) + [f"conversations[{i}]" for i in range(len(turns))]
    return Conversation(tuple(messages), record.where, tools_field(value), value, tuple(origins))


def _csv(record: RawRecord) -> Conversation:
    value = require_dict(record)
    human, assistant = string_field(value, "human"), string_field(value, "assistant")
    system = string_field(value, "system", required=False)
    if not human.strip() or not assistant.strip():
        raise BadRecord("empty human or assistant")
    messages = [{"role": "user", "content": human}, {"role": "assistant", "content": assistant}]
    origins = ("system",) * bool(system) + ("human", "assistant")
    return Conversation(tuple(with_system(messages, system, "messages")), record.where, record=value, origins=origins)


def _qa(record: RawRecord) -> Conversation:
    """MedicalGPT's GRPO shape: `question` (user) and `answer` (assistant), optional `system` and
    `history`. A number as the answer (`"answer": 72`) is its text."""
    value = require_dict(record)
    question, system = string_field(value, "question"), string_field(value, "system", required=False)
    answer = value.get("answer")
    if isinstance(answer, (int, float)) and not isinstance(answer, bool):
        answer = str(answer)
    elif answer is None or not isinstance(answer, str):
        answer = string_field(value, "answer")  # raises, naming the field
    if not question.strip() or not answer.strip():
        raise BadRecord("empty question or answer")
    messages: list[Message] = [{"role": "system", "content": system}] if system else []
    messages += history_messages(value)
    messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    origins = ["system"] * bool(system) + history_origins(value) + ["question", "answer"]
    return Conversation(tuple(messages), record.where, record=value, origins=tuple(origins))


def _text(record: RawRecord) -> Text:
    value = require_dict(record)
    text = string_field(value, "text")
    if not text.strip():
        raise BadRecord("empty text")
    return Text(text, record.where)


# --- preference and KTO ------------------------------------------------------------------

PROMPT_FIELDS = ("prompt", "conversations", "question", "instruction")


def _preference(record: RawRecord) -> Pair:
    value = require_dict(record)
    keys = [_alias(value, "chosen", "response_chosen"), _alias(value, "rejected", "response_rejected")]
    prompt, (chosen, rejected) = _prompt_and_replies(value, keys)
    if _plain(chosen) == _plain(rejected):
        raise BadRecord(f"{keys[0]!r} and {keys[1]!r} are the same reply: nothing to prefer")
    return Pair(tuple(prompt), tuple(chosen), tuple(rejected), record.where, tools_field(value))


def _kto(record: RawRecord) -> Completion:
    value = require_dict(record)
    label = value.get("label")
    if label is None:
        raise BadRecord("missing field 'label'")
    if not isinstance(label, bool):
        raise BadRecord(f"field 'label' should be true or false (got {type(label).__name__} {label!r})")
    if value.get("completion") is not None:
        prompt, (completion,) = _prompt_and_replies(value, ["completion"])
        return Completion(tuple(prompt), tuple(completion), label, record.where, tools_field(value))
    key = "messages" if value.get("messages") is not None else "conversations"
    if value.get(key) is None:
        raise BadRecord("missing field 'messages' (or 'completion' with a prompt)")
    messages = message_list(value[key], key, "either" if key == "messages" else "sharegpt")
    before, completion = _split_reply(messages, key)
    prompt = _check_prompt(with_system(before, string_field(value, "system", required=False), key))
    return Completion(tuple(prompt), tuple(completion), label, record.where, tools_field(value))


def _alias(value: dict[str, Any], name: str, alias: str) -> str:
    return alias if name not in value and alias in value else name


def _prompt_and_replies(value: dict[str, Any], keys: list[str]) -> tuple[list[Message], list[list[Message]]]:
    """The prompt (from a prompt field, or the conversation before the replies) and each reply."""
    split = [_reply(value, key) for key in keys]
    before = split[0][0]
    for key, (other, _) in zip(keys[1:], split[1:]):
        if _plain(other) != _plain(before):
            raise BadRecord(f"{keys[0]!r} and {key!r} hold different conversations before the reply")
    system = string_field(value, "system", required=False)
    found = _prompt(value)
    if found is None:
        if not before:
            raise BadRecord(
                f"no prompt: give one of the fields {', '.join(PROMPT_FIELDS)}, "
                f"or whole conversations (ending with the reply) in {' and '.join(map(repr, keys))}"
            )
        prompt = with_system(before, system, keys[0])
    else:
        prompt = with_system(found[1], system, found[0])
        if before and _plain(before) != _plain(prompt):
            raise BadRecord(f"the conversation before the reply in {keys[0]!r} differs from the prompt")
    return _check_prompt(prompt), [reply for _, reply in split]


def _prompt(value: dict[str, Any]) -> tuple[str, list[Message]] | None:
    """(prompt field, its messages without `system`), or None when the record has none."""
    present = [name for name in PROMPT_FIELDS if value.get(name) is not None]
    if not present:
        return None
    if len(present) > 1:
        raise BadRecord(f"several prompt fields ({', '.join(present)}); keep one")
    name = present[0]
    if name == "conversations" or isinstance(value[name], list):
        if value.get("history"):
            raise BadRecord(f"field 'history' goes with a string prompt; put the turns in {name!r}")
        return name, message_list(value[name], name, "sharegpt" if name == "conversations" else "either")
    if isinstance(value[name], dict):
        return name, [parse_message(value[name], name, "either")]
    text = string_field(value, name)
    if name == "instruction" and string_field(value, "input", required=False):
        text = f"{text}\n{value['input']}"
    if not text.strip():
        raise BadRecord(f"empty {name}")
    return name, [*history_messages(value), {"role": "user", "content": text}]


def _reply(value: dict[str, Any], key: str) -> tuple[list[Message], list[Message]]:
    """(conversation before the reply, the reply) of a string, one message, or a list of messages."""
    raw = value.get(key)
    if raw is None:
        raise BadRecord(f"missing field {key!r}")
    if isinstance(raw, str):
        if not raw.strip():
            raise BadRecord(f"empty {key}")
        return [], [{"role": "assistant", "content": raw}]
    if isinstance(raw, dict):
        return _split_reply([parse_message(raw, key, "either")], key)
    if isinstance(raw, list):
        return _split_reply(message_list(raw, key, "either"), key)
    raise BadRecord(f"field {key!r} should be a string, a message or a list of messages (got {type(raw).__name__})")


def _split_reply(messages: list[Message], key: str) -> tuple[list[Message], list[Message]]:
    """Split after the last user message: the reply is what the assistant says (and tools return)."""
    last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=-1)
    before, reply = messages[: last_user + 1], messages[last_user + 1 :]
    if not reply:
        raise BadRecord(f"{key!r} has no assistant reply after its last user message")
    if reply[0]["role"] != "assistant" or reply[-1]["role"] != "assistant":
        roles = ", ".join(m["role"] for m in reply)
        raise BadRecord(f"the reply in {key!r} should start and end with an assistant message (got {roles})")
    if any(m["role"] == "system" for m in reply):
        raise BadRecord(f"the reply in {key!r} holds a system message")
    if not any(m["content"].strip() for m in reply):
        raise BadRecord(f"empty {key}")
    for i, message in enumerate(reply, start=len(before)):  # one of several (a lone one is `empty {key}` above)
        if message["role"] == "assistant" and not message["content"].strip():
            raise BadRecord(
                f"{key}[{i}]: empty assistant message in the reply: only its end-of-turn token would be trained, "
                "teaching the model to stop at once"
            )
    return before, reply


def _check_prompt(prompt: list[Message]) -> list[Message]:
    """A prompt ends where the reply starts: after a user message, or after a tool result (the reply
    answers the observation, as in tool-calling preference data)."""
    if not prompt or prompt[-1]["role"] not in ("user", "tool"):
        got = prompt[-1]["role"] if prompt else "nothing"
        raise BadRecord(f"the prompt should end with a user message or a tool result (got {got})")
    if prompt[0]["role"] not in ("system", "user"):
        raise BadRecord(f"the prompt should open with a system or user message (got {prompt[0]['role']})")
    return prompt


def _plain(messages: list[Message]) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in messages]


CONVERTERS: dict[str, Callable[[RawRecord], Any]] = {
    "alpaca": _alpaca,
    "messages": _messages,
    "sharegpt": _sharegpt,
    "csv": _csv,
    "qa": _qa,
    "text": _text,
    "preference": _preference,
    "kto": _kto,
}
