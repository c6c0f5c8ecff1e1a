"""The README.md of a finished run's directory: what was trained from what, its final metrics, and
how to load it without llmft. It replaces peft's empty model card, and it is where a GGUF base's
one extra argument (`gguf_file=`) is written down for whoever loads the adapter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmft.config.recipe import Recipe
from llmft.modeling.adapters import portable_name
from llmft.rundir import CURVES, RESOLVED_RECIPE

MODEL_CARD = "README.md"

#: The auto class that loads a run's output, by (stage task, has an adapter).
_LOADERS = {
    ("causal_lm", True): ("peft", "AutoPeftModelForCausalLM"),
    ("causal_lm", False): ("transformers", "AutoModelForCausalLM"),
    ("reward", True): ("peft", "AutoPeftModelForSequenceClassification"),
    ("reward", False): ("transformers", "AutoModelForSequenceClassification"),
}


def loading_code(recipe: Recipe, output_dir: Path) -> str:
    """Python that loads the run's output (the model and its tokenizer, with the chat template the
    run trained with) with transformers and peft alone."""
    adapter = (output_dir / "adapter_config.json").is_file()
    package, cls = _LOADERS[(recipe.stage.traits.task, adapter)]
    where = str(output_dir.resolve())
    extra = f", gguf_file={recipe.model.gguf_file!r}" if adapter and recipe.model.gguf_file else ""
    return (
        f"from {package} import {cls}\n"
        "from transformers import AutoTokenizer\n\n"
        f"model = {cls}.from_pretrained({where!r}{extra})\n"
        f"tokenizer = AutoTokenizer.from_pretrained({where!r})\n"
    )


def render(recipe: Recipe, output_dir: Path, metrics: dict[str, Any]) -> str:
    adapter = (output_dir / "adapter_config.json").is_file()
    base = portable_name(recipe.model.path)
    hub_id = base == recipe.model.path and not Path(base).is_absolute()
    front = ["---", "library_name: " + ("peft" if adapter else "transformers"), "tags: [llmft, " + recipe.stage.name + "]"]
    if hub_id:
        front.insert(1, f"base_model: {base}")
    front.append("---")
    what = "a LoRA adapter" if adapter else "the full model"
    lines = [
        *front,
        "",
        f"# {output_dir.resolve().name}",
        "",
        f"Trained by llmft: stage `{recipe.stage.name}`, finetune `{recipe.finetune.mode}`. This directory holds "
        f"{what}, the tokenizer and the chat template it was trained with; `{RESOLVED_RECIPE}` is the whole recipe.",
        "",
        f"- base model: `{base}`" + (f", GGUF file `{recipe.model.gguf_file}`" if recipe.model.gguf_file else ""),
    ]
    if (output_dir / CURVES).is_file():
        lines.append(f"- curves: `{CURVES}`")
    lines += ["", "## Load it", "", "```python", loading_code(recipe, output_dir).rstrip(), "```", ""]
    if adapter and recipe.model.gguf_file:
        lines += [
            "The base is a GGUF file: `gguf_file=` is passed on to the base model, which transformers "
            "de-quantizes to float weights. `llmft merge` writes a standalone model that needs neither.",
            "",
        ]
    if adapter and not hub_id:
        lines += [
            f"`adapter_config.json` names the base by its path on the machine that trained it ({base}); "
            "on another machine, point `base_model_name_or_path` there at your copy of the same model.",
            "",
        ]
    lines += [f"With llmft: `llmft chat --model {output_dir}`, `llmft eval {output_dir} --data HELD_OUT.jsonl`.", ""]
    shown = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if shown:
        lines += ["## Final metrics", "", "| metric | value |", "| --- | --- |"]
        lines += [f"| {k} | {v:.4g} |" for k, v in sorted(shown.items())]
        lines.append("")
    return "\n".join(lines)


def write(recipe: Recipe, output_dir: Path, metrics: dict[str, Any]) -> Path:
    path = output_dir / MODEL_CARD
    path.write_text(render(recipe, output_dir, metrics))
    return path
