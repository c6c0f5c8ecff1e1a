"""Named chat templates, as data. Each row becomes a jinja template installed on the tokenizer,
so training and inference render through the same `apply_chat_template`.

A row gives, per role, the text before and after a message's content. `{bos}` and `{eos}`
stand for the tokenizer's BOS and EOS tokens. Beyond that a row can say:

- `start`: text once before the first message (e.g. BOS);
- `default_system`: the system prompt used when a conversation has none;
- `generation_prompt`: what `add_generation_prompt` appends, when it is not the assistant prefix
  (llama2/mistral end the prompt at `[/INST]`; the space before the reply belongs to the reply);
- `system_in_user`: the family has no system turn; `system[0] + prompt + system[1]` is put before
  the first user message's content (llama2's `<<SYS>>`, mistral, gemma);
- `tool`: how a `tool` message (a tool result; ShareGPT's `observation`) is rendered, or None when
  the family has no convention for it: the template then stops with a clear error;
- `special_tokens`: tokens the text uses that must each be one token of the vocabulary (those of
  the form `<|...|>` are found by themselves).

Every row is prefix-stable: a conversation's rendering starts with the rendering of any prefix of
it (with the generation prompt before an assistant turn), which is how `render.py` finds the
assistant spans. Official templates that trim message content or close the conversation with an
extra token are followed except for that; each row says where it deviates.

Tool results use one convention per family, the one its own template documents:
chatml/qwen `<|im_start|>tool\\n...<|im_end|>\\n` (a `tool` turn, as the ChatML/Qwen2 templates
render any role), llama3 Llama 3.1's `ipython` turn, chatglm3 its `<|observation|>` turn.
The other families have none and raise.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

from llmft.errors import UserError


@dataclass(frozen=True)
class TemplateRow:
    name: str
    system: tuple[str, str]
    user: tuple[str, str]
    assistant: tuple[str, str]  # the assistant prefix is also the generation prompt, unless set below
    start: str = ""  # once, before the first message
    default_system: str | None = None  # used when a conversation has no system message
    generation_prompt: str | None = None  # what add_generation_prompt appends; None: the assistant prefix
    system_in_user: bool = False  # no system turn: the system text opens the first user message
    tool: tuple[str, str] | None = None  # tool results; None: the family has no tool role
    special_tokens: tuple[str, ...] = ()  # must be single tokens (besides the <|...|> ones)
    # consecutive tool results share one turn opened/closed by these (Qwen3: a user turn of
    # <tool_response> blocks); None: each result is its own turn (`tool`)
    tool_turn: tuple[str, str] | None = None
    # tool definitions (a record's `tools`), one JSON object per line between these, in the system
    # turn after the system prompt and a blank line; None: the template renders none (warned)
    tool_definitions: tuple[str, str] | None = None
    # an assistant message's `tool_calls`: each call `{"name": ..., "arguments": ...}` between these,
    # after the content, `"\n"` before all but a first call with no content before it; None: refused
    tool_call: tuple[str, str] | None = None
    # an assistant turn's reasoning (`reasoning_content`, or `<think>...</think>` in the content)
    # between these, before the reply; None: the family has no reasoning format
    reasoning: tuple[str, str] | None = None
    # which turns keep their reasoning: `after_last_query` (Qwen3: the turns after the last user
    # message; earlier ones lose it, and the last turn always shows the block, empty or not) or
    # `last` (DeepSeek-R1: only the last turn, which always shows it; an earlier turn's inline
    # reasoning is cut at `</think>` without stripping the newlines after it, as R1's template does)
    reasoning_kept: str = "after_last_query"
    # appended to the generation prompt when thinking is off (`data.enable_thinking: false`)
    thinking_off: str = ""

    @property
    def end_of_turn(self) -> str:
        """What closes an assistant turn (stripped of surrounding whitespace); supervised in SFT."""
        return self.assistant[1].strip()

    @property
    def prompt(self) -> str:
        """The generation prompt."""
        return self.assistant[0] if self.generation_prompt is None else self.generation_prompt


def with_changes(row: TemplateRow, **changes: Any) -> TemplateRow:
    """A variant of a row (e.g. a different default system prompt)."""
    return replace(row, **changes)


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


def _literal(text: str) -> str:
    """A jinja expression for `text`, with {bos}/{eos} as the tokenizer's tokens."""
    parts = []
    for i, chunk in enumerate(text.replace("{eos}", "\0eos_token\0").replace("{bos}", "\0bos_token\0").split("\0")):
        if i % 2:
            parts.append(chunk)
        elif chunk:
            parts.append(repr(chunk))
    return " + ".join(parts) or "''"


