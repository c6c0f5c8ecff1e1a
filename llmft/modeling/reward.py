"""Reward models: what an `rm` run trains on, and loading its output for scoring.

A reward model is the causal LM checkpoint under a one-score sequence-classification head
(`AutoModelForSequenceClassification`, `num_labels=1`, the head named `score`). The score is read
at the last non-pad token; llmft ends every sequence it trains on (and `reward_input_ids` ends
every sequence to score) at the reply's end-of-turn token, so the score is read there, whatever
whitespace the chat template renders after it, and a generated reply that stops at end-of-turn is
scored exactly as training saw it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from llmft.data.tokenize import IGNORE, Example
from llmft.errors import UserError


def through_reply(example: Example) -> list[int]:
    """The example's ids up to and including its last supervised token (the reply's end-of-turn)."""
    last = max((i for i, label in enumerate(example.labels) if label != IGNORE), default=None)
    if last is None:
        raise ValueError("an example without supervised tokens has no reply to score")
    return list(example.input_ids[: last + 1])


def reward_input_ids(tokenizer: Any, prompt: Sequence[dict], reply: Sequence[dict]) -> list[int]:
    """Token ids to score `reply` (assistant message(s)) after `prompt` (messages), rendered with
    the tokenizer's chat template exactly as `rm` training renders them."""
    from llmft.data.pairs import encode_reply

    return through_reply(encode_reply(tokenizer, prompt, reply))


def load_reward_model(path: str, dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
    """Load an `rm` output directory ready for scoring: `model(input_ids, attention_mask).logits[:, 0]`
    is one reward per sequence (right padding with `tokenizer.pad_token_id`).

    A LoRA run's directory (adapter + score head) is applied to the base model named in its
    `recipe.resolved.yaml` (a GGUF base included) and merged; a full run's directory is loaded as
    is. The tokenizer is the run's own (its chat template and pad token). The model is in eval
    mode with gradients off.
    """
    from llmft.config.model import ModelConfig
    from llmft.modeling.load import arrange_pad_token, load_model, load_tokenizer

    directory = Path(path).expanduser()
    if not directory.is_dir():
        raise UserError(f"reward model: directory not found: {path}")
    tokenizer = load_tokenizer(ModelConfig(path=str(directory)))
    if tokenizer.pad_token is None:
        arrange_pad_token(tokenizer)
    adapter_config = directory / "adapter_config.json"
    if adapter_config.is_file():
        model = _adapter_reward_model(directory, adapter_config, dtype, len(tokenizer))
    else:
        _check_reward_config(directory)
        model = load_model(ModelConfig(path=str(directory)), dtype, vocab_size=len(tokenizer), task="reward")
    model.config.pad_token_id = tokenizer.pad_token_id
    model.eval().requires_grad_(False)
    return model, tokenizer


def _adapter_reward_model(directory: Path, adapter_config: Path, dtype: torch.dtype, vocab_size: int) -> Any:
    from llmft.modeling.adapters import load_adapter
    from llmft.modeling.load import load_model
    from llmft.rundir import RESOLVED_RECIPE, base_of

    saved = json.loads(adapter_config.read_text())
    if saved.get("task_type") != "SEQ_CLS" or "score" not in (saved.get("modules_to_save") or []):
        raise UserError(
            f"reward model: {directory} holds a LoRA adapter without a score head (task_type "
            f"{saved.get('task_type')!r}); give the output directory of an rm run"
        )
    base_config = base_of(directory)
    # the trained score head comes with the adapter, next: the base's fresh one is not news
    base = load_model(base_config, dtype, vocab_size=vocab_size, task="reward", head_from_adapter=True)
    fix = f"Point model.path in {directory}/{RESOLVED_RECIPE} at the model the rm run trained on."
    return load_adapter(base, directory, base_config.describe(), fix=fix).merge_and_unload()


def _check_reward_config(directory: Path) -> None:
    """A full model directory must already be a one-score classifier: loading a plain causal LM as
    one would give a randomly initialised head."""
    config_file = directory / "config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    architectures = config.get("architectures") or []
    if not any(a.endswith("ForSequenceClassification") for a in architectures) or _num_labels(config) != 1:
        raise UserError(
            f"reward model: {directory} is not a reward model (architectures {architectures or 'unknown'}, "
            f"{_num_labels(config)} labels); give the output directory of an rm run"
        )


def _num_labels(config: dict[str, Any]) -> int | None:
    if "num_labels" in config:
        return config["num_labels"]
    labels = config.get("id2label")
    return len(labels) if labels else None
