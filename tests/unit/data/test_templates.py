"""Each named template renders exactly what the model family's own, hand-written template renders.

The references below are written as each family publishes its template (the tokenizer_config.json
`chat_template`, or the reference code's prompt format where a family ships none). Where llmft
deviates on purpose, the reference is the official one with that deviation patched in (and a test
pins the exact difference against the unpatched official template).
"""

from __future__ import annotations

import copy
import re
import typing
from pathlib import Path

import pytest
from jinja2.exceptions import TemplateError
from tiny import CHATML_TEMPLATE, build_tokenizer

from llmft.config.data import TemplateName
from llmft.data.templates import ALPACA, CHATML, LLAMA3, QWEN, TEMPLATES, install_template, to_jinja, with_changes
from llmft.data.tokenize import IGNORE, encode_conversation, end_of_turn_ids, turn_end_problem
from llmft.errors import UserError


def patched(official: str, old: str, new: str) -> str:
    """`official` with one deviation patched in; the text replaced must occur exactly once."""
    assert official.count(old) == 1, old
    return official.replace(old, new)


# --- references, as the families publish them ----------------------------------------------

# ChatML as Qwen publishes it, without a default system message (any role renders as a turn)
CHATML_REFERENCE = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# Qwen2-Instruct's template, default system message included
QWEN2_REFERENCE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# meta-llama/Llama-2-7b-chat-hf's template
LLAMA2_REFERENCE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}"
    "{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}"
    "{% endfor %}"
)
# Meta-Llama-3-8B-Instruct's template (any role renders as a header turn)
LLAMA3_REFERENCE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
# mistralai's "v1" template (Mistral-7B-Instruct-v0.1/v0.2, Mixtral-8x7B-Instruct) with a system prompt
MISTRAL_REFERENCE = """{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}

{{- bos_token }}
{%- for message in loop_messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('After the optional system message, conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {%- if message['role'] == 'user' %}
        {%- if loop.first and system_message is defined %}
            {{- ' [INST] ' + system_message + '\\n\\n' + message['content'] + ' [/INST]' }}
        {%- else %}
            {{- ' [INST] ' + message['content'] + ' [/INST]' }}
        {%- endif %}
    {%- elif message['role'] == 'assistant' %}
        {{- ' ' + message['content'] + eos_token}}
    {%- else %}
        {{- raise_exception('Only user and assistant roles are supported, with the exception of an initial optional system message!') }}
    {%- endif %}
{%- endfor %}
"""
# FastChat's `vicuna_v1.1` conversation (ADD_COLON_TWO, sep " ", sep2 "</s>"): system + " ", then
# "ROLE: message" + sep/sep2 alternately, "ASSISTANT:" to prompt; plus the BOS the Llama tokenizer
# puts in front when FastChat tokenizes the prompt.
VICUNA_REFERENCE = (
    "{% if messages[0]['role'] == 'system' %}{% set system_message = messages[0]['content'] %}"
    "{% set loop_messages = messages[1:] %}"
    "{% else %}{% set system_message = 'A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user\\'s questions.' %}"
    "{% set loop_messages = messages %}{% endif %}"
    "{{ bos_token + system_message + ' ' }}"
    "{% for message in loop_messages %}"
    "{% if message['role'] == 'user' %}{{ 'USER: ' + message['content'] + ' ' }}"
    "{% elif message['role'] == 'assistant' %}{{ 'ASSISTANT: ' + message['content'] + '</s>' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
# Stanford Alpaca's prompt, as chat templates carry it (LLaMA-Factory's `alpaca`): the default
# system line, ### Instruction / ### Response blocks, EOS after each response
ALPACA_REFERENCE = (
    "{% if messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] %}"
    "{% set loop_messages = messages[1:] %}"
    "{% else %}{% set system = 'Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.' %}"
    "{% set loop_messages = messages %}{% endif %}"
    "{{ system + '\\n\\n' }}"
    "{% for message in loop_messages %}"
    "{% if message['role'] == 'user' %}{{ '### Instruction:\\n' + message['content'] + '\\n\\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ '### Response:\\n' + message['content'] + eos_token + '\\n\\n' }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '### Response:\\n' }}{% endif %}"
)
# Baichuan2-Chat's generation_utils.build_chat_input: the system text unmarked, user_token_id
# <reserved_106> before each user message, assistant_token_id <reserved_107> before each reply and
# as the generation prompt
BAICHUAN2_OFFICIAL = (
    "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}{% set loop_messages = messages[1:] %}"
    "{% else %}{% set loop_messages = messages %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if message['role'] == 'user' %}{{ '<reserved_106>' + message['content'] }}"
    "{% elif message['role'] == 'assistant' %}{{ '<reserved_107>' + message['content'] }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<reserved_107>' }}{% endif %}"
)
# llmft: EOS closes each reply (the official prompt has no end marker)
BAICHUAN2_REFERENCE = patched(
    BAICHUAN2_OFFICIAL, "'<reserved_107>' + message['content'] }}", "'<reserved_107>' + message['content'] + eos_token }}"
)
# THUDM/chatglm3-6b tokenizer_config.json (any role renders as <|role|>)
CHATGLM3_OFFICIAL = (
    "{% for message in messages %}{% if loop.first %}[gMASK]sop<|{{ message['role'] }}|>\n {{ message['content'] }}"
    "{% else %}<|{{ message['role'] }}|>\n {{ message['content'] }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
# llmft: EOS closes each reply (the official template has no end marker)
CHATGLM3_REFERENCE = patched(
    CHATGLM3_OFFICIAL,
    "{% endif %}{% endfor %}",
    "{% endif %}{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}{% endfor %}",
)
# microsoft/Phi-3-mini-4k-instruct's template
PHI3_OFFICIAL = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{'<|system|>\\n' + message['content'] + '<|end|>\\n'}}"
    "{% elif message['role'] == 'user' %}{{'<|user|>\\n' + message['content'] + '<|end|>\\n'}}"
    "{% elif message['role'] == 'assistant' %}{{'<|assistant|>\\n' + message['content'] + '<|end|>\\n'}}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% else %}{{ eos_token }}{% endif %}"
)
# llmft: no EOS at the end of a conversation rendered without the generation prompt (it is not
# there once the conversation goes on, so the official template is not prefix-stable)
PHI3_REFERENCE = patched(PHI3_OFFICIAL, "{% else %}{{ eos_token }}{% endif %}", "{% endif %}")
# google/gemma-3-*-it's template (text content): the system prompt opens the first user turn
GEMMA_REFERENCE = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\\n'}}
{%- endif -%}
"""
# LLaMA-Factory's `default` slots: "System: {{content}}" eos "\n"; "Human: {{content}}" eos
# "\nAssistant:"; "{{content}}" eos "\n". The "Assistant:" LLaMA-Factory appends to a user turn is
# written here where Hugging Face templates put it: before the reply, and as the generation prompt.
DEFAULT_REFERENCE = (
    "{% if messages[0]['role'] == 'system' %}{{ 'System: ' + messages[0]['content'] + eos_token + '\\n' }}"
    "{% set loop_messages = messages[1:] %}{% else %}{% set loop_messages = messages %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if message['role'] == 'user' %}{{ 'Human: ' + message['content'] + eos_token + '\\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ 'Assistant:' + message['content'] + eos_token + '\\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
# The families published as files: tests/data/templates/*.jinja (sources in SOURCES.md); the
# families' own cases (reasoning, tools) are in test_templates_families.py.
VENDORED = {path.stem: path.read_text() for path in (Path(__file__).parents[2] / "data" / "templates").glob("*.jinja")}
# llmft: with no system message, no [SYSTEM_PROMPT] block (the official default names today's date)
MISTRAL_V7_REFERENCE = patched(
    patched(VENDORED["mistral-v7"], "    {%- set system_message = default_system_message %}\n", ""),
    "{{- '[SYSTEM_PROMPT]' + system_message + '[/SYSTEM_PROMPT]' }}",
    "{%- if system_message is defined %}{{- '[SYSTEM_PROMPT]' + system_message + '[/SYSTEM_PROMPT]' }}{%- endif %}",
)
# llmft: the last reply keeps its reasoning block (empty here), as the model writes it after the
# generation prompt `<｜Assistant｜><think>\n`
DEEPSEEK_R1_REFERENCE = patched(
    VENDORED["deepseek-r1"],
    "{{'<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>'}}",
    "{{'<｜Assistant｜>' + ('<think>\\n\\n</think>\\n\\n' if loop.last else '') + content + '<｜end▁of▁sentence｜>'}}",
)
REFERENCES = {
    "qwen3": VENDORED["qwen3"],
    "llama3.1": VENDORED["llama3.1"],
    "gemma3": VENDORED["gemma3"],
    "mistral-v7": MISTRAL_V7_REFERENCE,
    "deepseek-r1": DEEPSEEK_R1_REFERENCE,
    "chatml": CHATML_REFERENCE,
    "qwen": QWEN2_REFERENCE,
    "llama2": LLAMA2_REFERENCE,
    "llama3": LLAMA3_REFERENCE,
    "mistral": MISTRAL_REFERENCE,
    "vicuna": VICUNA_REFERENCE,
    "alpaca": ALPACA_REFERENCE,
    "baichuan2": BAICHUAN2_REFERENCE,
    "chatglm3": CHATGLM3_REFERENCE,
    "phi3": PHI3_REFERENCE,
    "gemma": GEMMA_REFERENCE,
    "default": DEFAULT_REFERENCE,
}
# the role the family's own template gives a tool result; absent: the family has none
TOOL_ROLE = {
    "chatml": "tool",
    "qwen": "tool",
    "qwen3": "tool",
    "llama3": "ipython",
    "llama3.1": "ipython",
    "chatglm3": "observation",
}
# the token that ends an assistant turn, spelled out per template (on the tokenizers below)
END_TOKEN = {
    "qwen3": "<|im_end|>",
    "llama3.1": "<|eot_id|>",
    "deepseek-r1": "<｜end▁of▁sentence｜>",
    "gemma3": "<end_of_turn>",
    "mistral-v7": "</s>",
    "chatml": "<|im_end|>",
    "qwen": "<|im_end|>",
    "llama2": "</s>",
    "llama3": "<|eot_id|>",
    "mistral": "</s>",
    "vicuna": "</s>",
    "alpaca": "<|im_end|>",  # EOS, which is <|im_end|> on the tiny ChatML tokenizer
    "baichuan2": "</s>",
    "chatglm3": "</s>",
    "phi3": "<|end|>",
    "gemma": "<end_of_turn>",
    "default": "</s>",
}

# --- tokenizers carrying each family's special tokens ----------------------------------------

# family: (extra special tokens, bos, eos); None keeps the tiny tokenizer's
FAMILIES = {
    "chatml": ([], None, None),
    "llama3": (["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"], "<|begin_of_text|>", None),
    "llama": (["<s>", "</s>"], "<s>", "</s>"),
    "baichuan2": (["<s>", "</s>", "<reserved_106>", "<reserved_107>"], "<s>", "</s>"),
    "chatglm3": (["</s>", "[gMASK]", "sop", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"], None, "</s>"),
    "phi3": (["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"], None, "<|endoftext|>"),
    "gemma": (["<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"], "<bos>", "<eos>"),
    "deepseek": (
        ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>"],
        "<｜begin▁of▁sentence｜>",
        "<｜end▁of▁sentence｜>",
    ),
    "mistral-v7": (["<s>", "</s>", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[INST]", "[/INST]"], "<s>", "</s>"),
}
FAMILY = {
    "qwen3": "chatml",
    "llama3.1": "llama3",
    "deepseek-r1": "deepseek",
    "gemma3": "gemma",
    "mistral-v7": "mistral-v7",
    "chatml": "chatml",
    "qwen": "chatml",
    "alpaca": "chatml",
    "llama3": "llama3",
    "llama2": "llama",
    "mistral": "llama",
    "vicuna": "llama",
    "default": "llama",
    "baichuan2": "baichuan2",
    "chatglm3": "chatglm3",
    "phi3": "phi3",
    "gemma": "gemma",
}


@pytest.fixture(scope="module")
def family_tokenizers():
    built = {}
    for family, (extra, bos, eos) in FAMILIES.items():
        tokenizer = build_tokenizer(extra_special=extra)
        if bos:
            tokenizer.bos_token = bos
        if eos:
            tokenizer.eos_token = eos
        built[family] = tokenizer
    return built


@pytest.fixture(scope="module")
def tok(family_tokenizers):
    return family_tokenizers["chatml"]


@pytest.fixture(scope="module")
def llama_tok(family_tokenizers):
    return family_tokenizers["llama3"]


@pytest.fixture(scope="module")
def installed(family_tokenizers):
    """name -> a copy of the family's tokenizer with the named template installed."""
    out = {}
    for name in TEMPLATES:
        tokenizer = copy.deepcopy(family_tokenizers[FAMILY[name]])
        install_template(tokenizer, name)
        out[name] = tokenizer
    return out