def _join(*expressions: str) -> str:
    """`a + b + ...`, leaving out empty literals."""
    return " + ".join(e for e in expressions if e != "''") or "''"


def _wrap(pair: tuple[str, str], content: str = "message['content']") -> str:
    return "{{ " + _join(_literal(pair[0]), content, _literal(pair[1])) + " }}"


def _raise(message: str) -> str:
    return "{{ raise_exception(" + repr(message) + ") }}"


def _reasoning(row: TemplateRow) -> str:
    """Set `shown` to the assistant turn's text: its reasoning taken from `reasoning_content` or
    from a `<think>...</think>` block in the content (split as Qwen3's template splits it), shown
    in the turns the row keeps it in and dropped from the others; `content` is the reply alone."""
    if row.reasoning is None:
        return "{% set shown = content %}"
    opening, closing = (part.strip() for part in row.reasoning)
    kept = "loop.index0 > ns.last_query" if row.reasoning_kept == "after_last_query" else "loop.last"
    # Qwen3 strips the newlines after `</think>` from the reply; DeepSeek-R1 keeps them (in history)
    strip = ".lstrip('\\n')" if row.reasoning_kept == "after_last_query" else ""
    return (
        "{% set reasoning = '' %}"
        "{% if message.reasoning_content is string %}{% set reasoning = message.reasoning_content %}"
        "{% elif " + repr(closing) + " in content %}"
        "{% set reasoning = content.split("
        + repr(closing)
        + ")[0].rstrip('\\n').split("
        + repr(opening)
        + ")[-1].lstrip('\\n') %}"
        "{% set content = content.split(" + repr(closing) + ")[-1]" + strip + " %}{% endif %}"
        "{% set shown = content %}{% if " + kept + " and (loop.last or reasoning) %}"
        "{% set shown = "
        + _join(_literal(row.reasoning[0]), "reasoning.strip('\\n')", _literal(row.reasoning[1]))
        + " + content.lstrip('\\n') %}{% endif %}"
    )


def _last_query(row: TemplateRow) -> str:
    """`ns.last_query`: the index of the last user message that is not a wrapped tool result."""
    wrapped = (
        ""
        if row.tool is None
        else (
            " and not (message['content'].startswith("
            + repr(row.tool[0].strip())
            + ") and message['content'].endswith("
            + repr(row.tool[1].strip())
            + "))"
        )
    )
    return (
        "{% set ns = namespace(last_query=loop_messages | length - 1, found=false) %}"
        "{% for message in loop_messages[::-1] %}"
        "{% if not ns.found and message['role'] == 'user' and message['content'] is string" + wrapped + " %}"
        "{% set ns.found = true %}{% set ns.last_query = loop_messages | length - 1 - loop.index0 %}{% endif %}"
        "{% endfor %}"
    )


def _tool_calls(row: TemplateRow, where: str) -> str:
    if row.tool_call is None:
        return (
            "{% if message.tool_calls %}"
            + _raise(f"{where} cannot render an assistant message's tool_calls; use a template that can (qwen3)")
            + "{% endif %}"
        )
    return (
        "{% for call in message.tool_calls or [] %}"
        "{% if not loop.first or content %}{{ '\\n' }}{% endif %}"
        "{% if call.function is defined %}{% set call = call.function %}{% endif %}"
        "{{ " + _literal(row.tool_call[0] + '{"name": "') + " + call.name + " + _literal('", "arguments": ') + " }}"
        "{% if call.arguments is string %}{{ call.arguments }}{% else %}{{ call.arguments | tojson }}{% endif %}"
        "{{ " + _literal("}" + row.tool_call[1]) + " }}"
        "{% endfor %}"
    )


def _tool_definitions(row: TemplateRow) -> str:
    """The system turn carrying the tool definitions (and the system prompt, when there is one)."""
    assert row.tool_definitions is not None
    return (
        "{% if tools %}{{ " + _literal(row.system[0]) + " }}"
        "{% if messages and messages[0]['role'] == 'system' %}{{ messages[0]['content'] + '\\n\\n' }}{% endif %}"
        "{{ " + _literal(row.tool_definitions[0]) + " }}"
        "{% for tool in tools %}{{ '\\n' + tool | tojson }}{% endfor %}"
        "{{ " + _join(_literal(row.tool_definitions[1]), _literal(row.system[1])) + " }}{% endif %}"
    )


