"""qwen3, deepseek-r1, llama3.1, gemma3 and mistral-v7 against the families' own published templates
(vendored in tests/data/templates/, sources in SOURCES.md), and what their label masks supervise:
reasoning (a field or inline), tool definitions, tool calls and tool results, thinking on/off."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from tiny import build_tokenizer

from llmft.data.formats import Conversation
from llmft.data.render import TemplateMismatch
from llmft.data.templates import TEMPLATES, install_template, to_jinja
from llmft.data.tokenize import IGNORE, build_sft_examples, conversation_segments
from llmft.errors import UserError

OFFICIAL = {path.stem: path.read_text() for path in (Path(__file__).parents[2] / "data" / "templates").glob("*.jinja")}

R1_BOS, R1_EOS = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"
# family tokenizers: (extra special tokens, bos, eos); None keeps the tiny ChatML tokenizer's
TOKENS = {
    "qwen3": ([], None, None),
    "deepseek-r1": ([R1_BOS, R1_EOS, "<｜User｜>", "<｜Assistant｜>"], R1_BOS, R1_EOS),
    "gemma3": (["<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"], "<bos>", "<eos>"),
    "llama3.1": (["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"], "<|begin_of_text|>", None),
    "mistral-v7": (["<s>", "</s>", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[INST]", "[/INST]"], "<s>", "</s>"),
}


@pytest.fixture(scope="module")
def toks():
    """name -> the family's tokenizer with llmft's row installed."""
    out = {}
    for name, (extra, bos, eos) in TOKENS.items():
        tokenizer = build_tokenizer(extra_special=extra)
        tokenizer.bos_token = bos or tokenizer.bos_token
        tokenizer.eos_token = eos or tokenizer.eos_token
        install_template(tokenizer, name)
        out[name] = tokenizer
    return out


def official(tokenizer, name: str, messages: list, generation_prompt: bool = False, **kwargs) -> str:
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=generation_prompt, chat_template=OFFICIAL[name], **kwargs
    )


def ours(tokenizer, messages: list, generation_prompt: bool = False, **kwargs) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt, **kwargs)


def runs(tokenizer, text: str, spans) -> list[str]:
    """The supervised tokens of one segment, as contiguous decoded runs."""
    from llmft.data.tokenize import label_tokens

    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    labels = label_tokens(encoded["input_ids"], encoded["offset_mapping"], spans)
    out, run = [], []
    for label in [*labels, IGNORE]:
        if label != IGNORE:
            run.append(label)
        elif run:
            out.append(tokenizer.decode(run))
            run = []
    return out


def segment_runs(tokenizer, messages, train_on_reasoning=True, tools=None, supervision="all_turns") -> list[list[str]]:
    return [
        runs(tokenizer, text, spans)
        for text, spans in conversation_segments(tokenizer, messages, supervision, tools, train_on_reasoning)
    ]


SYSTEM = {"role": "system", "content": "You are a poet."}
Q1, A1 = {"role": "user", "content": "What is the capital of France?"}, {"role": "assistant", "content": "Paris."}
Q2, A2 = {"role": "user", "content": "And of Italy?"}, {"role": "assistant", "content": "Rome."}
PLAIN = {
    "single": [Q1, A1],
    "system": [SYSTEM, Q1, A1],
    "multi-turn": [SYSTEM, Q1, A1, Q2, A2],
}
# reasoning as a field (`reasoning_content`, as normalised from `thinking` too) and inline
R1 = dict(A1, reasoning_content="France's capital is Paris.")
R2 = {"role": "assistant", "content": "<think>\nItaly's capital is Rome.\n</think>\n\nRome."}
REASONING = [SYSTEM, Q1, R1, Q2, R2]
# tools: definitions, a call, its result, and the answer
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
ASK = {"role": "user", "content": "What is the weather in Paris?"}
CALL = {
    "role": "assistant",
    "content": "",
    "reasoning_content": "I should look it up.",
    "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}],
}
RESULT = {"role": "tool", "content": '{"temperature": 21}'}
ANSWER = {"role": "assistant", "content": "It is 21 degrees in Paris."}
TOOL_CHAT = [SYSTEM, ASK, CALL, RESULT, ANSWER]


# --- parity: llmft's rows render what the families' own templates render --------------------


@pytest.mark.parametrize("name", ["qwen3", "llama3.1", "gemma3", "mistral-v7"])
@pytest.mark.parametrize("conversation", list(PLAIN))
def test_plain_conversations_match_the_official_template(name, conversation, toks):
    tokenizer, messages = toks[name], PLAIN[conversation]
    if name == "mistral-v7" and messages[0]["role"] != "system":
        messages = [SYSTEM, *messages]  # without one the official template writes a dated default (below)
    assert ours(tokenizer, messages) == official(tokenizer, name, messages)
    for k in range(1, len(messages)):  # every prompt, with the generation prompt
        if messages[k - 1]["role"] == "user":
            assert ours(tokenizer, messages[:k], True) == official(tokenizer, name, messages[:k], True)


def test_mistral_v7_writes_no_default_system_prompt(toks):
    """The one deviation: no system message, no [SYSTEM_PROMPT] block (the official one names today's date)."""
    tokenizer = toks["mistral-v7"]
    theirs = official(tokenizer, "mistral-v7", [Q1, A1])
    assert theirs.startswith("<s>[SYSTEM_PROMPT]You are Mistral Small 3") and "The current date is" in theirs
    assert ours(tokenizer, [Q1, A1]) == "<s>[INST]What is the capital of France?[/INST]Paris.</s>"
    assert theirs.endswith(ours(tokenizer, [Q1, A1])[len("<s>") :])


@pytest.mark.parametrize("generation_prompt", [False, True])
@pytest.mark.parametrize(
    "messages",
    [REASONING, REASONING[:4], [*REASONING[:3], {**Q2}, {**R2, "content": "Rome."}], TOOL_CHAT, TOOL_CHAT[:4]],
    ids=["reasoning", "reasoning-prompt", "field-then-plain", "tools", "tool-result-prompt"],
)
def test_qwen3_matches_the_official_template(messages, generation_prompt, toks):
    tokenizer = toks["qwen3"]
    for tools in (None, [WEATHER]):
        for thinking in (True, False):
            kwargs = {"tools": tools, "enable_thinking": thinking}
            assert ours(tokenizer, messages, generation_prompt, **kwargs) == official(
                tokenizer, "qwen3", messages, generation_prompt, **kwargs
            )


def test_qwen3_rendering_spelled_out(toks):
    """The official template's history rule, by hand: the first reply lost its reasoning, the last
    keeps it; tool definitions sit in the system turn; the call follows the reasoning."""
    tokenizer = toks["qwen3"]
    assert ours(tokenizer, REASONING) == (
        "<|im_start|>system\nYou are a poet.<|im_end|>\n"
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
        "<|im_start|>assistant\nParis.<|im_end|>\n"
        "<|im_start|>user\nAnd of Italy?<|im_end|>\n"
        "<|im_start|>assistant\n<think>\nItaly's capital is Rome.\n</think>\n\nRome.<|im_end|>\n"
    )
    text = ours(tokenizer, TOOL_CHAT, tools=[WEATHER])
    assert text.startswith("<|im_start|>system\nYou are a poet.\n\n# Tools\n\n")
    assert json.dumps(WEATHER, ensure_ascii=False) in text
    assert (
        "<|im_start|>assistant\n<think>\nI should look it up.\n</think>\n\n<tool_call>\n"
        '{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>\n'
        '<|im_start|>user\n<tool_response>\n{"temperature": 21}\n</tool_response><|im_end|>\n'
        "<|im_start|>assistant\n<think>\n\n</think>\n\nIt is 21 degrees in Paris.<|im_end|>\n"
    ) in text


LLAMA_CALL = {k: v for k, v in CALL.items() if k != "reasoning_content"}  # Llama 3.1 writes no reasoning
LLAMA_TOOL_CHAT = [SYSTEM, ASK, LLAMA_CALL, RESULT, ANSWER]


@pytest.mark.parametrize("generation_prompt", [False, True])
@pytest.mark.parametrize(
    "messages", [LLAMA_TOOL_CHAT, LLAMA_TOOL_CHAT[:4], LLAMA_TOOL_CHAT[1:]], ids=["tools", "tool-result-prompt", "no-system"]
)
def test_llama3_1_matches_the_official_template(messages, generation_prompt, toks):
    tokenizer = toks["llama3.1"]
    for tools in (None, [WEATHER]):
        assert ours(tokenizer, messages, generation_prompt, tools=tools) == official(
            tokenizer, "llama3.1", messages, generation_prompt, tools=tools
        )


def test_llama3_1_rendering_spelled_out(toks):
    """Tools open the first user message; the call is the whole turn; a string result is quoted JSON."""
    text = ours(toks["llama3.1"], LLAMA_TOOL_CHAT, tools=[WEATHER])
    assert text.startswith(
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nEnvironment: ipython\n"
        "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\nYou are a poet.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nGiven the following functions"
    )
    assert json.dumps(WEATHER, indent=4) + "\n\nWhat is the weather in Paris?<|eot_id|>" in text
    assert text.endswith(
        '<|start_header_id|>assistant<|end_header_id|>\n\n{"name": "get_weather", "parameters": {"city": "Paris"}}<|eot_id|>'
        '<|start_header_id|>ipython<|end_header_id|>\n\n"{\\"temperature\\": 21}"<|eot_id|>'
        "<|start_header_id|>assistant<|end_header_id|>\n\nIt is 21 degrees in Paris.<|eot_id|>"
    )


def test_llama3_1_tool_masks_golden(toks):
    assert segment_runs(toks["llama3.1"], LLAMA_TOOL_CHAT, tools=json.dumps([WEATHER])) == [
        ['{"name": "get_weather", "parameters": {"city": "Paris"}}<|eot_id|>', "It is 21 degrees in Paris.<|eot_id|>"]
    ]


def test_llama3_1_refuses_two_calls_in_one_turn(toks):
    from jinja2.exceptions import TemplateError

    two = dict(LLAMA_CALL, tool_calls=LLAMA_CALL["tool_calls"] * 2)
    with pytest.raises(TemplateError, match="data.template 'llama3.1' renders one tool call per assistant turn"):
        ours(toks["llama3.1"], [ASK, two])


def test_deepseek_r1_prompts_match_the_official_template(toks):
    """Every prompt (what the model sees before it writes) is the official one: earlier replies
    lose their reasoning (field or inline) and the generation prompt opens the reasoning block."""
    tokenizer = toks["deepseek-r1"]
    for messages in (PLAIN["multi-turn"], REASONING, [Q1, R1, Q2, R2]):
        for k in range(1, len(messages)):
            if messages[k - 1]["role"] == "user":
                assert ours(tokenizer, messages[:k], True) == official(tokenizer, "deepseek-r1", messages[:k], True)
    # the official history keeps the newlines after an inline `</think>`
    prompt = [Q1, R2, Q2]
    assert ours(tokenizer, prompt, True) == official(tokenizer, "deepseek-r1", prompt, True)
    assert "<｜Assistant｜>\n\nRome.<｜end▁of▁sentence｜>" in ours(tokenizer, prompt, True)


def test_deepseek_r1_last_turn_is_what_the_model_writes_after_the_official_prompt(toks):
    """The deviation: the official template drops the last reply's reasoning too; llmft renders the
    last turn as the official generation prompt followed by the model's own output."""
    tokenizer = toks["deepseek-r1"]
    for messages, reasoning in (
        (REASONING, "Italy's capital is Rome."),
        ([Q1, A1], ""),
        ([SYSTEM, Q1, R1], R1["reasoning_content"]),
    ):
        prompt = official(tokenizer, "deepseek-r1", messages[:-1], True)
        answer = messages[-1]["content"].split("</think>")[-1].lstrip("\n")
        assert ours(tokenizer, messages) == prompt + reasoning + "\n</think>\n\n" + answer + R1_EOS
        assert official(tokenizer, "deepseek-r1", messages) == prompt.removesuffix("<｜Assistant｜><think>\n") + (
            "<｜Assistant｜>" + messages[-1]["content"].split("</think>")[-1] + R1_EOS
        )


# --- label masks ------------------------------------------------------------------------


def test_qwen3_masks_golden(toks):
    """Hand-worked: each reply with its <|im_end|>; the reasoning block is supervised or not."""
    tokenizer = toks["qwen3"]
    # one turn: the (empty) reasoning block the template writes is the model's to write
    assert segment_runs(tokenizer, [Q1, A1]) == [["<think>\n\n</think>\n\nParis.<|im_end|>"]]
    assert segment_runs(tokenizer, [Q1, A1], train_on_reasoning=False) == [["Paris.<|im_end|>"]]
    # two turns with reasoning: the first is trained in its own segment (the prefix it was written
    # after, its reasoning kept), the last in the whole conversation, where the first lost its reasoning
    assert segment_runs(tokenizer, REASONING) == [
        ["<think>\nItaly's capital is Rome.\n</think>\n\nRome.<|im_end|>"],
        ["<think>\nFrance's capital is Paris.\n</think>\n\nParis.<|im_end|>"],
    ]
    assert segment_runs(tokenizer, REASONING, train_on_reasoning=False) == [["Rome.<|im_end|>"], ["Paris.<|im_end|>"]]
    assert segment_runs(tokenizer, REASONING, supervision="last_turn") == [
        ["<think>\nItaly's capital is Rome.\n</think>\n\nRome.<|im_end|>"]
    ]


def test_qwen3_tool_masks_golden(toks):
    """The call (with its reasoning) and the answer are supervised; the tool result is not."""
    tokenizer = toks["qwen3"]
    tools = json.dumps([WEATHER])
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>'
    assert segment_runs(tokenizer, TOOL_CHAT, tools=tools) == [
        ["<think>\nI should look it up.\n</think>\n\n" + call, "<think>\n\n</think>\n\nIt is 21 degrees in Paris.<|im_end|>"]
    ]
    assert segment_runs(tokenizer, TOOL_CHAT, tools=tools, train_on_reasoning=False) == [
        [call, "It is 21 degrees in Paris.<|im_end|>"]
    ]


def test_segments_are_the_official_renderings_of_each_prefix(toks):
    tokenizer = toks["qwen3"]
    texts = [text for text, _ in conversation_segments(tokenizer, REASONING, "all_turns")]
    assert texts == [official(tokenizer, "qwen3", REASONING), official(tokenizer, "qwen3", REASONING[:3])]


def test_deepseek_r1_masks_golden(toks):
    tokenizer = toks["deepseek-r1"]
    # the generation prompt opens the block, so the reasoning starts the supervised run
    assert segment_runs(tokenizer, REASONING) == [
        ["Italy's capital is Rome.\n</think>\n\nRome." + R1_EOS],
        ["France's capital is Paris.\n</think>\n\nParis." + R1_EOS],
    ]
    assert segment_runs(tokenizer, REASONING, train_on_reasoning=False) == [["Rome." + R1_EOS], ["Paris." + R1_EOS]]


@pytest.mark.parametrize(
    "name,replies",
    [
        ("gemma3", ["Paris.<end_of_turn>", "Rome.<end_of_turn>"]),
        ("mistral-v7", ["Paris.</s>", "Rome.</s>"]),
        ("llama3.1", ["Paris.<|eot_id|>", "Rome.<|eot_id|>"]),
    ],
)
def test_plain_masks_golden(name, replies, toks):
    assert segment_runs(toks[name], PLAIN["multi-turn"]) == [replies]


def test_build_sft_examples_trains_each_rewritten_turn_once(toks):
    """A two-turn reasoning conversation: two examples, counted against one record."""
    tokenizer = toks["qwen3"]
    conversation = Conversation(tuple(REASONING), "r.jsonl:1")
    examples, report = build_sft_examples(tokenizer, [conversation], max_length=512)
    assert report.records == 1 and report.kept == 2
    decoded = [tokenizer.decode(e.input_ids) for e in examples]
    assert decoded == [official(tokenizer, "qwen3", REASONING), official(tokenizer, "qwen3", REASONING[:3])]
    fewer, _ = build_sft_examples(tokenizer, [conversation], max_length=512, train_on_reasoning=False)
    assert sum(t != IGNORE for e in fewer for t in e.labels) < sum(t != IGNORE for e in examples for t in e.labels)


# --- thinking off -----------------------------------------------------------------------


def test_thinking_off_ends_the_prompt_with_an_empty_block(toks):
    tokenizer = copy.deepcopy(toks["qwen3"])
    assert install_template(tokenizer, "qwen3", thinking=False).endswith("thinking off")
    assert ours(tokenizer, [Q1], True).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert ours(tokenizer, [Q1], True) == official(tokenizer, "qwen3", [Q1], True, enable_thinking=False)
    assert ours(tokenizer, [Q1], True, enable_thinking=True) == official(tokenizer, "qwen3", [Q1], True)
    # the empty block is now the prompt's: only the reply is supervised
    assert segment_runs(tokenizer, [Q1, A1]) == [["Paris.<|im_end|>"]]
    # a reply with reasoning cannot follow a prompt that closed the reasoning
    with pytest.raises(TemplateMismatch, match="data.enable_thinking: false"):
        segment_runs(tokenizer, [Q1, R1])


def test_thinking_off_needs_a_template_with_the_switch(toks):
    tokenizer = copy.deepcopy(toks["gemma3"])
    with pytest.raises(UserError, match=r"^data\.enable_thinking: false, but the chat template has no thinking switch.*qwen3"):
        install_template(tokenizer, "gemma3", thinking=False)


def test_thinking_off_on_the_tokenizers_own_template(toks):
    """A model's own template that reads enable_thinking (here the official Qwen3 one)."""
    tokenizer = copy.deepcopy(toks["qwen3"])
    tokenizer.chat_template = OFFICIAL["qwen3"]
    install_template(tokenizer, None, thinking=False)
    assert ours(tokenizer, [Q1], True) == official(tokenizer, "qwen3", [Q1], True, enable_thinking=False)


def test_official_qwen3_template_as_the_tokenizers_own_trains_like_the_row(toks):
    """The history rule is found from the template itself: the tokenizer's own Qwen3 template gives
    the same segments and masks as llmft's row."""
    tokenizer = copy.deepcopy(toks["qwen3"])
    tokenizer.chat_template = OFFICIAL["qwen3"]
    assert segment_runs(tokenizer, REASONING) == segment_runs(toks["qwen3"], REASONING)


def test_rows_without_tool_calls_refuse_them(toks):
    from jinja2.exceptions import TemplateError

    with pytest.raises(TemplateError, match="cannot render an assistant message's tool_calls"):
        ours(toks["gemma3"], [Q1, {"role": "assistant", "content": "", "tool_calls": CALL["tool_calls"]}])


def test_every_new_row_is_a_row():
    for name in TOKENS:
        assert TEMPLATES[name].name == name and to_jinja(TEMPLATES[name])


# --- records: reasoning and tool calls as read, and the data keys end to end -----------------


def test_records_carry_reasoning_and_tool_calls():
    from llmft.data.formats import normalise
    from llmft.data.sources import RawRecord

    value = {
        "messages": [
            {"role": "user", "content": "Q"},
            {"role": "assistant", "content": None, "tool_calls": CALL["tool_calls"], "thinking": "look it up"},
            {"role": "tool", "content": "21"},
            {"role": "assistant", "content": "A", "reasoning_content": "R"},
        ]
    }
    [conversation], _ = normalise([RawRecord(value, "m.jsonl:1")], "messages")
    assert conversation.messages[1] == {
        "role": "assistant",
        "content": "",
        "reasoning_content": "look it up",
        "tool_calls": CALL["tool_calls"],
    }
    assert conversation.messages[3] == {"role": "assistant", "content": "A", "reasoning_content": "R"}
    both = {
        "messages": [
            {"role": "user", "content": "Q"},
            {"role": "assistant", "content": "A", "thinking": "x", "reasoning_content": "y"},
        ]
    }
    with pytest.raises(UserError, match=r"messages\[1\] has both 'reasoning_content' and 'thinking'; keep one"):
        normalise([RawRecord(both, "m.jsonl:2")], "messages")


@pytest.mark.parametrize("train_on_reasoning", [True, False])
def test_train_on_reasoning_through_prepare_data(train_on_reasoning, toks, tmp_path):
    from conftest import write_jsonl

    from llmft.config.data import DataConfig
    from llmft.data.dataset import prepare_data

    rows = [{"messages": [Q1, {"role": "assistant", "content": "Paris.", "thinking": "France's capital is Paris."}]}]
    path = write_jsonl(tmp_path / "reasoning.jsonl", rows)
    data = DataConfig(train=str(path), cache=False, template="qwen3", train_on_reasoning=train_on_reasoning)
    [example] = prepare_data("sft", data, toks["qwen3"], seed=0).train
    supervised = toks["qwen3"].decode([t for t in example.labels if t != IGNORE])
    block = "<think>\nFrance's capital is Paris.\n</think>\n\n"
    assert supervised == (block if train_on_reasoning else "") + "Paris.<|im_end|>"


@pytest.mark.parametrize("thinking", [True, False])
def test_enable_thinking_from_the_recipe(thinking, tiny_model_dir, sft_file, tmp_path):
    """data.enable_thinking reaches the run's tokenizer (and so the saved chat template)."""
    from conftest import make_recipe

    from llmft.config import validate_recipe
    from llmft.modeling.load import prepare_tokenizer

    raw = make_recipe(tiny_model_dir, sft_file, tmp_path / "out", data={"template": "qwen3", "enable_thinking": thinking})
    tokenizer = prepare_tokenizer(validate_recipe(raw))
    prompt = tokenizer.apply_chat_template([Q1], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n") is not thinking
