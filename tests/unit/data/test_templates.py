"""Each named template renders exactly what the model family's own, hand-written template renders."""

from __future__ import annotations

import copy

import pytest

from llmft.data.templates import ALPACA, CHATML, LLAMA3, TEMPLATES, install_template, to_jinja, with_changes
from llmft.data.tokenize import IGNORE, encode_conversation, end_of_turn_ids, turn_end_problem
from llmft.errors import UserError
from tiny import CHATML_TEMPLATE, build_tokenizer

LLAMA3_SPECIAL = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]

# ChatML as Qwen publishes it, without a default system message
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
# Meta-Llama-3-8B-Instruct's template
LLAMA3_REFERENCE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
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
REFERENCES = {"chatml": CHATML_REFERENCE, "llama3": LLAMA3_REFERENCE, "alpaca": ALPACA_REFERENCE}

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
    "prompt": (TURNS[:3], True),
    "prompt+system": ([SYSTEM, *TURNS[:3]], True),
    "first-prompt": (TURNS[:1], True),
    "first-prompt+system": ([SYSTEM, *TURNS[:1]], True),
    "multi-turn+gen-prompt": (TURNS, True),
}


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


@pytest.fixture(scope="module")
def llama_tok():
    tokenizer = build_tokenizer(extra_special=LLAMA3_SPECIAL)
    tokenizer.bos_token = "<|begin_of_text|>"
    return tokenizer


def tokenizer_for(name, tok, llama_tok):
    return llama_tok if name == "llama3" else tok


def render(tokenizer, messages, template, add_generation_prompt):
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt, chat_template=template
    )


def test_every_named_template_has_a_reference():
    assert set(TEMPLATES) == set(REFERENCES) == {"chatml", "llama3", "alpaca"}


@pytest.mark.parametrize("conversation", list(CONVERSATIONS))
@pytest.mark.parametrize("name", list(REFERENCES))
def test_template_matches_reference(name, conversation, tok, llama_tok):
    messages, add_generation_prompt = CONVERSATIONS[conversation]
    tokenizer = tokenizer_for(name, tok, llama_tok)
    ours = render(tokenizer, messages, to_jinja(TEMPLATES[name]), add_generation_prompt)
    reference = render(tokenizer, messages, REFERENCES[name], add_generation_prompt)
    assert ours == reference


def test_chatml_with_default_system_matches_qwen2(tok):
    row = with_changes(CHATML, default_system="You are a helpful assistant.")
    for messages, add_generation_prompt in CONVERSATIONS.values():
        ours = render(tok, messages, to_jinja(row), add_generation_prompt)
        assert ours == render(tok, messages, QWEN2_REFERENCE, add_generation_prompt)


def test_rendered_text_spelled_out(tok, llama_tok):
    """The references above are themselves checked against literal text once."""
    messages = [SYSTEM, *TURNS[:2]]
    assert render(tok, messages, to_jinja(CHATML), False) == (
        "<|im_start|>system\nYou are a poet.<|im_end|>\n"
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
        "<|im_start|>assistant\nThe capital of France is Paris.<|im_end|>\n"
    )
    assert render(llama_tok, TURNS[:1], to_jinja(LLAMA3), True) == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nWhat is the capital of France?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert render(tok, TURNS[:2], to_jinja(ALPACA), False) == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
        "\n\n### Instruction:\nWhat is the capital of France?\n\n"
        "### Response:\nThe capital of France is Paris.<|im_end|>\n\n"
    )


def test_templates_with_jinja_sensitive_text_render_literally(tok):
    """Quotes, backslashes and braces in a row's text are data, not jinja."""
    row = with_changes(ALPACA, default_system="It's {{ not }} a \\ \"template\".")
    text = render(tok, TURNS[:1], to_jinja(row), False)
    assert text.startswith("It's {{ not }} a \\ \"template\".\n\n### Instruction:\n")


# --- install_template --------------------------------------------------------------------


def test_install_named_template(tok):
    tokenizer = copy.deepcopy(tok)
    message = install_template(tokenizer, "chatml")
    assert tokenizer.chat_template == to_jinja(CHATML)
    assert "chatml" in message


def test_install_refuses_template_with_missing_special_tokens(tok):
    tokenizer = copy.deepcopy(tok)
    with pytest.raises(UserError) as info:
        install_template(tokenizer, "llama3")
    message = str(info.value)
    assert message.startswith("data.template:")
    assert "'llama3'" in message and "<|end_header_id|>" in message
    assert tokenizer.chat_template == CHATML_TEMPLATE  # left as it was


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
    labels = encode_conversation(tokenizer, TURNS[:2], mask_prompt=True).labels
    assert tokenizer.decode([t for t in labels if t != IGNORE]) == "The capital of France is Paris."
    problem = turn_end_problem(tokenizer)
    assert problem is not None and "data.template" in problem
    assert end_of_turn_ids(tokenizer) == [tok.eos_token_id]


def test_end_of_turn_property():
    assert CHATML.end_of_turn == "<|im_end|>"
    assert LLAMA3.end_of_turn == "<|eot_id|>"
    assert ALPACA.end_of_turn == "{eos}"
