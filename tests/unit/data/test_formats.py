"""detect_format and normalise: records become conversations or texts, bad records are named."""

from __future__ import annotations

from functools import partial

import pytest

from llmft.data.formats import (
    SKIP_HINT,
    Conversation,
    Text,
    check_supervised,
    detect_format,
    detect_records_format,
    normalise,
)
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
        ({"text": "x", "label": 3}, "text"),
        ({"conversations": [], "tools": "[]"}, "sharegpt"),
        ({"conversations": [], "system": "s"}, "sharegpt"),
        ({"human": "a", "assistant": "b", "category": "c"}, "csv"),
        ({"conversations": [], "chosen": {}, "rejected": {}}, "preference"),
        ({"prompt": "p", "chosen": "a", "rejected": "b"}, "preference"),
        ({"question": "q", "response_chosen": "a", "response_rejected": "b"}, "preference"),
        ({"messages": [], "label": True}, "kto"),
        ({"prompt": "p", "completion": "c", "label": False}, "kto"),
        ({"conversations": [], "label": True}, "kto"),
        ({"question": "q", "answer": "a"}, "qa"),
        ({"question": "q", "answer": 72, "system": "s"}, "qa"),
        ({"question": "q", "chosen": "a", "rejected": "b", "answer": "x"}, "preference"),
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
    for name in ("sharegpt", "csv", "preference", "kto", "`columns`"):
        assert name in message


def test_detect_format_instruction_without_output():
    with pytest.raises(UserError, match=r"keys \(input, instruction\)"):
        detect_format(rec({"instruction": "a", "input": "b"}))


def test_detect_format_not_an_object():
    with pytest.raises(UserError, match=r"^d\.jsonl:1: cannot detect the data format from keys \(list\)"):
        detect_format(rec(["a", "b"]))


# --- alpaca ------------------------------------------------------------------------------


def alpaca(value, where="d.json record 0") -> Conversation:
    [conversation], bad = normalise([rec(value, where)], "alpaca")
    assert bad.count == 0
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
    [conversation], _ = normalise([rec(value, "d.jsonl:2")], "messages")
    assert conversation == Conversation(({"role": "system", "content": "S"}, *CHAT), "d.jsonl:2")


