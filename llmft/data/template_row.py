"""The shape of a named chat template: a row of data (`templates.py` holds the rows,
`template_jinja.py` turns a row into a Hugging Face chat template).

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
- tool definitions, tool calls and reasoning blocks, where the family has them (the fields say how);
- `special_tokens`: tokens the text uses that must each be one token of the vocabulary (those of
  the form `<|...|>` are found by themselves).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any


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
    # tool definitions (a record's `tools`): this text before and after them, in the system turn
    # after the system prompt and a blank line (`system`, Qwen3) or at the start of the first user
    # message (`first_user`, Llama 3.1); None: the template renders none (warned)
    tool_definitions: tuple[str, str] | None = None
    tool_definitions_in: str = "system"
    tool_definition: tuple[str, str] = ("\n", "")  # around each definition's JSON
    tool_json_indent: int | None = None  # the definitions' JSON indent (None: one line)
    # text the system turn always opens with (Llama 3.1's knowledge and today's date; the system turn
    # is then always written), and what goes before it when tools are given
    system_preamble: str = ""
    tools_preamble: str = ""
    # an assistant message's `tool_calls`: each call `{"name": ..., "arguments": ...}` between these,
    # after the content, `"\n"` before all but a first call with no content before it; None: refused
    tool_call: tuple[str, str] | None = None
    tool_call_arguments: str = "arguments"  # the key the call's arguments go under
    # the call is the whole turn, one per turn, its arguments always JSON (Llama 3.1)
    tool_call_only: bool = False
    tool_result_json: bool = False  # a tool result is written as JSON (Llama 3.1 quotes a string result)
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
