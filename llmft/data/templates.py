"""Named chat templates, as data. Each row becomes a jinja template installed on the tokenizer,
so training and inference render through the same `apply_chat_template`.

What a row can say is in `template_row.py`; `template_jinja.py` turns it into jinja.

Every row but the reasoning ones (qwen3, deepseek-r1, whose templates strip the reasoning of
earlier turns: `render.reply_segments`) is prefix-stable: a conversation's rendering starts with
the rendering of any prefix of it (with the generation prompt before an assistant turn), which is
how `render.py` finds the assistant spans. Official templates that trim message content or close the conversation with an
extra token are followed except for that; each row says where it deviates.

Tool results use one convention per family, the one its own template documents:
chatml/qwen `<|im_start|>tool\\n...<|im_end|>\\n` (a `tool` turn, as the ChatML/Qwen2 templates
render any role), qwen3 `<tool_response>` blocks in a user turn, llama3/llama3.1 Llama 3.1's
`ipython` turn, chatglm3 its `<|observation|>` turn.
The other families have none and raise.
"""

from __future__ import annotations

import re
from typing import Any

from llmft.data.template_jinja import Alternatives, render_row
from llmft.data.template_row import TemplateRow, with_changes
from llmft.errors import UserError

__all__ = ["TEMPLATES", "TemplateRow", "install_template", "to_jinja", "with_changes"]


# ChatML as OpenAI defined it and Qwen publishes it. Tool results are a `tool` turn.
CHATML = TemplateRow(
    name="chatml",
    system=("<|im_start|>system\n", "<|im_end|>\n"),
    user=("<|im_start|>user\n", "<|im_end|>\n"),
    assistant=("<|im_start|>assistant\n", "<|im_end|>\n"),
    tool=("<|im_start|>tool\n", "<|im_end|>\n"),
)
# Qwen1.5 / Qwen2 Instruct: ChatML with a default system prompt. (Qwen2.5 wraps tool results in
# <tool_response> inside a user turn; llmft keeps ChatML's `tool` turn, as Qwen2's template does.)
QWEN = with_changes(CHATML, name="qwen", default_system="You are a helpful assistant.")
# Llama-2-chat (meta-llama/Llama-2-*-chat-hf). BOS before every [INST]; the system prompt goes into
# the first user message. Deviations: content is not `.strip()`ped (llmft renders data verbatim);
# role alternation is not enforced.
LLAMA2 = TemplateRow(
    name="llama2",
    system=("<<SYS>>\n", "\n<</SYS>>\n\n"),
    system_in_user=True,
    user=("{bos}[INST] ", " [/INST]"),
    assistant=(" ", " {eos}"),
    generation_prompt="",
)
# Mistral-7B-Instruct v0.1/v0.2 and Mixtral-8x7B (mistral-common's "v1" tokenizer template, with the
# system prompt before the first user message). Deviation: role alternation is not enforced.
MISTRAL = with_changes(
    LLAMA2,
    name="mistral",
    start="{bos}",
    system=("", "\n\n"),
    user=(" [INST] ", " [/INST]"),
    assistant=(" ", "{eos}"),
)
# Meta-Llama-3-*-Instruct; tool results as Llama 3.1's `ipython` turn. Deviation: content is not
# `| trim`med.
LLAMA3 = TemplateRow(
    name="llama3",
    start="{bos}",
    system=("<|start_header_id|>system<|end_header_id|>\n\n", "<|eot_id|>"),
    user=("<|start_header_id|>user<|end_header_id|>\n\n", "<|eot_id|>"),
    assistant=("<|start_header_id|>assistant<|end_header_id|>\n\n", "<|eot_id|>"),
    tool=("<|start_header_id|>ipython<|end_header_id|>\n\n", "<|eot_id|>"),
)
# Vicuna v1.1 (FastChat `vicuna_v1.1`: sep " ", sep2 "</s>"), with the BOS the Llama tokenizer adds.
VICUNA = TemplateRow(
    name="vicuna",
    start="{bos}",
    system=("", " "),
    user=("USER: ", " "),
    assistant=("ASSISTANT: ", "{eos}"),
    generation_prompt="ASSISTANT:",
    default_system="A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions.",
)
# Stanford Alpaca's prompt, EOS after each response.
ALPACA = TemplateRow(
    name="alpaca",
    system=("", "\n\n"),
    user=("### Instruction:\n", "\n\n"),
    assistant=("### Response:\n", "{eos}\n\n"),
    default_system="Below is an instruction that describes a task. Write a response that appropriately completes the request.",
)
# Baichuan2-*-Chat (its generation_utils.build_chat_input): the system text unmarked, then
# <reserved_106> user / <reserved_107> assistant. Deviation: EOS after each reply; the official
# prompt has no end marker (Baichuan2's fine-tune.py trains EOS at the end of the conversation).
BAICHUAN2 = TemplateRow(
    name="baichuan2",
    system=("", ""),
    user=("<reserved_106>", ""),
    assistant=("<reserved_107>", "{eos}"),
    special_tokens=("<reserved_106>", "<reserved_107>"),
)
# ChatGLM3-6B (THUDM/chatglm3-6b tokenizer_config.json); tool results as its `observation` turn.
# Deviation: EOS after each reply; the official template has no end marker (the model stops at the
# next <|user|>/<|observation|>; ChatGLM3's fine-tuning appends EOS).
CHATGLM3 = TemplateRow(
    name="chatglm3",
    start="[gMASK]sop",
    system=("<|system|>\n ", ""),
    user=("<|user|>\n ", ""),
    assistant=("<|assistant|>\n ", "{eos}"),
    generation_prompt="<|assistant|>",
    tool=("<|observation|>\n ", ""),
    special_tokens=("[gMASK]", "sop"),
)
# Phi-3-mini-*-instruct. Deviation: the official template ends a conversation rendered without the
# generation prompt with EOS, which no longer follows that turn once the conversation goes on (not
# prefix-stable); llmft leaves it out — each assistant turn still ends with <|end|>.
PHI3 = TemplateRow(
    name="phi3",
    system=("<|system|>\n", "<|end|>\n"),
    user=("<|user|>\n", "<|end|>\n"),
    assistant=("<|assistant|>\n", "<|end|>\n"),
)
# Gemma (the Gemma 3 template: no system role, the system prompt opens the first user message;
# the assistant is `model`). Deviations: content is not `| trim`med; role alternation is not enforced.
GEMMA = TemplateRow(
    name="gemma",
    start="{bos}",
    system=("", "\n\n"),
    system_in_user=True,
    user=("<start_of_turn>user\n", "<end_of_turn>\n"),
    assistant=("<start_of_turn>model\n", "<end_of_turn>\n"),
    special_tokens=("<start_of_turn>", "<end_of_turn>"),
)
# LLaMA-Factory's `default`: System:/Human:/Assistant: lines, EOS after every message.
DEFAULT = TemplateRow(
    name="default",
    system=("System: ", "{eos}\n"),
    user=("Human: ", "{eos}\n"),
    assistant=("Assistant:", "{eos}\n"),
)