# --- conversations -----------------------------------------------------------------------

TURNS = [
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "The capital of France is Paris."},
    {"role": "user", "content": "Translate to French: good morning"},
    {"role": "assistant", "content": "bonjour"},
]
SYSTEM = {"role": "system", "content": "You are a poet."}
CONVERSATIONS = {
    "multi-turn": (TURNS, False),
    "multi-turn+system": ([SYSTEM, *TURNS], False),
    "single-turn": (TURNS[:2], False),
    "single-turn+system": ([SYSTEM, *TURNS[:2]], False),
    "prompt": (TURNS[:3], True),
    "prompt+system": ([SYSTEM, *TURNS[:3]], True),
    "first-prompt": (TURNS[:1], True),
    "first-prompt+system": ([SYSTEM, *TURNS[:1]], True),
    "first-prompt-no-gen": (TURNS[:1], False),
    "multi-turn+gen-prompt": (TURNS, True),
}
TOOL_TURNS = [
    {"role": "user", "content": "What is the weather in Paris?"},
    {"role": "assistant", "content": '{"name": "weather", "arguments": {"city": "Paris"}}'},
    {"role": "tool", "content": '{"temperature": 21}'},
    {"role": "assistant", "content": "It is 21 degrees in Paris."},
]
TOOL_CONVERSATIONS = {
    "tool": (TOOL_TURNS, False),
    "tool+system": ([SYSTEM, *TOOL_TURNS], False),
    "tool-result-prompt": (TOOL_TURNS[:3], True),
}


