"""preference and kto formats: every prompt style, string vs message replies, bad records named."""

from __future__ import annotations

import pytest

from llmft.data.formats import Completion, Pair, normalise
from llmft.data.sources import RawRecord
from llmft.errors import UserError

WHERE = "p.json record 3"


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def system(text: str) -> dict:
    return {"role": "system", "content": text}


def pair(value: dict) -> Pair:
    [result], bad = normalise([RawRecord(value, WHERE)], "preference")
    assert bad.count == 0
    return result


def problem(value: dict, fmt: str = "preference") -> str:
    with pytest.raises(UserError) as info:
        normalise([RawRecord(value, WHERE)], fmt)
    message = str(info.value)
    prefix = f"1 bad {fmt} record(s):\n  - {WHERE}: "
    assert message.startswith(prefix)
    return message[len(prefix) :]


# --- preference: prompt styles -------------------------------------------------------------------


def test_prompt_string_with_string_replies():
    assert pair({"prompt": "Q", "chosen": "good", "rejected": "bad"}) == Pair(
        (user("Q"),), (assistant("good"),), (assistant("bad"),), WHERE
    )


def test_prompt_messages_with_message_list_replies():
    value = {
        "prompt": [system("S"), user("Q1"), assistant("A1"), user("Q2")],
        "chosen": [assistant("good")],
        "rejected": [{"role": "assistant", "content": "bad", "loss": True}],
    }
    result = pair(value)
    assert result.prompt == (system("S"), user("Q1"), assistant("A1"), user("Q2"))
    assert result.chosen == (assistant("good"),)
    assert result.rejected == ({"role": "assistant", "content": "bad", "loss": True},)


def test_sharegpt_conversations_with_single_message_replies():
    """LLaMA-Factory's dpo_en_demo.json layout."""
    value = {
        "conversations": [{"from": "human", "value": "Q1"}, {"from": "gpt", "value": "A1"}, {"from": "human", "value": "Q2"}],
        "chosen": {"from": "gpt", "value": "good"},
        "rejected": {"from": "gpt", "value": "bad"},
        "system": "S",
    }
    assert pair(value) == Pair(
        (system("S"), user("Q1"), assistant("A1"), user("Q2")), (assistant("good"),), (assistant("bad"),), WHERE
    )


def test_question_history_system_medicalgpt_style():
    value = {
        "system": "You are a doctor.",
        "history": [["Q1", "A1"]],
        "question": "Q2",
        "response_chosen": "good",
        "response_rejected": "bad",
    }
    assert pair(value) == Pair(
        (system("You are a doctor."), user("Q1"), assistant("A1"), user("Q2")),
        (assistant("good"),),
        (assistant("bad"),),
        WHERE,
    )


def test_question_with_empty_system_and_history():
    value = {"system": "", "history": [], "question": "Q", "chosen": "good", "rejected": "bad"}
    assert pair(value).prompt == (user("Q"),)


@pytest.mark.parametrize("extra, prompt", [({"input": "text"}, "Do it\ntext"), ({"input": ""}, "Do it"), ({}, "Do it")])
def test_alpaca_style_instruction_and_input(extra, prompt):
    value = {"instruction": "Do it", **extra, "chosen": "good", "rejected": "bad"}
    assert pair(value).prompt == (user(prompt),)


def test_implicit_prompt_from_whole_conversations():
    """TRL's implicit-prompt layout: chosen and rejected are whole conversations."""
    value = {
        "chosen": [user("Q"), assistant("good")],
        "rejected": [user("Q"), assistant("bad")],
    }
    assert pair(value) == Pair((user("Q"),), (assistant("good"),), (assistant("bad"),), WHERE)


def test_explicit_prompt_repeated_in_whole_conversations():
    """UltraFeedback-binarized: `prompt` plus chosen/rejected that repeat it."""
    value = {"prompt": "Q", "chosen": [user("Q"), assistant("good")], "rejected": [user("Q"), assistant("bad")]}
    assert pair(value) == Pair((user("Q"),), (assistant("good"),), (assistant("bad"),), WHERE)