@pytest.mark.parametrize(
    "messages, problem",
    [
        (
            [{"role": "human", "content": "Hi"}, CHAT[1]],
            "messages[0].role should be one of system, user, assistant, tool (got 'human')",
        ),
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
    assert lines[6:] == ["  ... and 3 more", SKIP_HINT]  # the hint once, after the list


def test_five_bad_records_have_no_more_line():
    bad = [rec({"text": ""}, f"c.txt:{n}") for n in range(1, 6)]
    message = str(pytest.raises(UserError, normalise, bad, "text").value)
    assert message.startswith("5 bad text record(s):") and "more" not in message
    assert message.count("empty text") == 5


# --- text --------------------------------------------------------------------------------


def test_text_records():
    assert normalise([rec({"text": "a b"}, "c.txt:1"), rec({"text": "c", "x": 1}, "c.txt:3")], "text")[0] == [
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
    assert str(info.value) == f"1 bad text record(s):\n  - c.txt:2: {problem}\n{SKIP_HINT}"


def test_messages_with_tool_role_and_tools():
    value = {
        "messages": [*CHAT, {"role": "tool", "content": "{}"}, {"role": "assistant", "content": "Done"}],
        "tools": [{"name": "f"}],
    }
    [conversation], _ = normalise([rec(value)], "messages")
    assert conversation.messages[2] == {"role": "tool", "content": "{}"}
    assert conversation.tools == '[{"name": "f"}]'


# --- loss on messages -------------------------------------------------------------------------


def test_loss_is_kept_only_when_present():
    value = {
        "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hmm", "loss": False},
            {"role": "user", "content": "Again"},
            {"role": "assistant", "content": "Hello", "loss": True},
            {"role": "user", "content": "Bye"},
            {"role": "assistant", "content": "Bye", "loss": None},  # Arrow's null for a missing key
        ]
    }
    [conversation], _ = normalise([rec(value)], "messages")
    assert conversation.messages == (
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hmm", "loss": False},
        {"role": "user", "content": "Again"},
        {"role": "assistant", "content": "Hello", "loss": True},
        {"role": "user", "content": "Bye"},
        {"role": "assistant", "content": "Bye"},
    )


@pytest.mark.parametrize("loss", ["false", 0, 1])
def test_loss_must_be_a_bool(loss):
    value = {"messages": [CHAT[0], {**CHAT[1], "loss": loss}]}
    with pytest.raises(UserError) as info:
        normalise([rec(value, "d.jsonl:3")], "messages")
    assert f"  - d.jsonl:3: messages[1].loss should be true or false (got {type(loss).__name__})" in str(info.value)


def test_loss_on_sharegpt_messages():
    value = {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello", "loss": False}]}
    [conversation], _ = normalise([rec(value)], "sharegpt")
    assert conversation.messages[1] == {"role": "assistant", "content": "Hello", "loss": False}


# --- sharegpt ---------------------------------------------------------------------------------

CALL = '{"name": "search", "arguments": {"q": "rice"}}'
TOOLS = '[{"name": "search", "description": "Search", "parameters": {"type": "object"}}]'


def sharegpt(value, where="g.json record 0") -> Conversation:
    [conversation], _ = normalise([rec(value, where)], "sharegpt")
    return conversation


def test_sharegpt_tool_calling_roles():
    value = {
        "conversations": [
            {"from": "human", "value": "Find rice recipes"},
            {"from": "function_call", "value": CALL},
            {"from": "observation", "value": '{"recipes": []}'},
            {"from": "gpt", "value": "None found."},
            {"from": "user", "value": "Thanks"},
            {"from": "assistant", "value": "You're welcome."},
        ],
        "tools": TOOLS,
    }
    assert sharegpt(value) == Conversation(
        (
            {"role": "user", "content": "Find rice recipes"},
            {"role": "assistant", "content": CALL},
            {"role": "tool", "content": '{"recipes": []}'},
            {"role": "assistant", "content": "None found."},
            {"role": "user", "content": "Thanks"},
            {"role": "assistant", "content": "You're welcome."},
        ),
        "g.json record 0",
        '[{"name": "search", "description": "Search", "parameters": {"type": "object"}}]',
    )


def test_sharegpt_system_field_and_system_turn():
    turns = [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]
    expected = (
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
    )
    assert sharegpt({"conversations": turns, "system": "Be brief."}).messages == expected
    assert sharegpt({"conversations": [{"from": "system", "value": "Be brief."}, *turns]}).messages == expected


@pytest.mark.parametrize(
    "tools, expected",
    [
        (None, None),
        ("", None),
        ("[]", None),
        ([], None),
        ([{"name": "f"}], '[{"name": "f"}]'),
        ('{"name": "f"}', '[{"name": "f"}]'),
        ('[{"name": "ß"}]', '[{"name": "ß"}]'),
    ],
)
def test_sharegpt_tools(tools, expected):
    value = {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}], "tools": tools}
    assert sharegpt(value).tools == expected


TURNS = [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]