def render(tokenizer, messages, template, add_generation_prompt):
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt, chat_template=template
    )


def supervised_runs(tokenizer, messages):
    """Each contiguous run of supervised tokens, decoded."""
    labels = encode_conversation(tokenizer, messages).labels
    runs, run = [], []
    for label in labels + [IGNORE]:
        if label != IGNORE:
            run.append(label)
        elif run:
            runs.append(tokenizer.decode(run))
            run = []
    return runs


# --- the set of templates ----------------------------------------------------------------


def test_every_recipe_template_name_exists():
    """`data.template` accepts exactly the names llmft has rows for."""
    assert set(typing.get_args(TemplateName)) == set(TEMPLATES)


def test_every_named_template_has_a_reference():
    assert set(TEMPLATES) == set(REFERENCES) == set(END_TOKEN) == set(FAMILY)
    assert {
        "chatml",
        "qwen",
        "llama2",
        "llama3",
        "mistral",
        "vicuna",
        "alpaca",
        "baichuan2",
        "chatglm3",
        "phi3",
        "gemma",
        "default",
        "qwen3",
        "deepseek-r1",
        "gemma3",
        "mistral-v7",
        "llama3.1",
    } == set(TEMPLATES)
    assert all(row.name == name for name, row in TEMPLATES.items())


