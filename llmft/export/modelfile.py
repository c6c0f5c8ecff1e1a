"""An Ollama Modelfile for an exported GGUF: `FROM`, the chat template as a Go `TEMPLATE`, its
default system prompt as `SYSTEM`, and `PARAMETER stop` at the turn markers.

The template is derived, not guessed: the model's chat template is matched against llmft's named
templates (`llmft.data.templates`), each row tried with its own default system prompt and with the
one the model's template renders on its own, on conversations with and without a system message,
several turns and the generation prompt; the row must render all of them to the same text. A row
that folds the system prompt into the first user message (llama2, mistral, gemma), or a template
no row matches, gets a Modelfile without TEMPLATE and a note saying it must be written by hand.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from llmft.data.templates import TEMPLATES, TemplateRow, to_jinja

SAMPLES = [
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Bye"},
    ],
]
MARK = "\x00system\x00"


def matching_row(tokenizer: Any) -> TemplateRow | None:
    """The named template (with its default system prompt) that renders like the tokenizer's own."""
    for row in TEMPLATES.values():
        if row.system_in_user:
            continue
        for candidate in {replace(row, default_system=d) for d in (row.default_system, _default_system(tokenizer, row))}:
            if _renders_alike(tokenizer, candidate):
                return candidate
    return None


def modelfile(gguf_name: str, tokenizer: Any, add_bos: bool) -> tuple[str, str | None]:
    """(the Modelfile's text, a note when its TEMPLATE must be written by hand)."""
    row = matching_row(tokenizer)
    lines = [f"FROM ./{gguf_name}"]
    if row is None:
        note = (
            "llmft could not derive an Ollama TEMPLATE from this model's chat template (it matches none of llmft's "
            "named templates that Ollama's Go templates can express); write TEMPLATE by hand from the chat template "
            "stored in the GGUF (tokenizer.chat_template)"
        )
        lines += [f"# {note}"]
        eos = tokenizer.eos_token
        lines += [f"PARAMETER stop {json.dumps(eos)}"] if eos else []
        return "\n".join(lines) + "\n", note
    text = _text(tokenizer, add_bos)
    lines.append(f'TEMPLATE """{go_template(row, text)}"""')
    if row.default_system:
        lines.append(f'SYSTEM """{row.default_system}"""')
    stops = [text(row.end_of_turn).strip(), text(row.user[0]).strip()]
    lines += [f"PARAMETER stop {json.dumps(s)}" for s in dict.fromkeys(stops) if s]
    return "\n".join(lines) + "\n", None


def go_template(row: TemplateRow, text: Any = lambda s: s) -> str:
    """The row as an Ollama Go template: the system prompt, then the messages; an assistant message
    that comes last is left open (continued), otherwise the generation prompt closes the text."""
    tool = f'{{{{ else if eq .Role "tool" }}}}{text(row.tool[0])}{{{{ .Content }}}}{text(row.tool[1])}' if row.tool else ""
    return (
        text(row.start)
        + f"{{{{ if .System }}}}{text(row.system[0])}{{{{ .System }}}}{text(row.system[1])}{{{{ end }}}}"
        + "{{ range $i, $_ := .Messages }}{{ $last := eq (len (slice $.Messages $i)) 1 }}"
        + f'{{{{ if eq .Role "user" }}}}{text(row.user[0])}{{{{ .Content }}}}{text(row.user[1])}'
        + f'{{{{ else if eq .Role "assistant" }}}}{text(row.assistant[0])}{{{{ .Content }}}}'
        + f"{{{{ if not $last }}}}{text(row.assistant[1])}{{{{ end }}}}"
        + tool
        + f'{{{{ end }}}}{{{{ if and (ne .Role "assistant") $last }}}}{text(row.prompt)}{{{{ end }}}}{{{{ end }}}}'
    )


def _text(tokenizer: Any, add_bos: bool) -> Any:
    """A row's text with {bos}/{eos} as the tokenizer's tokens; a leading BOS is left to llama.cpp when it adds one."""

    def text(s: str) -> str:
        if add_bos and s.startswith("{bos}"):
            s = s[len("{bos}") :]
        return s.replace("{bos}", tokenizer.bos_token or "").replace("{eos}", tokenizer.eos_token or "")

    return text


def _render(tokenizer: Any, conversation: list[dict], template: str | None = None, prompt: bool = False) -> str | None:
    try:
        return tokenizer.apply_chat_template(conversation, chat_template=template, tokenize=False, add_generation_prompt=prompt)
    except Exception:  # a template that refuses the conversation: not this one
        return None


def _default_system(tokenizer: Any, row: TemplateRow) -> str | None:
    """The system prompt the tokenizer's template puts in a conversation without one, read in the row's layout."""
    own = _render(tokenizer, SAMPLES[0])
    marked = _render(tokenizer, [{"role": "system", "content": MARK}, *SAMPLES[0]], to_jinja(replace(row, default_system=None)))
    if own is None or marked is None or MARK not in marked:
        return None
    before, after = marked.split(MARK)
    if own.startswith(before) and own.endswith(after) and len(own) > len(before) + len(after):
        return own[len(before) : len(own) - len(after)]
    return None


def _renders_alike(tokenizer: Any, row: TemplateRow) -> bool:
    jinja = to_jinja(row)
    for conversation in SAMPLES:
        for prompt in (False, True):
            probe = conversation[:-1] if prompt and conversation[-1]["role"] == "assistant" else conversation
            own = _render(tokenizer, probe, prompt=prompt)
            if own is None or own != _render(tokenizer, probe, jinja, prompt):
                return False
    return True
