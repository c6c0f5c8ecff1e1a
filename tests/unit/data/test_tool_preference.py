"""Tool-calling preference data (MedicalGPT's data/reward/toolcall_dpo_zh_demo.jsonl shape): a
prompt may end with a tool result (the reply follows the observation), and a record's `tools` are
rendered where the template can and warned where it cannot, by the rule SFT uses."""

from __future__ import annotations

import copy
import json
import logging

import pytest
from conftest import write_jsonl
from tiny import build_tokenizer

from llmft.config.data import DataConfig
from llmft.data.dataset import prepare_data
from llmft.data.formats import Completion, normalise
from llmft.data.pairs import build_kto_examples, build_pair_examples
from llmft.data.sources import RawRecord
from llmft.data.templates import install_template
from llmft.data.tokenize import IGNORE
from llmft.data.trl_rows import kto_row

# two records as MedicalGPT ships them (translated): `tools` as a JSON string of bare function
# definitions; ShareGPT `conversations`; the second prompt ends with the call's observation
TOOLS = json.dumps(
    [
        {
            "name": "get_weather",
            "description": "Get the weather of a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        }
    ]
)
ASKS = {
    "conversations": [{"from": "human", "value": "What is the weather in Beijing today?"}],
    "tools": TOOLS,
    "chosen": 'Action: get_weather\nAction Input: {"city": "Beijing"}\n',
    "rejected": "It is sunny in Beijing today, about 25 degrees.",
}
ANSWERS = {
    "conversations": [
        {"from": "human", "value": "What is the weather in Beijing today?"},
        {"from": "function_call", "value": '{"name": "get_weather", "arguments": {"city": "Beijing"}}'},
        {"from": "observation", "value": '{"city": "Beijing", "temperature": "28C", "weather": "sunny"}'},
    ],
    "tools": TOOLS,
    "chosen": "It is sunny in Beijing today, 28C.",
    "rejected": "28 degrees.",
}


@pytest.fixture(scope="module")
def qwen3_tok():
    tokenizer = build_tokenizer()
    install_template(tokenizer, "qwen3")
    return tokenizer


def pairs(*values):
    items, bad = normalise([RawRecord(v, f"toolcall.jsonl:{i + 1}") for i, v in enumerate(values)], "preference")
    assert bad.count == 0
    return items


def test_a_prompt_may_end_with_a_tool_result():
    asks, answers = pairs(ASKS, ANSWERS)
    assert asks.prompt[-1]["role"] == "user" and asks.tools == TOOLS
    assert [m["role"] for m in answers.prompt] == ["user", "assistant", "tool"]
    assert answers.chosen == ({"role": "assistant", "content": "It is sunny in Beijing today, 28C."},)
    assert answers.tools == TOOLS


def test_kto_completion_after_a_tool_result_keeps_its_tools():
    value = {"prompt": ANSWERS["conversations"], "completion": "28 degrees.", "label": False, "tools": TOOLS}
    [item], _ = normalise([RawRecord(value, "k.jsonl:1")], "kto")
    assert item.prompt[-1]["role"] == "tool" and item.tools == TOOLS
    assert kto_row(item)["tools"] == TOOLS  # TRL's KTO trainer renders a row's `tools`


def test_pair_renders_the_tools_as_sft_does(qwen3_tok):
    """Each side is apply_chat_template(prompt + reply, tools=...): the same render as SFT's."""
    _, answers = pairs(ASKS, ANSWERS)
    (example,), report = build_pair_examples(qwen3_tok, [answers], max_length=1024)
    messages = [*answers.prompt, *answers.chosen]
    expected = qwen3_tok.apply_chat_template(messages, tools=json.loads(TOOLS), tokenize=False)
    assert qwen3_tok.decode(example.chosen.input_ids) == expected
    assert "# Tools" in expected and '"name": "get_weather"' in expected
    assert '<tool_response>\n{"city": "Beijing"' in expected
    supervised = qwen3_tok.decode([t for t, label in zip(example.chosen.input_ids, example.chosen.labels) if label != IGNORE])
    assert supervised == "<think>\n\n</think>\n\nIt is sunny in Beijing today, 28C.<|im_end|>"
    rejected = qwen3_tok.decode([t for t, label in zip(example.rejected.input_ids, example.rejected.labels) if label != IGNORE])
    assert rejected == "<think>\n\n</think>\n\n28 degrees.<|im_end|>"
    assert report.kept == 1


def test_kto_renders_the_tools(qwen3_tok):
    item = Completion(
        ({"role": "user", "content": "Weather in Beijing?"},),
        ({"role": "assistant", "content": "Sunny."},),
        True,
        "k:1",
        TOOLS,
    )
    (example,), _ = build_kto_examples(qwen3_tok, [item], max_length=1024)
    assert "# Tools" in qwen3_tok.decode(example.example.input_ids)


@pytest.mark.parametrize("template,warned", [("qwen3", False), ("chatml", True)])
def test_tools_warned_where_the_template_cannot_render_them(template, warned, tmp_path, caplog):
    """The same rule as SFT: a named template without tool definitions warns, naming those with."""
    path = write_jsonl(tmp_path / "toolcall_dpo.jsonl", [ASKS, ANSWERS])
    tokenizer = copy.deepcopy(build_tokenizer())
    install_template(tokenizer, template)
    data = DataConfig(train=str(path), cache=False, max_length=2048, template=template)
    with caplog.at_level(logging.WARNING, logger="llmft"):
        prepared = prepare_data("dpo", data, tokenizer, seed=0)
    assert len(prepared.train) == 2
    assert ("2 records carry tool definitions" in caplog.text) is warned
    if warned:
        assert "The named template 'chatml' renders no tool definitions; choose one that does (qwen3, llama3.1)" in caplog.text


def test_a_reply_with_a_call_its_result_and_the_answer(qwen3_tok):
    """Qwen3 renders the call turn differently once the answer follows (no empty reasoning block):
    each side is one sequence, so the call is supervised as the whole conversation shows it."""
    [pair] = pairs(
        {
            "prompt": "What is the weather in Beijing today?",
            "tools": TOOLS,
            "chosen": [
                {"role": "assistant", "content": '{"name": "get_weather", "arguments": {"city": "Beijing"}}'},
                {"role": "tool", "content": "sunny"},
                {"role": "assistant", "content": "Sunny."},
            ],
            "rejected": "Rainy.",
        }
    )
    (example,), _ = build_pair_examples(qwen3_tok, [pair], max_length=2048)
    labels = example.chosen.labels
    runs, run = [], []
    for token, label in zip(example.chosen.input_ids + [0], labels + [IGNORE]):
        if label != IGNORE:
            run.append(token)
        elif run:
            runs.append(qwen3_tok.decode(run))
            run = []
    assert runs == [
        '{"name": "get_weather", "arguments": {"city": "Beijing"}}<|im_end|>',
        "<think>\n\n</think>\n\nSunny.<|im_end|>",
    ]