def test_variants_are_rows_with_changed_fields():
    assert with_changes(CHATML, name="qwen", default_system="You are a helpful assistant.") == QWEN
    assert TEMPLATES["mistral"].system_in_user and TEMPLATES["mistral"].generation_prompt == ""


# --- parity with the families' templates --------------------------------------------------


@pytest.mark.parametrize("conversation", list(CONVERSATIONS))
@pytest.mark.parametrize("name", list(REFERENCES))
def test_template_matches_reference(name, conversation, family_tokenizers):
    messages, add_generation_prompt = CONVERSATIONS[conversation]
    tokenizer = family_tokenizers[FAMILY[name]]
    ours = render(tokenizer, messages, to_jinja(TEMPLATES[name]), add_generation_prompt)
    reference = render(tokenizer, messages, REFERENCES[name], add_generation_prompt)
    assert ours == reference


@pytest.mark.parametrize("conversation", list(TOOL_CONVERSATIONS))
@pytest.mark.parametrize("name", list(TOOL_ROLE))
def test_tool_results_match_the_familys_tool_role(name, conversation, family_tokenizers):
    """A `tool` message renders as the family's own template renders its tool-result role."""
    messages, add_generation_prompt = TOOL_CONVERSATIONS[conversation]
    tokenizer = family_tokenizers[FAMILY[name]]
    theirs = [dict(m, role=TOOL_ROLE[name]) if m["role"] == "tool" else m for m in messages]
    ours = render(tokenizer, messages, to_jinja(TEMPLATES[name]), add_generation_prompt)
    assert ours == render(tokenizer, theirs, REFERENCES[name], add_generation_prompt)