# Qwen3 (Qwen/Qwen3-*; tests/data/templates/qwen3.jinja): ChatML with tool definitions in the
# system turn, <tool_call> blocks, tool results as <tool_response> blocks in one user turn, and
# reasoning in <think> blocks, kept only in the turns after the last user message (the last turn
# always shows its block, empty or not). Thinking off: an empty block ends the generation prompt.
QWEN3 = with_changes(
    CHATML,
    name="qwen3",
    tool=("\n<tool_response>\n", "\n</tool_response>"),
    tool_turn=("<|im_start|>user", "<|im_end|>\n"),
    tool_definitions=(
        "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
        "You are provided with function signatures within <tools></tools> XML tags:\n<tools>",
        "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
        '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}'
        "\n</tool_call>",
    ),
    tool_call=("<tool_call>\n", "\n</tool_call>"),
    reasoning=("<think>\n", "\n</think>\n\n"),
    thinking_off="<think>\n\n</think>\n\n",
)
# DeepSeek-R1 (the R1-Distill checkpoints' template; tests/data/templates/deepseek-r1.jinja): BOS and
# the system prompt unmarked, <｜User｜>/<｜Assistant｜>, every reply closed by <｜end▁of▁sentence｜>,
# the generation prompt opens the reasoning (`<think>\n`). Earlier turns lose their reasoning, as in
# the official template; deviation: the last turn keeps it (the official template drops it, so a
# reasoning model could never be trained on it), which is exactly what the model writes after the
# generation prompt. Tool calls are not supported (the official template drops them).
DEEPSEEK_R1 = TemplateRow(
    name="deepseek-r1",
    start="{bos}",
    system=("", ""),
    user=("<｜User｜>", ""),
    assistant=("<｜Assistant｜>", "<｜end▁of▁sentence｜>"),
    generation_prompt="<｜Assistant｜><think>\n",
    reasoning=("<think>\n", "\n</think>\n\n"),
    reasoning_kept="last",
    special_tokens=("<｜User｜>", "<｜Assistant｜>", "<｜end▁of▁sentence｜>"),
)
# Llama 3.1 / 3.2 / 3.3 Instruct (meta-llama/Llama-3.1-8B-Instruct; tests/data/templates/llama3.1.jinja):
# llama3 with the system turn always written (knowledge cutoff and date first; "Environment:
# ipython" when tools are given), tool definitions (indented JSON) at the start of the first user
# message, a tool call as the whole assistant turn (`{"name": ..., "parameters": ...}`, one per turn),
# tool results as an `ipython` turn holding the result as JSON. Deviations: content is not
# `| trim`med; the date is 3.1's fixed "26 Jul 2024" (3.2's template writes today's).
LLAMA31 = with_changes(
    LLAMA3,
    name="llama3.1",
    system_preamble="Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n",
    tools_preamble="Environment: ipython\n",
    tool_definitions=(
        "Given the following functions, please respond with a JSON for a function call with its proper arguments "
        'that best answers the given prompt.\n\nRespond in the format {"name": function name, "parameters": '
        "dictionary of argument name and its value}.Do not use variables.\n\n",
        "",
    ),
    tool_definitions_in="first_user",
    tool_definition=("", "\n\n"),
    tool_json_indent=4,
    tool_call=("", ""),
    tool_call_arguments="parameters",
    tool_call_only=True,
    tool_result_json=True,
)
# Gemma 3 (google/gemma-3-*-it; tests/data/templates/gemma3.jinja): the `gemma` row under its
# family's name.
GEMMA3 = with_changes(GEMMA, name="gemma3")
# Mistral's current format (Mistral-Small-3.1-24B-Instruct-2503, tekken v7; tests/data/templates/
# mistral-v7.jinja): BOS, [SYSTEM_PROMPT]...[/SYSTEM_PROMPT], [INST]...[/INST], EOS after each reply.
# Deviations: with no system message the official template writes a default one naming today's
# date (so it changes every day); llmft writes none. Tool definitions go before the *last* user
# message, which moves as the conversation goes on (not prefix-stable): not rendered (warned).
MISTRAL_V7 = TemplateRow(
    name="mistral-v7",
    start="{bos}",
    system=("[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]"),
    user=("[INST]", "[/INST]"),
    assistant=("", "{eos}"),
    generation_prompt="",
    special_tokens=("[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[INST]", "[/INST]"),
)

