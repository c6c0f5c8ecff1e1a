"""A template row -> a Hugging Face chat template (jinja). The generated template raises, with a
message naming `data.template`, on what the family cannot render (a tool result, tool calls, a
system message where it has no system turn)."""

from __future__ import annotations

from dataclasses import dataclass

from llmft.data.template_row import TemplateRow


@dataclass(frozen=True)
class Alternatives:
    """The named templates that can render what a row cannot, for its error messages."""

    tool_results: str
    tool_calls: str


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


def _call_json(row: TemplateRow, arguments: str) -> str:
    """`{"name": ..., "<arguments key>": ...}` for `call`, between the row's call markers."""
    return (
        "{{ "
        + _literal(row.tool_call[0] + '{"name": "')  # type: ignore[index]
        + " + call.name + "
        + _literal(f'", "{row.tool_call_arguments}": ')
        + " }}"
        + arguments
        + "{{ "
        + _literal("}" + row.tool_call[1])  # type: ignore[index]
        + " }}"
    )


def _assistant(row: TemplateRow, where: str, alternatives: Alternatives) -> str:
    """An assistant turn: reasoning and content, then its tool calls, then the end of the turn."""
    prefix, suffix = _literal(row.assistant[0]), _literal(row.assistant[1])
    if row.tool_call is None:
        return (
            "{% if message.tool_calls %}"
            + _raise(
                f"{where} cannot render an assistant message's tool_calls; use a template that can ({alternatives.tool_calls})"
            )
            + "{% endif %}"
            + _reasoning(row)
            + "{{ "
            + _join(prefix, "shown", suffix)
            + " }}"
        )
    unwrap = "{% if call.function is defined %}{% set call = call.function %}{% endif %}"
    if row.tool_call_only:  # the call is the turn (Llama 3.1): one call, its arguments always JSON
        return (
            "{% if message.tool_calls %}{% if message.tool_calls | length != 1 %}"
            + _raise(f"{where} renders one tool call per assistant turn")
            + "{% endif %}{% set call = message.tool_calls[0] %}"
            + unwrap
            + "{{ "
            + prefix
            + " }}"
            + _call_json(row, "{{ call.arguments | tojson }}")
            + "{{ "
            + suffix
            + " }}{% else %}"
            + _reasoning(row)
            + "{{ "
            + _join(prefix, "shown", suffix)
            + " }}{% endif %}"
        )
    return (
        _reasoning(row) + "{{ " + _join(prefix, "shown") + " }}"
        "{% for call in message.tool_calls or [] %}"
        "{% if not loop.first or content %}{{ '\\n' }}{% endif %}"
        + unwrap
        + _call_json(
            row, "{% if call.arguments is string %}{{ call.arguments }}{% else %}{{ call.arguments | tojson }}{% endif %}"
        )
        + "{% endfor %}{{ "
        + suffix
        + " }}"
    )


def _definitions(row: TemplateRow) -> str:
    """The tool definitions, one JSON object each between the row's markers."""
    assert row.tool_definitions is not None
    dumped = "tool | tojson" if row.tool_json_indent is None else f"tool | tojson(indent={row.tool_json_indent})"
    return (
        "{{ "
        + _literal(row.tool_definitions[0])
        + " }}{% for tool in tools %}{{ "
        + _join(_literal(row.tool_definition[0]), dumped, _literal(row.tool_definition[1]))
        + " }}{% endfor %}{{ "
        + _literal(row.tool_definitions[1])
        + " }}"
    )


def _opening_system(row: TemplateRow) -> tuple[str, str]:
    """(the system turn written before the loop, when it is; the condition under which the loop
    then skips a leading system message). A row with a preamble always writes one (Llama 3.1); a
    row with tool definitions in the system turn writes one when tools are given (Qwen3)."""
    in_system = row.tool_definitions is not None and row.tool_definitions_in == "system"
    if not (row.system_preamble or in_system):
        return "", "false"
    when = "true" if row.system_preamble else "tools"
    text = (
        "{% if "
        + when
        + " %}{{ "
        + _literal(row.system[0])
        + " }}"
        + ("{% if tools %}{{ " + _literal(row.tools_preamble) + " }}{% endif %}" if row.tools_preamble else "")
        + ("{{ " + _literal(row.system_preamble) + " }}" if row.system_preamble else "")
        + "{% if messages and messages[0]['role'] == 'system' %}{{ messages[0]['content']"
        + (" + ('\\n\\n' if tools else '')" if in_system else "")
        + " }}{% endif %}"
        + ("{% if tools %}" + _definitions(row) + "{% endif %}" if in_system else "")
        + "{{ "
        + _literal(row.system[1])
        + " }}{% endif %}"
    )
    return text, when


def _user(row: TemplateRow) -> str:
    """A user turn; under `tool_definitions_in: first_user` the definitions open the first one."""
    if row.tool_definitions is None or row.tool_definitions_in != "first_user":
        return _wrap(row.user, "content")
    return (
        "{{ "
        + _literal(row.user[0])
        + " }}{% if tools and loop.index0 == first_index %}"
        + _definitions(row)
        + "{% endif %}{{ "
        + _join("content", _literal(row.user[1]))
        + " }}"
    )


def _tool_result(row: TemplateRow) -> str:
    assert row.tool is not None
    content = "message['content'] | tojson" if row.tool_result_json else "message['content']"
    if row.tool_turn is None:
        return _wrap(row.tool, content)
    return (
        "{% if loop.first or loop_messages[loop.index0 - 1]['role'] != 'tool' %}{{ "
        + _literal(row.tool_turn[0])
        + " }}{% endif %}"
        + _wrap(row.tool, content)
        + "{% if loop.last or loop_messages[loop.index0 + 1]['role'] != 'tool' %}{{ "
        + _literal(row.tool_turn[1])
        + " }}{% endif %}"
    )


def render_row(row: TemplateRow, alternatives: Alternatives) -> str:
    """A Hugging Face chat template (a jinja string) rendering conversations as `row` says."""
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
    out.append("{% set first_index = 1 if messages and messages[0]['role'] == 'system' else 0 %}")
    if row.start:
        out.append("{{ " + _literal(row.start) + " }}")
    if row.default_system is not None and not row.system_in_user:
        out.append(
            "{% if not messages or messages[0]['role'] != 'system' %}"
            + _wrap(row.system, repr(row.default_system))
            + "{% endif %}"
        )
    opening, skip_first_system = _opening_system(row)
    out.append(opening)
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
        out.append(
            "{% if message['role'] == 'system' %}{% if not (loop.first and "
            + skip_first_system
            + ") %}"
            + _wrap(row.system, "content")
            + "{% endif %}"
        )
        out.append("{% elif message['role'] == 'user' %}" + _user(row))
    out.append("{% elif message['role'] == 'assistant' %}" + _assistant(row, where, alternatives))
    if row.tool is not None:
        out.append("{% elif message['role'] == 'tool' %}" + _tool_result(row))
    else:
        out.append(
            "{% elif message['role'] == 'tool' %}"
            + _raise(
                f"{where} cannot render a 'tool' message (a tool result): the model family has no tool role; "
                f"use a template with one ({alternatives.tool_results}) or leave the tool turns out"
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
