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

TEMPLATES: dict[str, TemplateRow] = {
    row.name: row for row in (CHATML, QWEN, LLAMA2, LLAMA3, MISTRAL, VICUNA, ALPACA, BAICHUAN2, CHATGLM3, PHI3, GEMMA, DEFAULT)
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
    out.append("{% for message in loop_messages %}")
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
        out.append("{% if message['role'] == 'user' %}" + _wrap(row.user, folded + " + message['content']"))
        out.append(
            "{% elif message['role'] == 'system' %}" + _raise(f"{where} has no system turn: a system message can only come first")
        )
    else:
        out.append("{% if message['role'] == 'system' %}" + _wrap(row.system))
        out.append("{% elif message['role'] == 'user' %}" + _wrap(row.user))
    out.append("{% elif message['role'] == 'assistant' %}" + _wrap(row.assistant))
    if row.tool is not None:
        out.append("{% elif message['role'] == 'tool' %}" + _wrap(row.tool))
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
    if row.prompt:
        out.append("{% if add_generation_prompt %}{{ " + _literal(row.prompt) + " }}{% endif %}")
    return "".join(out)


def install_template(tokenizer: Any, name: str | None) -> str:
    """Put the chosen template on the tokenizer; return a sentence saying which one is used."""
    if name is None:
        if not getattr(tokenizer, "chat_template", None):
            raise UserError(
                f"data.template: the tokenizer has no chat_template; name one of {', '.join(TEMPLATES)} in data.template"
            )
        return "chat template: the tokenizer's own"
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
    return f"chat template: {name!r} (llmft's; saved with the output)"


def _texts(row: TemplateRow) -> str:
    pairs = [row.system, row.user, row.assistant] + ([row.tool] if row.tool else [])
    return row.start + row.prompt + "".join(a + b for a, b in pairs)


def _special_markers(row: TemplateRow) -> list[str]:
    """Tokens the template uses that must each be one token: <|...|> ones and the row's own."""
    return sorted(set(re.findall(r"<\|[^|>]+\|>", _texts(row))) | set(row.special_tokens))
