"""What a `--model` argument names — an llmft run directory, an adapter directory, a model directory,
a hub id, or a GGUF file in one of those — and how to load it with the chat template it was trained
with. `llmft chat` and `llmft eval` load models through here."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from llmft.config.model import ModelConfig
from llmft.config.stage import TRAITS
from llmft.errors import UserError
from llmft.rundir import RESOLVED_RECIPE, read_resolved


@dataclass(frozen=True)
class ModelSource:
    base: ModelConfig  # the model whose weights are loaded first
    adapter: Path | None = None  # a LoRA adapter applied on top
    tokenizer: str | None = None  # where the tokenizer (and its chat template) comes from
    template: str | None = None  # a named llmft template to install, if the tokenizer lacks it
    reward: bool = False  # a reward model (a one-score head), not a causal LM

    def describe(self) -> str:
        gguf = f" [{self.base.gguf_file}]" if self.base.gguf_file else ""
        return f"{self.base.path}{gguf}" + (f" + adapter {self.adapter}" if self.adapter else "")


def resolve_source(model: str, gguf_file: str | None = None, template: str | None = None) -> ModelSource:
    """Work out what `model` names: an llmft run, an adapter directory, or a model (dir or hub id)."""
    path = Path(model).expanduser()
    recipe = read_resolved(path)
    has_adapter = (path / "adapter_config.json").is_file()
    if recipe is not None:
        reward = TRAITS.get(recipe.get("stage", {}).get("name"), TRAITS["sft"]).task == "reward"
        if has_adapter:
            return ModelSource(
                ModelConfig(**recipe["model"]), adapter=path, tokenizer=str(path), template=template, reward=reward
            )
        return ModelSource(ModelConfig(path=str(path)), tokenizer=str(path), template=template, reward=reward)
    if has_adapter:
        saved = json.loads((path / "adapter_config.json").read_text())
        base = saved.get("base_model_name_or_path")
        if not base:
            raise UserError(f"--model: {model} is an adapter without base_model_name_or_path")
        tokenizer = str(path) if (path / "tokenizer_config.json").is_file() else None
        reward = saved.get("task_type") == "SEQ_CLS"
        return ModelSource(
            ModelConfig(path=base, gguf_file=gguf_file), adapter=path, tokenizer=tokenizer, template=template, reward=reward
        )
    return ModelSource(ModelConfig(path=model, gguf_file=gguf_file), template=template, reward=_is_classifier(path))


def source_for_base(recipe: Any, run_dir: Path) -> ModelSource:
    """A run's starting model (`model.path`, and `finetune.adapter_path` when it continued one), read
    with the run's own tokenizer (the template and pad token training used)."""
    adapter = getattr(recipe.finetune, "adapter_path", None)
    return ModelSource(recipe.model, adapter=Path(adapter) if adapter else None, tokenizer=str(run_dir))


def _is_classifier(path: Path) -> bool:
    config_file = path / "config.json"
    if not config_file.is_file():
        return False
    architectures = json.loads(config_file.read_text()).get("architectures") or []
    return any(a.endswith("ForSequenceClassification") for a in architectures)


def load_tokenizer_for(source: ModelSource) -> Any:
    """The source's tokenizer with its chat template (the run's own, or `source.template`) and a pad token."""
    from llmft.data.templates import install_template
    from llmft.modeling.load import arrange_pad_token, load_tokenizer

    config = source.base.model_copy(update={"tokenizer": source.tokenizer}) if source.tokenizer else source.base
    tokenizer = load_tokenizer(config)
    install_template(tokenizer, source.template)
    if tokenizer.pad_token is None or tokenizer.pad_token == tokenizer.eos_token:
        arrange_pad_token(tokenizer)
    return tokenizer


def load_causal_lm(source: ModelSource, dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
    """(model, tokenizer) in eval mode: the base with the adapter applied (kept as a peft model, so
    `disable_adapter()` gives the base back for reference log-probs)."""
    from llmft.modeling.load import load_model

    if source.reward:
        raise UserError(f"--model: {source.describe()} is a reward model (a one-score head), not a causal LM")
    tokenizer = load_tokenizer_for(source)
    model = load_model(source.base, dtype, vocab_size=len(tokenizer))
    if source.adapter is not None:
        from llmft.modeling.adapters import load_adapter

        fix = (
            f"Point model.path in {source.adapter}/{RESOLVED_RECIPE} (or base_model_name_or_path in its "
            "adapter_config.json) at the model it was trained on."
        )
        model = load_adapter(model, source.adapter, source.base.describe(), fix=fix)  # refuses another base
    return model.eval().requires_grad_(False), tokenizer
