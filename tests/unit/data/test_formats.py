"""detect_format and normalise: records become conversations or texts, bad records are named."""

from __future__ import annotations

import pytest

from llmft.data.formats import Conversation, Text, detect_format, normalise
from llmft.data.sources import RawRecord
from llmft.errors import UserError


def rec(value, where="d.jsonl:1") -> RawRecord:
    return RawRecord(value, where)


@pytest.mark.parametrize(
    "value, fmt",
    [
        ({"messages": []}, "messages"),
        ({"messages": [], "text": "x"}, "messages"),
        ({"instruction": "a", "output": "b"}, "alpaca"),
        ({"instruction": "a", "input": "", "output": "b", "history": []}, "alpaca"),
        ({"text": "x"}, "text"),
        ({"text": "x", "meta": 1}, "text"),
    ],
)
def test_detect_format(value, fmt):
    assert detect_format(rec(value)) == fmt


def test_detect_format_unknown_keys():
    with pytest.raises(UserError) as info:
        detect_format(rec({"prompt": "a", "completion": "b"}, "d.jsonl:4"))
    message = str(info.value)
    assert message.startswith("d.jsonl:4: cannot detect the data format from keys (completion, prompt)")
    assert "alpaca" in message and "messages" in message and "text" in message and "`format`" in message


def test_detect_format_instruction_without_output():
    with pytest.raises(UserError, match=r"keys \(input, instruction\)"):
        detect_format(rec({"instruction": "a", "input": "b"}))


def test_detect_format_not_an_object():
    with pytest.raises(UserError, match=r"^d\.jsonl:1: cannot detect the data format from keys \(list\)"):
        detect_format(rec(["a", "b"]))


# --- alpaca ------------------------------------------------------------------------------


def alpaca(value, where="d.json record 0") -> Conversation:
    [conversation] = normalise([rec(value, where)], "alpaca")
    return conversation


def test_alpaca_minimal():
    assert alpaca({"instruction": "Who are you?", "output": "A model."}) == Conversation(
        (
            {"role": "user", "content": "Who are you?"},
            {"role": "assistant", "content": "A model."},
        ),
        "d.json record 0",
    )


def test_alpaca_with_system_history_and_input():
    value = {
        "system": "You translate.",
        "history": [["Hello!", "Hi."], ["How are you?", "Fine."]],
        "instruction": "Translate to French:",
        "input": "good morning",
        "output": "bonjour",
    }
    assert alpaca(value).messages == (
        {"role": "system", "content": "You translate."},
        {"role": "user", "content": "Hello!"},
        {"role": "assistant", "content": "Hi."},
        {"role": "user", "content": "How are you?"},
        {"role": "assistant", "content": "Fine."},
        {"role": "user", "content": "Translate to French:\ngood morning"},
        {"role": "assistant", "content": "bonjour"},
    )


@pytest.mark.parametrize("empty", [{"input": "", "system": "", "history": []}, {"input": None, "system": None, "history": None}])
def test_alpaca_empty_optional_fields_are_left_out(empty):
    assert alpaca({"instruction": "Hi", "output": "Hello", **empty}).messages == (
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
    )


@pytest.mark.parametrize(
    "value, problem",
    [
        ({"instruction": "a"}, "missing field 'output'"),
        ({"instruction": 3, "output": "b"}, "field 'instruction' should be a string (got int)"),
        ({"instruction": "a", "output": "b", "input": ["x"]}, "field 'input' should be a string (got list)"),
        ({"instruction": "a", "output": "b", "history": "hi"}, "field 'history' should be a list"),
        ({"instruction": "a", "output": "b", "history": [["u", "v"], ["u"]]}, "history[1] should be a [user, assistant] pair"),
        ({"instruction": "a", "output": "b", "history": [["u", 2]]}, "history[0] should be a [user, assistant] pair"),
        ({"instruction": " ", "output": "b"}, "empty instruction or output"),
        ({"instruction": "a", "output": "\n"}, "empty instruction or output"),
        ("just text", "a record is a JSON object (got str)"),
    ],
)
def test_alpaca_bad_record(value, problem):
    with pytest.raises(UserError) as info:
        normalise([rec(value, "d.json record 5")], "alpaca")
    message = str(info.value)
    assert message.startswith("1 bad alpaca record(s):\n")
    assert f"  - d.json record 5: {problem}" in message


# --- messages ----------------------------------------------------------------------------

CHAT = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]


def test_messages_are_kept_with_only_role_and_content():
    value = {"messages": [{"role": "system", "content": "S", "name": "x"}, *CHAT], "id": 7}
    [conversation] = normalise([rec(value, "d.jsonl:2")], "messages")
    assert conversation == Conversation(({"role": "system", "content": "S"}, *CHAT), "d.jsonl:2")


@pytest.mark.parametrize(
    "messages, problem",
    [
        ([{"role": "human", "content": "Hi"}, CHAT[1]], "messages[0].role should be one of system, user, assistant (got 'human')"),
        ([CHAT[0], {"role": "assistant", "content": 5}], "messages[1].content should be a string (got int)"),
        ([CHAT[0], {"role": "assistant"}], "messages[1].content should be a string (got NoneType)"),
        ([CHAT[0], "Hello"], "messages[1] should be an object with role and content"),
        ([CHAT[0]], "no assistant message"),
        ([], "field 'messages' should be a non-empty list"),
        ("Hi", "field 'messages' should be a non-empty list"),
        ([CHAT[1], *CHAT], "messages[0].role should be system or user"),
    ],
)
def test_messages_bad_record(messages, problem):
    with pytest.raises(UserError) as info:
        normalise([rec({"messages": CHAT}, "d.jsonl:1"), rec({"messages": messages}, "d.jsonl:9")], "messages")
    message = str(info.value)
    assert message.startswith("1 bad messages record(s):\n")
    assert f"  - d.jsonl:9: {problem}" in message
    assert "d.jsonl:1" not in message


def test_several_bad_records_are_reported_together():
    good = rec({"messages": CHAT}, "d.jsonl:1")
    bad = [rec({"messages": [CHAT[0]]}, f"d.jsonl:{n}") for n in range(2, 10)]  # 8 bad records
    with pytest.raises(UserError) as info:
        normalise([good, *bad], "messages")
    lines = str(info.value).splitlines()
    assert lines[0] == "8 bad messages record(s):"
    assert lines[1:6] == [f"  - d.jsonl:{n}: no assistant message: nothing to train on" for n in range(2, 7)]
    assert lines[6:] == ["  ... and 3 more"]


def test_five_bad_records_have_no_more_line():
    bad = [rec({"text": ""}, f"c.txt:{n}") for n in range(1, 6)]
    message = str(pytest.raises(UserError, normalise, bad, "text").value)
    assert message.startswith("5 bad text record(s):") and "more" not in message
    assert message.count("empty text") == 5


# --- text --------------------------------------------------------------------------------


def test_text_records():
    assert normalise([rec({"text": "a b"}, "c.txt:1"), rec({"text": "c", "x": 1}, "c.txt:3")], "text") == [
        Text("a b", "c.txt:1"),
        Text("c", "c.txt:3"),
    ]


@pytest.mark.parametrize(
    "value, problem",
    [({"text": "  "}, "empty text"), ({"text": 1}, "field 'text' should be a string (got int)"), ({}, "missing field 'text'")],
)
def test_text_bad_record(value, problem):
    with pytest.raises(UserError) as info:
        normalise([rec(value, "c.txt:2")], "text")
    assert str(info.value) == f"1 bad text record(s):\n  - c.txt:2: {problem}"
