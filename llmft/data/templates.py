"""Named chat templates, as data. Each row becomes a jinja template installed on the tokenizer,
so training and inference render through the same `apply_chat_template`.

A row gives, per role, the text before and after a message's content. `{bos}` and `{eos}`
stand for the tokenizer's BOS and EOS tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from llmft.errors import UserError


@dataclass(frozen=True)
class TemplateRow:
    name: str
    system: tuple[str, str]
    user: tuple[str, str]
    assistant: tuple[str, str]  # the assistant prefix is also the generation prompt
    start: str = ""  # once, before the first message
    default_system: str | None = None  # used when a conversation has no system message

    @property
    def end_of_turn(self) -> str:
        """What closes an assistant turn (stripped of trailing whitespace); supervised in SFT."""
        return self.assistant[1].rstrip()


CHATML = TemplateRow(
    name="chatml",
    system=("<|im_start|>system\n", "<|im_end|>\n"),
    user=("<|im_start|>user\n", "<|im_end|>\n"),
    assistant=("<|im_start|>assistant\n", "<|im_end|>\n"),
)
LLAMA3 = TemplateRow(
    name="llama3",
    start="{bos}",
    system=("<|start_header_id|>system<|end_header_id|>\n\n", "<|eot_id|>"),
    user=("<|start_header_id|>user<|end_header_id|>\n\n", "<|eot_id|>"),
    assistant=("<|start_header_id|>assistant<|end_header_id|>\n\n", "<|eot_id|>"),
)
ALPACA = TemplateRow(
    name="alpaca",
    system=("", "\n\n"),
    user=("### Instruction:\n", "\n\n"),
    assistant=("### Response:\n", "{eos}\n\n"),
    default_system="Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.",
)

TEMPLATES: dict[str, TemplateRow] = {row.name: row for row in (CHATML, LLAMA3, ALPACA)}


def _literal(text: str) -> str:
    """A jinja expression for `text`, with {bos}/{eos} as the tokenizer's tokens."""
    parts = []
    for i, chunk in enumerate(text.replace("{eos}", "\0eos_token\0").replace("{bos}", "\0bos_token\0").split("\0")):
        if i % 2:
            parts.append(chunk)
        elif chunk:
            parts.append(repr(chunk))
    return " + ".join(parts) or "''"


def to_jinja(row: TemplateRow) -> str:
    """Render a row as a Hugging Face chat template (a jinja string)."""
    out = []
    if row.start:
        out.append("{{ " + _literal(row.start) + " }}")
    if row.default_system is not None:
        out.append(
            "{% if messages[0]['role'] != 'system' %}{{ "
            + _literal(row.system[0]) + " + " + repr(row.default_system) + " + " + _literal(row.system[1])
            + " }}{% endif %}"
        )
    out.append("{% for message in messages %}")
    for i, role in enumerate(("system", "user", "assistant")):
        prefix, suffix = getattr(row, role)
        keyword = "if" if i == 0 else "elif"
        out.append(
            f"{{% {keyword} message['role'] == '{role}' %}}{{{{ "
            + _literal(prefix) + " + message['content'] + " + _literal(suffix) + " }}"
        )
    out.append("{% endif %}{% endfor %}")
    out.append("{% if add_generation_prompt %}{{ " + _literal(row.assistant[0]) + " }}{% endif %}")
    return "".join(out)


def with_changes(row: TemplateRow, **changes: Any) -> TemplateRow:
    """A variant of a row (e.g. a different default system prompt)."""
    return replace(row, **changes)


def install_template(tokenizer: Any, name: str | None) -> str:
    """Put the chosen template on the tokenizer; return a sentence saying which one is used."""
    if name is None:
        if not getattr(tokenizer, "chat_template", None):
            raise UserError(
                "data.template: the tokenizer has no chat_template; name one of "
                f"{', '.join(TEMPLATES)} in data.template"
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
    tokenizer.chat_template = to_jinja(row)
    return f"chat template: {name!r} (llmft's; saved with the output)"


def _special_markers(row: TemplateRow) -> list[str]:
    """Tokens of the form <|...|> that the template uses; each must be one token."""
    import re

    text = "".join(row.start + "".join(getattr(row, r)[0] + getattr(row, r)[1] for r in ("system", "user", "assistant")))
    return sorted(set(re.findall(r"<\|[^|>]+\|>", text)))