def test_tool_role_list_is_the_rows():
    assert {name for name, row in TEMPLATES.items() if row.tool is not None} == set(TOOL_ROLE)


@pytest.mark.parametrize("name", [n for n in TEMPLATES if n not in TOOL_ROLE])
def test_template_without_tool_role_says_so(name, family_tokenizers):
    tokenizer = family_tokenizers[FAMILY[name]]
    with pytest.raises(TemplateError) as info:
        render(tokenizer, TOOL_TURNS, to_jinja(TEMPLATES[name]), False)
    message = str(info.value)
    assert f"data.template {name!r} cannot render a 'tool' message" in message
    assert "chatml, qwen, qwen3, llama3, llama3.1, chatglm3" in message


def test_deviations_from_the_official_templates(family_tokenizers):
    """Exactly what llmft changes: EOS after baichuan2/chatglm3 replies, no trailing EOS for phi3."""
    for name, official in (("baichuan2", BAICHUAN2_OFFICIAL), ("chatglm3", CHATGLM3_OFFICIAL), ("phi3", PHI3_OFFICIAL)):
        tokenizer = family_tokenizers[FAMILY[name]]
        eos = tokenizer.eos_token
        for messages, add_generation_prompt in CONVERSATIONS.values():
            ours = render(tokenizer, messages, to_jinja(TEMPLATES[name]), add_generation_prompt)
            theirs = render(tokenizer, messages, official, add_generation_prompt)
            if name == "phi3":
                assert theirs == (ours if add_generation_prompt else ours + eos)
            else:
                replies = sum(m["role"] == "assistant" for m in messages)
                assert ours.count(eos) == replies and ours.replace(eos, "") == theirs


def test_content_is_rendered_verbatim(family_tokenizers):
    """Official llama2/llama3/gemma templates strip message content; llmft renders it as is."""
    messages = [{"role": "user", "content": "  Hi\n"}, {"role": "assistant", "content": " there "}]
    for name in ("llama2", "llama3", "gemma"):
        tokenizer = family_tokenizers[FAMILY[name]]
        text = render(tokenizer, messages, to_jinja(TEMPLATES[name]), False)
        assert "  Hi\n" in text and " there " in text
        stripped = [dict(m, content=m["content"].strip()) for m in messages]
        assert render(tokenizer, stripped, to_jinja(TEMPLATES[name]), False) == render(
            tokenizer, messages, REFERENCES[name], False
        )


def test_chatml_with_default_system_matches_qwen2(tok):
    row = with_changes(CHATML, default_system="You are a helpful assistant.")
    for messages, add_generation_prompt in CONVERSATIONS.values():
        ours = render(tok, messages, to_jinja(row), add_generation_prompt)
        assert ours == render(tok, messages, QWEN2_REFERENCE, add_generation_prompt)