@pytest.mark.parametrize(
    "value, problem",
    [
        (
            {"conversations": TURNS, "tools": "[{oops"},
            "field 'tools' is not valid JSON: Expecting property name enclosed in double quotes (line 1 column 3)",
        ),
        ({"conversations": TURNS, "tools": 3}, "field 'tools' should be a list of tool definitions (got int)"),
        ({"conversations": TURNS, "tools": '"f"'}, "field 'tools' should be a list of tool definitions (got str)"),
        ({"conversations": TURNS, "tools": ["f"]}, "tools[0] should be an object (a tool definition), got str"),
        (
            {"conversations": [TURNS[0], {"from": "bot", "value": "x"}]},
            "conversations[1].from should be one of human, user, gpt, assistant, system, function_call, observation, tool (got 'bot')",
        ),
        (
            {"conversations": [TURNS[0], {"from": "gpt", "value": None}]},
            "conversations[1].value should be a string (got NoneType)",
        ),
        ({"conversations": [TURNS[0], {"role": "assistant", "content": "x"}]}, "conversations[1].from should be one of"),
        ({"conversations": [TURNS[0], "Hello"]}, "conversations[1] should be an object with from and value"),
        (
            {"conversations": [TURNS[0], {"from": "function_call", "value": "search(rice)"}]},
            "conversations[1].value (a function_call) is not valid JSON",
        ),
        ({"conversations": [TURNS[0]]}, "no assistant message: nothing to train on"),
        (
            {"conversations": [TURNS[1], *TURNS]},
            "conversations[0].from should be system or human: a conversation cannot open with the assistant",
        ),
        (
            {"conversations": [{"from": "observation", "value": "{}"}, *TURNS]},
            "conversations[0].from should be system or human: a conversation cannot open with the tool",
        ),
        ({"conversations": []}, "field 'conversations' should be a non-empty list"),
        (
            {"conversations": [{"from": "system", "value": "S"}, *TURNS], "system": "S2"},
            "both field 'system' and a system message at conversations[0]; keep one",
        ),
        ({"conversations": TURNS, "system": 1}, "field 'system' should be a string (got int)"),
    ],
)
def test_sharegpt_bad_record(value, problem):
    with pytest.raises(UserError) as info:
        normalise([rec(value, "g.json record 7")], "sharegpt")
    message = str(info.value)
    assert message.startswith("1 bad sharegpt record(s):\n")
    assert f"  - g.json record 7: {problem}" in message


# --- csv format -------------------------------------------------------------------------------


