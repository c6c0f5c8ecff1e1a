"""`llmft chat`: talk to a trained run, a model directory or a recipe's base model, rendered with
the same chat template that training used."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmft.config.model import ModelConfig
from llmft.errors import UserError
from llmft.rundir import RESOLVED_RECIPE, read_resolved


@dataclass(frozen=True)
class ChatSource:
    base: ModelConfig  # the model whose weights are loaded first
    adapter: Path | None = None  # a LoRA adapter applied on top
    tokenizer: str | None = None  # where the tokenizer (and its chat template) comes from
    template: str | None = None  # a named llmft template to install, if the tokenizer lacks it


def resolve_source(model: str, gguf_file: str | None = None) -> ChatSource:
    """Work out what `--model` names: an llmft run, an adapter directory, or a model."""
    path = Path(model).expanduser()
    recipe = read_resolved(path)
    has_adapter = (path / "adapter_config.json").is_file()
    if recipe is not None:
        if has_adapter:
            return ChatSource(ModelConfig(**recipe["model"]), adapter=path, tokenizer=str(path))
        return ChatSource(ModelConfig(path=str(path)), tokenizer=str(path))
    if has_adapter:
        base = json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path")
        if not base:
            raise UserError(f"--model: {model} is an adapter without base_model_name_or_path")
        tokenizer = str(path) if (path / "tokenizer_config.json").is_file() else None
        return ChatSource(ModelConfig(path=base, gguf_file=gguf_file), adapter=path, tokenizer=tokenizer)
    return ChatSource(ModelConfig(path=model, gguf_file=gguf_file))


def source_from_recipe(recipe: Any) -> ChatSource:
    """The base model of a recipe, with the template training would install."""
    return ChatSource(recipe.model, template=recipe.data.template)


class ChatSession:
    def __init__(self, source: ChatSource, max_new_tokens: int = 256, temperature: float = 0.0):
        import torch

        from llmft.data.templates import install_template
        from llmft.data.tokenize import end_of_turn_ids
        from llmft.modeling.load import load_model, load_tokenizer

        tokenizer_cfg = source.base.model_copy(update={"tokenizer": source.tokenizer}) if source.tokenizer else source.base
        self.tokenizer = load_tokenizer(tokenizer_cfg)
        install_template(self.tokenizer, source.template)
        model = load_model(source.base, torch.float32, vocab_size=len(self.tokenizer))
        if source.adapter is not None:
            from llmft.modeling.adapters import load_adapter

            fix = (
                f"Point model.path in {source.adapter}/{RESOLVED_RECIPE} (or base_model_name_or_path in its "
                "adapter_config.json) at the model it was trained on."
            )
            model = load_adapter(model, source.adapter, source.base.describe(), fix=fix)
        self.model = model.eval()
        self.stop_ids = end_of_turn_ids(self.tokenizer)
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.history: list[dict[str, str]] = []

    def reply(self, text: str) -> str:
        import torch

        self.history.append({"role": "user", "content": text})
        inputs = self.tokenizer.apply_chat_template(
            self.history, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        sampling = {"do_sample": True, "temperature": self.temperature} if self.temperature > 0 else {"do_sample": False}
        with torch.no_grad():
            out = self.model.generate(
                **inputs,
                max_new_tokens=self.max_new_tokens,
                eos_token_id=self.stop_ids,
                pad_token_id=self.tokenizer.pad_token_id or self.stop_ids[0],
                **sampling,
            )
        answer = self.tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()
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