def test_rendered_text_spelled_out(family_tokenizers):
    """The references above are themselves checked against literal text once per family."""
    t = family_tokenizers
    messages = [SYSTEM, *TURNS[:2]]
    q, a = TURNS[0]["content"], TURNS[1]["content"]

    def ours(name, messages, add_generation_prompt=False):
        return render(t[FAMILY[name]], messages, to_jinja(TEMPLATES[name]), add_generation_prompt)

    assert ours("chatml", messages) == (
        f"<|im_start|>system\nYou are a poet.<|im_end|>\n<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n{a}<|im_end|>\n"
    )
    assert ours("qwen", TURNS[:1], True) == (
        f"<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n"
    )
    assert ours("llama3", TURNS[:1], True) == (
        f"<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n{q}<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert ours("llama2", [SYSTEM, *TURNS[:3]], True) == (
        f"<s>[INST] <<SYS>>\nYou are a poet.\n<</SYS>>\n\n{q} [/INST] {a} </s><s>[INST] Translate to French: good morning [/INST]"
    )
    assert ours("mistral", messages) == f"<s> [INST] You are a poet.\n\n{q} [/INST] {a}</s>"
    assert ours("vicuna", TURNS[:1], True) == (
        "<s>A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
        f"detailed, and polite answers to the user's questions. USER: {q} ASSISTANT:"
    )
    assert ours("alpaca", TURNS[:2]) == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
        f"\n\n### Instruction:\n{q}\n\n### Response:\n{a}<|im_end|>\n\n"
    )
    assert ours("baichuan2", messages) == f"You are a poet.<reserved_106>{q}<reserved_107>{a}</s>"
    assert ours("chatglm3", messages) == f"[gMASK]sop<|system|>\n You are a poet.<|user|>\n {q}<|assistant|>\n {a}</s>"
    assert ours("phi3", messages) == (f"<|system|>\nYou are a poet.<|end|>\n<|user|>\n{q}<|end|>\n<|assistant|>\n{a}<|end|>\n")
    assert ours("gemma", messages, True) == (
        f"<bos><start_of_turn>user\nYou are a poet.\n\n{q}<end_of_turn>\n<start_of_turn>model\n{a}<end_of_turn>\n"
        "<start_of_turn>model\n"
    )
    assert ours("default", messages) == f"System: You are a poet.</s>\nHuman: {q}</s>\nAssistant:{a}</s>\n"
    assert ours("chatglm3", TOOL_TURNS[:3], True) == (
        "[gMASK]sop<|user|>\n What is the weather in Paris?<|assistant|>\n "
        '{"name": "weather", "arguments": {"city": "Paris"}}</s><|observation|>\n {"temperature": 21}<|assistant|>'
    )
    assert ours("llama3", TOOL_TURNS[2:3]) == (
        '<|begin_of_text|><|start_header_id|>ipython<|end_header_id|>\n\n{"temperature": 21}<|eot_id|>'
    )


def test_templates_with_jinja_sensitive_text_render_literally(tok):
    """Quotes, backslashes and braces in a row's text are data, not jinja."""
    row = with_changes(ALPACA, default_system='It\'s {{ not }} a \\ "template".')
    text = render(tok, TURNS[:1], to_jinja(row), False)
    assert text.startswith('It\'s {{ not }} a \\ "template".\n\n### Instruction:\n')


@pytest.mark.parametrize("name", ["llama2", "mistral", "gemma"])
def test_folded_system_must_come_first_and_be_followed_by_a_user(name, family_tokenizers):
    tokenizer = family_tokenizers[FAMILY[name]]
    template = to_jinja(TEMPLATES[name])
    with pytest.raises(TemplateError, match="a system message can only come first"):
        render(tokenizer, [*TURNS[:2], SYSTEM, *TURNS[2:]], template, False)
    with pytest.raises(TemplateError, match="a user message must come first"):
        render(tokenizer, [SYSTEM, TURNS[1]], template, False)


def test_unknown_role_is_an_error(tok):
    with pytest.raises(TemplateError, match="data.template 'chatml' cannot render a message with the role function"):
        render(tok, [TURNS[0], {"role": "function", "content": "x"}], to_jinja(CHATML), False)


# --- label masks: supervised tokens are the replies and their end-of-turn token ------------

