"""The whole recipe, and the rules that span more than one section."""

from __future__ import annotations

from pydantic import Field, ValidationInfo, model_validator

from llmft.config.base import Section
from llmft.config.data import DataConfig
from llmft.config.distributed import DistributedConfig
from llmft.config.finetune import Finetune
from llmft.config.model import ModelConfig
from llmft.config.output import OutputConfig
from llmft.config.stage import Stage
from llmft.config.training import TrainingConfig

#: Data formats each stage can train on ("auto" is checked once the data is read).
CONVERSATION_FORMATS = ("alpaca", "sharegpt", "messages", "csv")
STAGE_FORMATS = {
    "pt": ("text",),
    "sft": CONVERSATION_FORMATS,
    "rm": ("preference",),
    "dpo": ("preference",),
    "kto": ("kto",),
    "orpo": ("preference",),
    "grpo": CONVERSATION_FORMATS,
    "ppo": CONVERSATION_FORMATS,
}


class CrossSectionError(ValueError):
    """Several problems, each tied to a dotted path; the loader reports them one by one."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        super().__init__("; ".join(f"{p}: {m}" for p, m in problems))


class Recipe(Section):
    model: ModelConfig = Field(description="Pretrained weights and tokenizer.")
    data: DataConfig = Field(description="Training and evaluation data.")
    finetune: Finetune = Field(description="Which parameters train: full, lora or qlora.")
    stage: Stage = Field(description="Training objective: pt, sft, rm, dpo, kto, orpo, grpo or ppo.")
    training: TrainingConfig = Field(default_factory=TrainingConfig, description="Optimisation and cadence.")
    distributed: DistributedConfig = Field(
        default_factory=DistributedConfig, description="Processes and sharding."
    )
    output: OutputConfig = Field(description="Where results go.")

    @model_validator(mode="after")
    def _cross_section(self, info: ValidationInfo) -> "Recipe":
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
    from llmft import registry

    problems: list[tuple[str, str]] = []
    stage, mode = recipe.stage.name, recipe.finetune.mode
    if require_builder and not registry.is_available(stage, mode):
        problems.append(("stage.name", registry.unsupported_message(stage, mode)))
    allowed = STAGE_FORMATS[stage]
    for split in ("train", "eval"):
        for i, spec in enumerate(getattr(recipe.data, split)):
            if spec.format != "auto" and spec.format not in allowed:
                expected = " or ".join(repr(f) for f in allowed) or "(none available yet)"
                problems.append(
                    (f"data.{split}.{i}.format", f"stage {stage!r} trains on {expected} data (got {spec.format!r})")
                )
    problems += _stage_batch_problems(recipe)
    problems += _distributed_problems(recipe)
    problems += _training_option_problems(recipe)
    if recipe.output.merge_adapter and mode == "full":
        problems.append(("output.merge_adapter", "only LoRA runs have an adapter to merge; remove it for finetune.mode: full"))
    if recipe.training.eval_on_start and not recipe.data.has_eval:
        problems.append(("training.eval_on_start", "there is no eval data; add data.eval or data.eval_split"))
    if "eval_strategy" in recipe.training.model_fields_set and recipe.training.eval_strategy != "no":
        if not recipe.data.has_eval:
            problems.append(
                ("training.eval_strategy", f"is {recipe.training.eval_strategy!r} but there is no eval data; add data.eval or data.eval_split, or set 'no'")
            )
    return problems


def _training_option_problems(recipe: Recipe) -> list[tuple[str, str]]:
    """Training options against the stage and the attention kernel."""
    stage, t = recipe.stage.name, recipe.training
    problems = []
    if t.neftune_alpha is not None and stage in ("grpo", "ppo"):
        problems.append(("training.neftune_alpha", f"stage {stage!r} samples replies from the model it trains; noisy "
                         "embeddings would change the samples and their log-probs; remove it"))
    if t.shift_attn and stage not in ("pt", "sft"):
        problems.append(("training.shift_attn", f"S2-Attn is for the next-token stages pt and sft (got stage {stage!r}); remove it"))
    next_token_only = [f"training.{k}" for k in ("chunked_loss", "fused_ops", "max_tokens_per_forward") if k in t.model_fields_set]
    next_token_only += ["data.padding_free"] if "padding_free" in recipe.data.model_fields_set else []
    if stage not in ("pt", "sft"):
        for key in next_token_only:  # defaults stay quiet; a key someone set must not be ignored
            problems.append((key, f"is part of the pt/sft fast path and has no effect on stage {stage!r}; remove it"))
    if isinstance(t.max_tokens_per_forward, int) and stage in ("pt", "sft"):  # known before anything launches
        if not t.chunked_loss:
            problems.append(("training.max_tokens_per_forward", "the passes are part of the chunked loss, which "
                             "training.chunked_loss: false turns off; remove one of them"))
        elif recipe.distributed.launches or recipe.distributed.uses_deepspeed:
            problems.append(("training.max_tokens_per_forward", "several processes or DeepSpeed count each backward "
                             "as a micro-batch; remove it or set it to null"))
    if t.release_memory and t.allocator == "tcmalloc":
        problems.append(("training.release_memory", "sets glibc's malloc thresholds, which do nothing with training.allocator: "
                         "tcmalloc; remove one of them"))
    if t.torch_compile and stage == "ppo":
        problems.append(("training.torch_compile", "llmft's PPO trainer does not compile its model; remove it"))
    if t.shift_attn and recipe.model.attn_implementation == "flash_attention_2":
        problems.append(("training.shift_attn", "works with model.attn_implementation sdpa or eager (it needs a "
                         "block mask per group), not flash_attention_2"))
    return problems


def _distributed_problems(recipe: Recipe) -> list[tuple[str, str]]:
    """What `distributed:` cannot combine with (the JSON-dependent checks run when it is read)."""
    from llmft.config.training import BNB_OPTIMIZERS

    d, problems = recipe.distributed, []
    if recipe.stage.name == "ppo" and (d.launches or d.uses_deepspeed):
        key = "distributed.num_processes" if d.launches else "distributed.zero_stage"
        problems.append((key, "stage ppo trains in one process without DeepSpeed (llmft's own PPO loop keeps "
                         "policy, value head and reference together); set distributed.num_processes: 1 and zero_stage: 0"))
    if getattr(recipe.finetune, "bits", None) == 8 and d.zero_stage == 3:
        problems.append(("finetune.bits", "8-bit bitsandbytes weights cannot be sharded by ZeRO-3; use bits: 4 "
                         "(its storage dtype is set for ZeRO-3) or distributed.zero_stage: 2"))
    if d.offload != "none" and recipe.training.optimizer in BNB_OPTIMIZERS:
        problems.append(("training.optimizer", f"{recipe.training.optimizer} (bitsandbytes) cannot step the CPU copies "
                         "that distributed.offload keeps; use adamw_torch_fused (fused CPU kernel) or adamw_torch"))
    return problems


def _stage_batch_problems(recipe: Recipe) -> list[tuple[str, str]]:
    """Batch shapes some stages need (checked here so `llmft validate` catches them)."""
    stage, t = recipe.stage, recipe.training
    if stage.name == "kto" and t.micro_batch_size < 2:
        return [("training.micro_batch_size", "KTO needs at least 2 (its KL term pairs each prompt with another "
                 f"reply in the same micro-batch); got {t.micro_batch_size}")]
    if stage.name == "grpo":
        per_round = t.micro_batch_size * t.gradient_accumulation_steps
        if per_round % stage.num_generations:
            return [("training.micro_batch_size", f"x gradient_accumulation_steps = {per_round} completions per generation "
                     f"round must be a multiple of stage.num_generations ({stage.num_generations}): each prompt's group is sampled whole")]
        if recipe.evaluates and t.micro_batch_size % stage.num_generations:
            return [("training.micro_batch_size", f"({t.micro_batch_size}) must be a multiple of stage.num_generations "
                     f"({stage.num_generations}) to evaluate: an eval batch holds whole groups")]
    return []