def _tool_result(row: TemplateRow) -> str:
    assert row.tool is not None
    if row.tool_turn is None:
        return _wrap(row.tool)
    return (
        "{% if loop.first or loop_messages[loop.index0 - 1]['role'] != 'tool' %}{{ "
        + _literal(row.tool_turn[0])
        + " }}{% endif %}"
        + _wrap(row.tool)
        + "{% if loop.last or loop_messages[loop.index0 + 1]['role'] != 'tool' %}{{ "
        + _literal(row.tool_turn[1])
        + " }}{% endif %}"
    )


def to_jinja(row: TemplateRow) -> str:
    """Render a row as a Hugging Face chat template (a jinja string)."""
    where = f"data.template {row.name!r}"
    out = []
    if row.system_in_user:
        # the first message, if a system one, is taken out of the loop and opens the first user turn
        out.append(
            "{% if messages and messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] %}"
            "{% set loop_messages = messages[1:] %}{% else %}"
            + ("" if row.default_system is None else "{% set system = " + repr(row.default_system) + " %}")
            + "{% set loop_messages = messages %}{% endif %}"
        )
    else:
        out.append("{% set loop_messages = messages %}")
    if row.start:
        out.append("{{ " + _literal(row.start) + " }}")
    if row.default_system is not None and not row.system_in_user:
        out.append(
            "{% if not messages or messages[0]['role'] != 'system' %}"
            + _wrap(row.system, repr(row.default_system))
            + "{% endif %}"
        )
    if row.tool_definitions is not None:
        out.append(_tool_definitions(row))
    if row.reasoning is not None:
        out.append(_last_query(row))
    out.append("{% for message in loop_messages %}{% set content = message['content'] if message['content'] is string else '' %}")
    if row.system_in_user:
        out.append(
            "{% if loop.first and system is defined and message['role'] != 'user' %}"
            + _raise(f"{where} puts the system prompt into the first user message, so a user message must come first")
            + "{% endif %}"
        )
        folded = (
            "("
            + _join(_literal(row.system[0]), "system", _literal(row.system[1]))
            + " if loop.first and system is defined else '')"
        )
        out.append("{% if message['role'] == 'user' %}" + _wrap(row.user, folded + " + content"))
        out.append(
            "{% elif message['role'] == 'system' %}" + _raise(f"{where} has no system turn: a system message can only come first")
        )
    else:
        skip = " and not (loop.first and tools)" if row.tool_definitions is not None else ""
        out.append("{% if message['role'] == 'system' %}{% if true" + skip + " %}" + _wrap(row.system, "content") + "{% endif %}")
        out.append("{% elif message['role'] == 'user' %}" + _wrap(row.user, "content"))
    out.append(
        "{% elif message['role'] == 'assistant' %}"
        + _reasoning(row)
        + "{{ "
        + _join(_literal(row.assistant[0]), "shown")
        + " }}"
        + _tool_calls(row, where)
        + "{{ "
        + _literal(row.assistant[1])
        + " }}"
    )
    if row.tool is not None:
        out.append("{% elif message['role'] == 'tool' %}" + _tool_result(row))
    else:
        able = ", ".join(name for name, r in TEMPLATES.items() if r.tool is not None)
        out.append(
            "{% elif message['role'] == 'tool' %}"
            + _raise(
                f"{where} cannot render a 'tool' message (a tool result): the model family has no tool role; "
                f"use a template with one ({able}) or leave the tool turns out"
            )
        )
    out.append(
        "{% else %}{{ raise_exception("
        + repr(f"{where} cannot render a message with the role ")
        + " + message['role'] | string) }}"
        "{% endif %}{% endfor %}"
    )
    if row.prompt or row.thinking_off:
        thinking_off = (
            "{% if enable_thinking is defined and enable_thinking is false %}{{ " + _literal(row.thinking_off) + " }}{% endif %}"
            if row.thinking_off
            else ""
        )
        out.append("{% if add_generation_prompt %}{{ " + _literal(row.prompt) + " }}" + thinking_off + "{% endif %}")
    return "".join(out)


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
