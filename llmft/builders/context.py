"""What a builder gets: the recipe, the tokenizer, and the model, loaded when first asked for."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmft.config.finetune import FullFinetune, LoraFinetune, QLoraFinetune
from llmft.config.recipe import Recipe
from llmft.resolve import Resolved

log = logging.getLogger("llmft")


@dataclass
class RunContext:
    recipe: Recipe
    tokenizer: Any
    settings: Resolved  # precision, dtypes and DeepSpeed config, resolved once for this machine
    output_dir: Path
    _model: Any = field(default=None, repr=False)
    #: samples of the base weights the adapter is trained on (`llmft.modeling.fingerprint`), saved with
    #: it; None for full fine-tuning, or before the model is loaded
    base_fingerprint: dict[str, Any] | None = field(default=None, repr=False)
    #: the adapter's A and B as initialised, when they do not start at zero (`finetune.init` pissa,
    #: olora, loftq): the saved adapter is converted with them (`llmft.modeling.moved_base`)
    initial_adapter: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def precision(self) -> str:
        """bf16 | fp16 | fp32, resolved for this machine."""
        return self.settings.precision

    @property
    def task(self) -> str:
        """What the model is loaded as (`llmft.modeling.load.TASKS`): `reward` (a one-score head
        on the checkpoint) for the rm stage, the causal LM itself for every other stage."""
        return self.recipe.stage.traits.task

    @property
    def model(self) -> Any:
        """The pretrained model with the finetune mode applied. Loaded on first use, so a
        builder can read and check its data before paying for the model load."""
        if self._model is None:
            from llmft.modeling.adapters import apply_finetune, count_parameters
            from llmft.modeling.fingerprint import take
            from llmft.modeling.load import load_model
            from llmft.modeling.precision import quantized_compute_dtype
            from llmft.modeling.quantize import bnb_config

            recipe, settings = self.recipe, self.settings
            quantization = None
            if isinstance(recipe.finetune, QLoraFinetune):
                compute = quantized_compute_dtype(recipe.finetune, settings.precision)
                quantization = bnb_config(recipe.finetune, compute, zero3=settings.zero3)
            model = load_model(
                recipe.model, settings.weight_dtype, vocab_size=len(self.tokenizer), task=self.task, quantization=quantization
            )
            model.config.pad_token_id = self.tokenizer.pad_token_id  # a reward head reads the last non-pad token
            if getattr(model, "generation_config", None) is not None:
                model.generation_config.pad_token_id = self.tokenizer.pad_token_id
            if not isinstance(recipe.finetune, FullFinetune):  # an adapter will be saved: record the base under it
                self.base_fingerprint = take(model, recipe.model.describe())
            model = apply_finetune(model, recipe.finetune, task=self.task)
            if isinstance(recipe.finetune, LoraFinetune) and recipe.finetune.saved_as_change:
                from llmft.modeling.moved_base import initial_adapter

                self.initial_adapter = initial_adapter(model)
            trainable, total = count_parameters(model)
            log.info(
                "model: %s (%s weights), finetune %s: %s trainable of %s parameters (%.2f%%)",
                recipe.model.path,
                str(settings.weight_dtype).removeprefix("torch."),
                recipe.finetune.mode,
                f"{trainable:,}",
                f"{total:,}",
                100 * trainable / max(total, 1),
            )
            self._model = model
        return self._model