TEMPLATES: dict[str, TemplateRow] = {
    row.name: row
    for row in (
        CHATML,
        QWEN,
        QWEN3,
        LLAMA2,
        LLAMA3,
        LLAMA31,
        MISTRAL,
        MISTRAL_V7,
        VICUNA,
        ALPACA,
        BAICHUAN2,
        CHATGLM3,
        PHI3,
        GEMMA,
        GEMMA3,
        DEEPSEEK_R1,
        DEFAULT,
    )
}


def to_jinja(row: TemplateRow) -> str:
    """Render a row as a Hugging Face chat template (a jinja string)."""
    alternatives = Alternatives(
        tool_results=", ".join(name for name, r in TEMPLATES.items() if r.tool is not None),
        tool_calls=", ".join(name for name, r in TEMPLATES.items() if r.tool_call is not None),
    )
    return render_row(row, alternatives)


THINKING_OFF = "{% if enable_thinking is not defined %}{% set enable_thinking = false %}{% endif %}"


def install_template(tokenizer: Any, name: str | None, thinking: bool = True) -> str:
    """Put the chosen template on the tokenizer; return a sentence saying which one is used.
    `thinking` false (data.enable_thinking) makes thinking off the template's default (a caller can
    still pass `enable_thinking`), so the saved tokenizer prompts as training rendered."""
    if name is None:
        if not getattr(tokenizer, "chat_template", None):
            raise UserError(
                f"data.template: the tokenizer has no chat_template; name one of {', '.join(TEMPLATES)} in data.template"
            )
        said = "chat template: the tokenizer's own"
    else:
        row = TEMPLATES[name]
        vocab = tokenizer.get_vocab()
        for marker in _special_markers(row):
            if marker not in vocab:
                raise UserError(
                    f"data.template: {name!r} needs the token {marker!r}, which this tokenizer does not have; "
                    "choose a template made for this model, or leave data.template empty to use the tokenizer's own"
                )
        text = _texts(row)
        for placeholder, attribute in (("{bos}", "bos_token"), ("{eos}", "eos_token")):
            if placeholder in text and not getattr(tokenizer, attribute, None):
                raise UserError(
                    f"data.template: {name!r} uses the tokenizer's {attribute[:3].upper()} token, which this tokenizer "
                    "does not define; choose a template made for this model, or leave data.template empty"
                )
        tokenizer.chat_template = to_jinja(row)
        said = f"chat template: {name!r} (llmft's; saved with the output)"
    if not thinking:
        if "enable_thinking" not in tokenizer.chat_template:
            able = ", ".join(n for n, r in TEMPLATES.items() if r.thinking_off)
            raise UserError(
                "data.enable_thinking: false, but the chat template has no thinking switch (it never reads "
                f"`enable_thinking`); use a template with one ({able}, or a model's own such as Qwen3's), or remove the key"
            )
        if not tokenizer.chat_template.startswith(THINKING_OFF):
            tokenizer.chat_template = THINKING_OFF + tokenizer.chat_template
        said += ", thinking off"
    return said


def _texts(row: TemplateRow) -> str:
    optional = (row.tool, row.tool_turn, row.tool_definitions, row.tool_call, row.reasoning)
    pairs = [row.system, row.user, row.assistant] + [pair for pair in optional if pair]
    return row.start + row.prompt + row.thinking_off + "".join(a + b for a, b in pairs)


def _special_markers(row: TemplateRow) -> list[str]:
    """Tokens the template uses that must each be one token: <|...|> ones and the row's own."""
    return sorted(set(re.findall(r"<\|[^|>]+\|>", _texts(row))) | set(row.special_tokens))