def test_reply_with_a_tool_call():
    call = '{"name": "f", "arguments": {}}'
    value = {
        "prompt": "Q",
        "chosen": [
            {"from": "function_call", "value": call},
            {"from": "observation", "value": "1"},
            {"from": "gpt", "value": "It is 1."},
        ],
        "rejected": "I don't know.",
    }
    assert pair(value).chosen == (assistant(call), {"role": "tool", "content": "1"}, assistant("It is 1."))


# --- preference: bad records ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, expected",
    [
        ({"prompt": "Q", "chosen": "good"}, "missing field 'rejected'"),
        (
            {"prompt": "Q", "chosen": "good", "rejected": 3},
            "field 'rejected' should be a string, a message or a list of messages (got int)",
        ),
        ({"prompt": "Q", "chosen": " ", "rejected": "bad"}, "empty chosen"),
        ({"prompt": "Q", "chosen": "same", "rejected": "same"}, "'chosen' and 'rejected' are the same reply: nothing to prefer"),
        ({"prompt": " ", "chosen": "good", "rejected": "bad"}, "empty prompt"),
        (
            {"chosen": "good", "rejected": "bad"},
            "no prompt: give one of the fields prompt, conversations, question, instruction, or whole conversations (ending with the reply) in 'chosen' and 'rejected'",
        ),
        (
            {"prompt": "Q", "question": "Q", "chosen": "good", "rejected": "bad"},
            "several prompt fields (prompt, question); keep one",
        ),
        (
            {"prompt": [user("Q"), assistant("A")], "chosen": "good", "rejected": "bad"},
            "the prompt should end with a user message or a tool result (got assistant)",
        ),
        (
            {"prompt": [assistant("A"), user("Q")], "chosen": "good", "rejected": "bad"},
            "the prompt should open with a system or user message (got assistant)",
        ),
        (
            {"prompt": "Q", "chosen": [user("Q")], "rejected": "bad"},
            "'chosen' has no assistant reply after its last user message",
        ),
        (
            {"prompt": "Q", "chosen": [assistant("A"), {"role": "tool", "content": "1"}], "rejected": "bad"},
            "the reply in 'chosen' should start and end with an assistant message (got assistant, tool)",
        ),
        (
            {"prompt": "Q", "chosen": [assistant("A"), system("S"), assistant("B")], "rejected": "bad"},
            "the reply in 'chosen' holds a system message",
        ),
        ({"prompt": "Q", "chosen": "good", "rejected": {"from": "bot", "value": "bad"}}, "rejected.from should be one of"),
        ({"prompt": "Q", "chosen": "good", "rejected": [assistant(" \n")]}, "empty rejected"),
        (
            {"prompt": "Q", "chosen": [assistant(""), {"role": "tool", "content": "1"}, assistant("B")], "rejected": "bad"},
            "chosen[0]: empty assistant message in the reply: only its end-of-turn token would be trained, "
            "teaching the model to stop at once",
        ),
        (
            {
                "chosen": [user("Q"), assistant("A"), {"role": "tool", "content": "1"}, assistant(" ")],
                "rejected": [user("Q"), assistant("B")],
            },
            "chosen[3]: empty assistant message in the reply",
        ),
        (
            {"prompt": "Q", "chosen": "good", "rejected": [{"role": "bot", "content": "bad"}]},
            "rejected[0].role should be one of system, user, assistant, tool (got 'bot')",
        ),
        (
            {"chosen": [user("Q"), assistant("good")], "rejected": [user("Other"), assistant("bad")]},
            "'chosen' and 'rejected' hold different conversations before the reply",
        ),
        (
            {"prompt": "Q", "chosen": [user("X"), assistant("good")], "rejected": [user("X"), assistant("bad")]},
            "the conversation before the reply in 'chosen' differs from the prompt",
        ),
        (
            {"conversations": [{"from": "human", "value": "Q"}], "history": [["a", "b"]], "chosen": "g", "rejected": "b"},
            "field 'history' goes with a string prompt; put the turns in 'conversations'",
        ),
        (
            {"question": "Q", "history": [["a"]], "chosen": "g", "rejected": "b"},
            "history[0] should be a [user, assistant] pair of strings",
        ),
        (
            {
                "conversations": [{"from": "system", "value": "S"}, {"from": "human", "value": "Q"}],
                "system": "S",
                "chosen": "g",
                "rejected": "b",
            },
            "both field 'system' and a system message at conversations[0]; keep one",
        ),
        ({"instruction": 5, "chosen": "g", "rejected": "b"}, "field 'instruction' should be a string (got int)"),
        (["Q", "good", "bad"], "a record is a JSON object (got list)"),
    ],
)
def test_preference_bad_record(value, expected):
    assert problem(value).startswith(expected)


