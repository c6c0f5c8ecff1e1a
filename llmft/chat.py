"""`llmft chat`: talk to a trained run, a model directory or a recipe's base model, rendered with
the same chat template that training used."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from llmft.modeling.sources import ModelSource, load_causal_lm, resolve_source

__all__ = ["ChatSession", "ModelSource", "interactive", "resolve_source", "source_from_recipe"]


def source_from_recipe(recipe: Any) -> ModelSource:
    """The base model of a recipe, with the template training would install."""
    return ModelSource(recipe.model, template=recipe.data.template)


class ChatSession:
    def __init__(self, source: ModelSource, max_new_tokens: int = 256, temperature: float = 0.0):
        from llmft.data.tokenize import end_of_turn_ids

        self.model, self.tokenizer = load_causal_lm(source)
        self.stop_ids = end_of_turn_ids(self.tokenizer)
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.history: list[dict[str, str]] = []

    def reply(self, text: str) -> str:
        from llmft.evaluation.generation import generate_one, prompt_ids

        self.history.append({"role": "user", "content": text})
        prompt = prompt_ids(self.tokenizer, self.history)
        answer = generate_one(self.model, self.tokenizer, prompt, self.max_new_tokens, self.temperature).text.strip()
        self.history.append({"role": "assistant", "content": answer})
        return answer

    def reset(self) -> None:
        self.history.clear()


def interactive(session: ChatSession, read: Callable[[str], str] = input, write: Callable[[str], None] = print) -> None:
    write("Chat. /reset clears the history, /exit (or Ctrl-D) leaves.")
    while True:
        try:
            line = read("you> ").strip()
        except EOFError:
            return
        if line in ("/exit", "/quit"):
            return
        if line == "/reset":
            session.reset()
            continue
        if line:
            write("model> " + session.reply(line))