def test_csv_format():
    records = [
        rec({"human": "Hi", "assistant": "Hello", "category": "greeting", "system": ""}, "c.csv:2"),
        rec({"human": "Hi", "assistant": "Hello", "system": "Be kind."}, "c.csv:3"),
    ]
    first, second = normalise(records, "csv")[0]
    assert first == Conversation(({"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}), "c.csv:2")
    assert second.messages[0] == {"role": "system", "content": "Be kind."}


@pytest.mark.parametrize(
    "value, problem",
    [
        ({"human": "Hi"}, "missing field 'assistant'"),
        ({"human": "Hi", "assistant": " "}, "empty human or assistant"),
        ({"human": 1, "assistant": "x"}, "field 'human' should be a string (got int)"),
    ],
)
def test_csv_format_bad_record(value, problem):
    with pytest.raises(UserError) as info:
        normalise([rec(value, "c.csv:4")], "csv")
    assert str(info.value) == f"1 bad csv record(s):\n  - c.csv:4: {problem}\n{SKIP_HINT}"


# --- qa format (MedicalGPT's GRPO data) ------------------------------------------------------------


def test_qa_format_is_a_conversation_that_keeps_its_record():
    value = {"question": "What is 6 x 12?", "answer": "72", "source": "gsm8k"}
    (conversation,), _ = normalise([rec(value, "q.jsonl:1")], "qa")
    assert conversation.messages == ({"role": "user", "content": "What is 6 x 12?"}, {"role": "assistant", "content": "72"})
    assert conversation.record == value  # every column, for the rewards that read one


def test_qa_format_system_history_and_a_numeric_answer():
    value = {"question": "And doubled?", "answer": 144, "system": "Be exact.", "history": [["6 x 12?", "72"]]}
    (conversation,), _ = normalise([rec(value)], "qa")
    assert [m["role"] for m in conversation.messages] == ["system", "user", "assistant", "user", "assistant"]
    assert conversation.messages[-1]["content"] == "144" and conversation.record["answer"] == 144


@pytest.mark.parametrize(
    "value, problem",
    [
        ({"question": "q"}, "missing field 'answer'"),
        ({"question": "q", "answer": " "}, "empty question or answer"),
        ({"question": "q", "answer": True}, "field 'answer' should be a string (got bool)"),
        ({"question": ["q"], "answer": "a"}, "field 'question' should be a string (got list)"),
    ],
)
def test_qa_format_bad_record(value, problem):
    with pytest.raises(UserError) as info:
        normalise([rec(value, "q.jsonl:4")], "qa")
    assert str(info.value) == f"1 bad qa record(s):\n  - q.jsonl:4: {problem}\n{SKIP_HINT}"


def test_every_conversation_format_keeps_its_record():
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    values = {
        "alpaca": {"instruction": "Hi", "output": "Hello", "answer": "x"},
        "messages": {"messages": messages, "answer": "x"},
        "sharegpt": {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}], "answer": "x"},
        "csv": {"human": "Hi", "assistant": "Hello", "answer": "x"},
    }
    for fmt, value in values.items():
        (conversation,), _ = normalise([rec(value)], fmt)
        assert conversation.record["answer"] == "x", fmt


# --- skip mode, problems from the source --------------------------------------------------------


def test_skip_mode_returns_good_records_and_counts_bad_ones():
    records = [rec({"text": "ok"}, "c.txt:1")] + [rec({"text": " "}, f"c.txt:{n}") for n in range(2, 10)]
    texts, bad = normalise(records, "text", on_bad_record="skip")
    assert texts == [Text("ok", "c.txt:1")]
    assert bad.count == 8 and bad.fmt == "text"
    assert bad.examples == [f"c.txt:{n}: empty text" for n in range(2, 7)]
    assert bad.report().splitlines() == [
        "8 bad text record(s):",
        *(f"  - c.txt:{n}: empty text" for n in range(2, 7)),
        "  ... and 3 more",
    ]


def test_skip_mode_with_no_bad_records():
    texts, bad = normalise([rec({"text": "ok"})], "text", on_bad_record="skip")
    assert len(texts) == 1 and bad.count == 0 and bad.examples == []


def test_skip_mode_everything_bad():
    texts, bad = normalise([rec({"text": ""}), rec("x")], "text", on_bad_record="skip")
    assert texts == [] and bad.count == 2


def test_a_problem_found_by_the_source_is_a_bad_record():
    records = [
        rec({"instruction": "q", "output": "a"}, "d.jsonl:1"),
        RawRecord({"instruction": "q"}, "d.jsonl:2", "missing column 'answer' (columns maps 'output' to it)"),
    ]
    with pytest.raises(UserError) as info:
        normalise(records, "alpaca")
    assert str(info.value) == (
        f"1 bad alpaca record(s):\n  - d.jsonl:2: missing column 'answer' (columns maps 'output' to it)\n{SKIP_HINT}"
    )
    conversations, bad = normalise(records, "alpaca", on_bad_record="skip")
    assert len(conversations) == 1 and bad.count == 1


def test_unknown_format_and_mode():
    with pytest.raises(UserError, match="unknown data format 'parquet'"):
        normalise([rec({"text": "a"})], "parquet")
    with pytest.raises(ValueError, match="on_bad_record"):
        normalise([rec({"text": "a"})], "text", on_bad_record="warn")


def test_detect_records_format_reads_the_first_clean_record():
    records = [RawRecord(None, "d.jsonl:1", "invalid JSON: Expecting value (column 9)"), rec({"text": "a"}, "d.jsonl:2")]
    assert detect_records_format(records, "data.train.0: d.jsonl") == "text"
    with pytest.raises(UserError) as info:
        detect_records_format(records[:1], "data.train.0: d.jsonl")
    assert str(info.value) == (
        "data.train.0: d.jsonl: no record could be read, so its format cannot be detected; 1 bad unreadable record(s):\n"
        "  - d.jsonl:1: invalid JSON: Expecting value (column 9)"
    )


# --- what a stage that trains on the replies adds (sft) -----------------------------------------

USER, TOOL = {"role": "user", "content": "More?"}, {"role": "tool", "content": "42"}


def supervised(value, fmt="messages", supervision="all_turns", where="d.jsonl:7"):
    """normalise with sft's check: the conversation, or the one bad record's problem."""
    check = partial(check_supervised, supervision=supervision)
    good, bad = normalise([rec(value, where)], fmt, "skip", check)
    assert len(good) + bad.count == 1
    return good[0] if good else bad.examples[0].removeprefix(f"{where}: ")


EMPTY_REPLY = "empty assistant message: only its end-of-turn token would be trained, teaching the model to stop at once"


@pytest.mark.parametrize(
    "fmt, value, origin",
    [
        ("messages", {"messages": [*CHAT, USER, {"role": "assistant", "content": ""}]}, "messages[3]"),
        ("messages", {"messages": [CHAT[0], {"role": "assistant", "content": " \n"}, *CHAT]}, "messages[1]"),
        (
            "sharegpt",
            {"system": "S", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": ""}]},
            "conversations[1]",
        ),
        ("alpaca", {"instruction": "Q", "output": "A", "history": [["Hi", ""]]}, "history[0][1]"),
        ("qa", {"question": "Q", "answer": "A", "system": "S", "history": [["Hi", " "]]}, "history[0][1]"),
    ],
)
def test_an_empty_reply_that_is_trained_on_is_a_bad_record(fmt, value, origin):
    assert supervised(value, fmt) == f"{origin}: {EMPTY_REPLY}; remove the turn or give it its reply"


def test_an_empty_reply_that_is_not_trained_on_is_kept():
    empty = {"role": "assistant", "content": ""}
    assert isinstance(supervised({"messages": [CHAT[0], empty, *CHAT]}, supervision="last_turn"), Conversation)
    assert isinstance(supervised({"messages": [CHAT[0], {**empty, "loss": False}, *CHAT]}), Conversation)
    assert supervised({"messages": [*CHAT, USER, empty]}, supervision="last_turn").startswith(f"messages[3]: {EMPTY_REPLY}")
    assert supervised({"messages": [CHAT[0], empty, *CHAT]}, supervision="all").startswith(f"messages[1]: {EMPTY_REPLY}")


@pytest.mark.parametrize(
    "fmt, value, role, origin",
    [
        ("messages", {"messages": [*CHAT, USER]}, "user", "messages[2]"),
        ("messages", {"messages": [*CHAT, USER, TOOL]}, "tool", "messages[2]"),
        (
            "sharegpt",
            {
                "system": "S",
                "conversations": [
                    {"from": "human", "value": "Hi"},
                    {"from": "gpt", "value": "Hello"},
                    {"from": "human", "value": "More?"},
                ],
            },
            "user",
            "conversations[2]",
        ),
    ],
)
def test_a_turn_after_the_last_reply_is_a_bad_record(fmt, value, role, origin):
    assert supervised(value, fmt) == (
        f"ends with a {role} message after the last reply ({origin}): that turn is never trained on; "
        "end the conversation with the reply"
    )
    assert supervised(value, fmt, supervision="last_turn").startswith(f"ends with a {role} message")


def test_train_on_all_trains_a_turn_after_the_last_reply():
    assert supervised({"messages": [*CHAT, USER]}, supervision="all").messages[-1] == USER


def test_stage_problems_follow_on_bad_record():
    """Counted with the format's own problems under skip; listed together under error."""
    check = partial(check_supervised, supervision="all_turns")
    records = [
        rec({"messages": CHAT}, "d.jsonl:1"),
        rec({"messages": [*CHAT, USER]}, "d.jsonl:2"),
        rec({"messages": [CHAT[0]]}, "d.jsonl:3"),
        rec({"messages": [CHAT[0], {"role": "assistant", "content": ""}]}, "d.jsonl:4"),
    ]
    good, bad = normalise(records, "messages", "skip", check)
    assert [c.where for c in good] == ["d.jsonl:1"] and bad.count == 3
    with pytest.raises(UserError) as info:
        normalise(records, "messages", "error", check)
    lines = str(info.value).splitlines()
    assert lines[0] == "3 bad messages record(s):"
    assert lines[1].startswith("  - d.jsonl:2: ends with a user message after the last reply (messages[2])")
    assert lines[2] == "  - d.jsonl:3: no assistant message: nothing to train on"
    assert lines[3].startswith(f"  - d.jsonl:4: messages[1]: {EMPTY_REPLY}")
    assert normalise(records[1:2], "messages")[0][0].messages[-1] == USER  # without a stage's check: kept