# --- kto -----------------------------------------------------------------------------------------


def completion(value: dict) -> Completion:
    [result], bad = normalise([RawRecord(value, WHERE)], "kto")
    assert bad.count == 0
    return result


def test_kto_messages_last_message_is_the_completion():
    """LLaMA-Factory's kto_en_demo.json layout."""
    value = {"messages": [user("Q1"), assistant("A1"), user("Q2"), assistant("A2")], "label": False}
    assert completion(value) == Completion((user("Q1"), assistant("A1"), user("Q2")), (assistant("A2"),), False, WHERE)


def test_kto_sharegpt_conversations_with_system():
    value = {"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}], "system": "S", "label": True}
    assert completion(value) == Completion((system("S"), user("Q")), (assistant("A"),), True, WHERE)


@pytest.mark.parametrize(
    "value, prompt, reply",
    [
        ({"prompt": "Q", "completion": "A"}, (user("Q"),), (assistant("A"),)),
        ({"prompt": [user("Q")], "completion": [assistant("A")]}, (user("Q"),), (assistant("A"),)),
        (
            {"prompt": "Q", "completion": {"role": "assistant", "content": "A"}, "system": "S"},
            (system("S"), user("Q")),
            (assistant("A"),),
        ),
        ({"question": "Q", "completion": "A"}, (user("Q"),), (assistant("A"),)),
    ],
)
def test_kto_prompt_and_completion_fields(value, prompt, reply):
    assert completion({**value, "label": True}) == Completion(prompt, reply, True, WHERE)


@pytest.mark.parametrize(
    "value, expected",
    [
        ({"messages": [user("Q"), assistant("A")]}, "missing field 'label'"),
        ({"messages": [user("Q"), assistant("A")], "label": "true"}, "field 'label' should be true or false (got str 'true')"),
        ({"messages": [user("Q"), assistant("A")], "label": 1}, "field 'label' should be true or false (got int 1)"),
        ({"messages": [user("Q"), assistant("A")], "label": None}, "missing field 'label'"),
        (
            {"messages": [user("Q"), assistant("A"), user("Q2")], "label": True},
            "'messages' has no assistant reply after its last user message",
        ),
        (
            {"messages": [assistant("A")], "label": True},
            "the prompt should end with a user message or a tool result (got nothing)",
        ),
        ({"messages": [], "label": True}, "field 'messages' should be a non-empty list"),
        ({"label": True, "text": "x"}, "missing field 'messages' (or 'completion' with a prompt)"),
        ({"completion": "A", "label": True}, "no prompt: give one of the fields"),
        ({"prompt": "Q", "completion": "", "label": True}, "empty completion"),
        ({"messages": [user("Q"), assistant("  ")], "label": False}, "empty messages"),
        (
            {"messages": [user("Q"), assistant(""), {"role": "tool", "content": "1"}, assistant("A")], "label": True},
            "messages[1]: empty assistant message in the reply",
        ),
    ],
)
def test_kto_bad_record(value, expected):
    assert problem(value, "kto").startswith(expected)


def test_kto_skip_mode_counts_bad_labels():
    records = [
        RawRecord({"messages": [user("Q"), assistant("A")], "label": label}, f"k.jsonl:{n}")
        for n, label in enumerate([True, "yes", False, 0, None], start=1)
    ]
    good, bad = normalise(records, "kto", on_bad_record="skip")
    assert [c.label for c in good] == [True, False]
    assert bad.count == 3
    assert bad.examples == [
        "k.jsonl:2: field 'label' should be true or false (got str 'yes')",
        "k.jsonl:4: field 'label' should be true or false (got int 0)",
        "k.jsonl:5: missing field 'label'",
    ]