GOLDEN_REPLIES = {
    "llama3.1": ["The capital of France is Paris.<|eot_id|>", "bonjour<|eot_id|>"],
    # reasoning templates: an earlier turn is trained in a segment of its own
    # (test_templates_families.py); here the first segment, the whole conversation, with the last turn
    "qwen3": ["<think>\n\n</think>\n\nbonjour<|im_end|>"],
    "deepseek-r1": ["\n</think>\n\nbonjour<｜end▁of▁sentence｜>"],
    "gemma3": ["The capital of France is Paris.<end_of_turn>", "bonjour<end_of_turn>"],
    "mistral-v7": ["The capital of France is Paris.</s>", "bonjour</s>"],
    "chatml": ["The capital of France is Paris.<|im_end|>", "bonjour<|im_end|>"],
    "qwen": ["The capital of France is Paris.<|im_end|>", "bonjour<|im_end|>"],
    # the generation prompt ends at [/INST] / ASSISTANT: / <|assistant|>, so the separator the
    # family puts before a reply is the model's to write, and supervised
    "llama2": [" The capital of France is Paris. </s>", " bonjour </s>"],
    "mistral": [" The capital of France is Paris.</s>", " bonjour</s>"],
    "vicuna": [" The capital of France is Paris.</s>", " bonjour</s>"],
    "chatglm3": ["\n The capital of France is Paris.</s>", "\n bonjour</s>"],
    "llama3": ["The capital of France is Paris.<|eot_id|>", "bonjour<|eot_id|>"],
    "alpaca": ["The capital of France is Paris.<|im_end|>", "bonjour<|im_end|>"],
    "baichuan2": ["The capital of France is Paris.</s>", "bonjour</s>"],
    "phi3": ["The capital of France is Paris.<|end|>", "bonjour<|end|>"],
    "gemma": ["The capital of France is Paris.<end_of_turn>", "bonjour<end_of_turn>"],
    "default": ["The capital of France is Paris.</s>", "bonjour</s>"],
}


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_label_mask_golden(name, installed):
    tokenizer = installed[name]
    assert supervised_runs(tokenizer, [SYSTEM, *TURNS]) == GOLDEN_REPLIES[name]
    assert supervised_runs(tokenizer, TURNS) == GOLDEN_REPLIES[name]


@pytest.mark.parametrize("name", [n for n in TOOL_ROLE if n != "qwen3"])  # qwen3: test_templates_families.py
def test_label_mask_with_tool_results(name, installed):
    """Tool results are context, never supervised; both assistant turns are."""
    tokenizer = installed[name]
    lead = {"llama2": " ", "chatglm3": "\n "}.get(name, "")
    end = END_TOKEN[name]
    assert supervised_runs(tokenizer, [SYSTEM, *TOOL_TURNS]) == [
        lead + TOOL_TURNS[1]["content"] + end,
        lead + TOOL_TURNS[3]["content"] + end,
    ]


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_turn_ends_with_the_templates_end_token(name, installed):
    tokenizer = installed[name]
    end = tokenizer.convert_tokens_to_ids(END_TOKEN[name])
    assert turn_end_problem(tokenizer) is None
    assert end in end_of_turn_ids(tokenizer)
    assert tokenizer.eos_token_id in end_of_turn_ids(tokenizer)
    assert TEMPLATES[name].end_of_turn.replace("{eos}", tokenizer.eos_token) == END_TOKEN[name]


# --- install_template --------------------------------------------------------------------


def test_install_named_template(tok):
    tokenizer = copy.deepcopy(tok)
    message = install_template(tokenizer, "chatml")
    assert tokenizer.chat_template == to_jinja(CHATML)
    assert "chatml" in message


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_install_every_template_on_its_familys_tokenizer(name, installed):
    assert installed[name].chat_template == to_jinja(TEMPLATES[name])


def test_install_refuses_template_with_missing_special_tokens(tok):
    tokenizer = copy.deepcopy(tok)
    with pytest.raises(UserError) as info:
        install_template(tokenizer, "llama3")
    message = str(info.value)
    assert message.startswith("data.template:")
    assert "'llama3'" in message and "<|end_header_id|>" in message
    assert tokenizer.chat_template == CHATML_TEMPLATE  # left as it was


