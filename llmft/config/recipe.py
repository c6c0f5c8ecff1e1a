"""The whole recipe; the rules that span more than one section live in `llmft.config.rules`."""

from __future__ import annotations

from pydantic import Field, ValidationInfo, model_validator

from llmft.config import rules
from llmft.config.base import Section
from llmft.config.data import DataConfig
from llmft.config.distributed import DistributedConfig
from llmft.config.finetune import Finetune
from llmft.config.model import ModelConfig
from llmft.config.output import OutputConfig
from llmft.config.stage import Stage
from llmft.config.training import TrainingConfig


class CrossSectionError(ValueError):
    """Several problems, each tied to a dotted path; the loader reports them one by one."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        super().__init__("; ".join(f"{p}: {m}" for p, m in problems))


class Recipe(Section):
    model: ModelConfig = Field(description="Pretrained weights and tokenizer.")
    data: DataConfig = Field(description="Training and evaluation data.")
    finetune: Finetune = Field(description="Which parameters train: full, freeze, lora or qlora.")
    stage: Stage = Field(description="Training objective: pt, sft, rm, dpo, kto, orpo, grpo or ppo.")
    training: TrainingConfig = Field(default_factory=TrainingConfig, description="Optimisation and cadence.")
    distributed: DistributedConfig = Field(default_factory=DistributedConfig, description="Processes and sharding.")
    output: OutputConfig = Field(description="Where results go.")

    @model_validator(mode="after")
    def _cross_section(self, info: ValidationInfo) -> Recipe:
        require_builder = (info.context or {}).get("require_builder", True)
        problems = cross_section_problems(self, require_builder)
        if problems:
            raise CrossSectionError(problems)
        return self

    @property
    def evaluates(self) -> bool:
        """True when the run evaluates: eval data exists and the strategy is not `no`."""
        return self.data.has_eval and self.training.eval_strategy != "no"


def cross_section_problems(recipe: Recipe, require_builder: bool = True) -> list[tuple[str, str]]:
    """Every cross-section problem. `require_builder=False` accepts a (stage, mode) pair outside the
    supported table: for commands that only read the data."""
    stage, finetune, data, training = recipe.stage, recipe.finetune, recipe.data, recipe.training
    problems = rules.supported_pair(stage, finetune) if require_builder else []
    problems += rules.data_for_stage(stage, data)
    problems += rules.streaming_problems(stage, data, training, recipe.distributed)
    problems += stage.own_problems()
    problems += stage.batch_problems(training, recipe.evaluates)
    problems += rules.finetune_for_stage(stage, finetune, recipe.model)
    problems += rules.adapter_variant(stage, finetune, recipe.distributed)
    problems += rules.distributed_for_stage(stage, finetune, training, recipe.distributed)
    problems += rules.training_for_stage(stage, training, recipe.model, recipe.distributed)
    problems += rules.outputs_and_eval(stage, finetune, training, data, recipe.output)
    return problems