@pytest.mark.parametrize("name,token", [("gemma", "<end_of_turn>"), ("baichuan2", "<reserved_106>"), ("chatglm3", "[gMASK]")])
def test_install_refuses_tokens_not_of_the_pipe_form(name, token):
    """The family's tokenizer but for one token the row lists in `special_tokens`."""
    extra, bos, eos = FAMILIES[FAMILY[name]]
    tokenizer = build_tokenizer(extra_special=[t for t in extra if t != token])
    tokenizer.bos_token, tokenizer.eos_token = bos or tokenizer.bos_token, eos or tokenizer.eos_token
    with pytest.raises(UserError, match=re.escape(f"{name!r} needs the token {token!r}")):
        install_template(tokenizer, name)


def test_install_refuses_template_needing_a_bos_the_tokenizer_lacks(tok):
    """The tiny ChatML tokenizer has no BOS; llama2 puts one before every [INST]."""
    assert tok.bos_token is None
    tokenizer = copy.deepcopy(tok)
    with pytest.raises(UserError, match=r"^data\.template: 'llama2' uses the tokenizer's BOS token"):
        install_template(tokenizer, "llama2")
    assert tokenizer.chat_template == CHATML_TEMPLATE


def test_install_llama3_on_tokenizer_with_its_tokens(llama_tok):
    tokenizer = copy.deepcopy(llama_tok)
    install_template(tokenizer, "llama3")
    assert tokenizer.chat_template == to_jinja(LLAMA3)


def test_install_none_keeps_the_tokenizers_own(tok):
    tokenizer = copy.deepcopy(tok)
    assert "own" in install_template(tokenizer, None)
    assert tokenizer.chat_template == CHATML_TEMPLATE


def test_install_none_without_chat_template_is_a_user_error(tok):
    tokenizer = copy.deepcopy(tok)
    tokenizer.chat_template = None
    with pytest.raises(UserError, match=r"^data\.template: the tokenizer has no chat_template.*chatml"):
        install_template(tokenizer, None)


# --- end of turn -------------------------------------------------------------------------


def with_template(tokenizer, row):
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.chat_template = to_jinja(row)
    return tokenizer


def test_chatml_turn_ends_with_eos(tok):
    tokenizer = with_template(tok, CHATML)
    assert end_of_turn_ids(tokenizer) == [tok.eos_token_id]
    assert turn_end_problem(tokenizer) is None


def test_alpaca_turn_ends_with_eos(tok):
    tokenizer = with_template(tok, ALPACA)
    assert end_of_turn_ids(tokenizer) == [tok.eos_token_id]
    assert turn_end_problem(tokenizer) is None


def test_llama3_turn_ends_with_eot(llama_tok):
    """<|eot_id|> is a special token of the vocabulary though not the tokenizer's named EOS."""
    tokenizer = with_template(llama_tok, LLAMA3)
    eot = llama_tok.convert_tokens_to_ids("<|eot_id|>")
    assert end_of_turn_ids(tokenizer) == sorted([llama_tok.eos_token_id, eot])
    assert turn_end_problem(tokenizer) is None


def test_turn_ending_in_whitespace_only_is_a_problem(tok):
    row = with_changes(ALPACA, name="no-eos", assistant=("### Response:\n", "\n\n"))
    tokenizer = with_template(tok, row)
    labels = encode_conversation(tokenizer, TURNS[:2]).labels
    assert tokenizer.decode([t for t in labels if t != IGNORE]) == "The capital of France is Paris."
    problem = turn_end_problem(tokenizer)
    assert problem is not None and "data.template" in problem
    assert end_of_turn_ids(tokenizer) == [tok.eos_token_id]


def test_end_of_turn_property():
    assert CHATML.end_of_turn == "<|im_end|>"
    assert LLAMA3.end_of_turn == "<|eot_id|>"
    assert ALPACA.end_of_turn == "{eos}"
    assert TEMPLATES["llama2"].end_of_turn == "{eos}"
    assert TEMPLATES["gemma"].end_of_turn == "<end_of_turn>"
