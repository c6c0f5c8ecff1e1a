"""`stage:` — the training objective. A tagged union on `name`; stage-only knobs live on their variant."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, ValidationInfo, field_validator, model_validator

from llmft.config.base import Section

#: DPO losses as TRL's DPOTrainer offers them.
DpoLoss = Literal[
    "sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard",
    "aot", "aot_unpaired", "apo_zero", "apo_down", "discopop", "sigmoid_norm",
]
#: The DPO losses TRL applies `label_smoothing` to.
SMOOTHED_DPO_LOSSES = ("robust", "exo_pair", "aot", "aot_unpaired")
#: Built-in reward functions for GRPO (no code from a recipe is ever executed).
RewardFunction = Literal["length", "format", "no_repeat", "ends_cleanly"]


class PtStage(Section):
    name: Literal["pt"] = Field(description="Continued pre-training: next-token loss on every token.")


class SftStage(Section):
    name: Literal["sft"] = Field(description="Supervised fine-tuning on conversations.")


class RmStage(Section):
    name: Literal["rm"] = Field(
        description="Reward model: a one-score head on the causal LM, pairwise loss on preference data."
    )


class DpoStage(Section):
    name: Literal["dpo"] = Field(description="Direct preference optimisation (TRL's DPOTrainer).")
    beta: float = Field(default=0.1, gt=0, description="Strength of the implicit KL constraint to the reference.")
    loss_type: DpoLoss = Field(default="sigmoid", description="DPO loss variant, as TRL names them.")
    label_smoothing: float = Field(
        default=0.0, ge=0, lt=0.5, validate_default=True,
        description="Assumed fraction of flipped preference labels (robust/cDPO).",
    )
    reference: Literal["model", "precomputed"] = Field(
        default="model",
        description="Reference log-probs: from a reference model during training (LoRA: the base with "
        "the adapter disabled, no second copy; full: a frozen copy), or computed once before training.",
    )

    @field_validator("label_smoothing")
    @classmethod
    def _smoothing_is_used(cls, value: float, info: ValidationInfo) -> float:
        loss = info.data.get("loss_type")
        if loss is None:  # loss_type itself is invalid and reported
            return value
        if value and loss not in SMOOTHED_DPO_LOSSES:
            raise ValueError(
                f"loss_type {loss!r} ignores label_smoothing (TRL applies it only to "
                f"{', '.join(SMOOTHED_DPO_LOSSES)}); for conservative DPO use loss_type: robust, or remove label_smoothing"
            )
        if loss == "exo_pair" and not value:
            raise ValueError("loss_type 'exo_pair' needs label_smoothing > 0 (the EXO paper uses 1e-3)")
        return value


class KtoStage(Section):
    name: Literal["kto"] = Field(description="Kahneman-Tversky optimisation on single replies labelled desirable or not.")
    beta: float = Field(default=0.1, gt=0, description="Strength of the KL constraint to the reference.")
    desirable_weight: float = Field(default=1.0, gt=0, description="Loss weight of desirable replies.")
    undesirable_weight: float = Field(default=1.0, gt=0, description="Loss weight of undesirable replies.")


class OrpoStage(Section):
    name: Literal["orpo"] = Field(description="Odds-ratio preference optimisation: SFT and preference in one loss, no reference.")
    beta: float = Field(default=0.1, gt=0, description="Weight of the odds-ratio term (lambda in the paper).")


class GrpoStage(Section):
    name: Literal["grpo"] = Field(description="Group relative policy optimisation with built-in rewards and/or a reward model.")
    num_generations: int = Field(default=4, ge=2, description="Completions sampled per prompt (the group).")
    max_completion_length: int = Field(default=64, gt=0, description="Longest sampled completion, in tokens.")
    temperature: float = Field(default=1.0, gt=0, description="Sampling temperature of the completions.")
    beta: float = Field(default=0.0, ge=0, description="KL coefficient to the reference (0 = no reference model).")
    reward_functions: list[RewardFunction] = Field(
        default_factory=list,
        description="Built-in rewards (see `llmft/rewards.py`): `length` (near the length of the data's own "
        "reply), `format` (a final `Answer:` line), `no_repeat` (penalises repeated n-grams), `ends_cleanly` "
        "(stops with end-of-turn).",
    )
    reward_model: str | None = Field(default=None, description="Directory of an `rm` stage output to score completions.")

    @model_validator(mode="after")
    def _some_reward(self) -> "GrpoStage":
        if not self.reward_functions and not self.reward_model:
            raise ValueError("set reward_functions, reward_model, or both")
        return self


class PpoStage(Section):
    name: Literal["ppo"] = Field(description="Proximal policy optimisation against a reward model (llmft's own trainer).")
    reward_model: str = Field(description="Directory of an `rm` stage output (adapter or full) that scores replies.")
    rollout_batch_size: int = Field(default=8, gt=0, description="Prompts per rollout (one PPO iteration).")
    mini_batch_size: int = Field(default=4, gt=0, description="Rollouts per PPO optimisation step.")
    ppo_epochs: int = Field(default=4, gt=0, description="Passes over each rollout batch.")
    max_new_tokens: int = Field(default=32, gt=0, description="Longest sampled reply, in tokens.")
    temperature: float = Field(default=1.0, gt=0, description="Sampling temperature of rollouts.")
    top_k: int = Field(default=0, ge=0, description="Sample from the k most likely tokens (0 = all).")
    top_p: float = Field(default=1.0, gt=0, le=1, description="Nucleus sampling mass.")
    kl_coef: float = Field(default=0.05, ge=0, description="Per-token KL penalty coefficient (initial value if adaptive).")
    kl_control: Literal["fixed", "adaptive"] = Field(
        default="fixed", description="Keep kl_coef fixed, or adapt it towards `target_kl` (Ziegler et al.)."
    )
    target_kl: float = Field(default=6.0, gt=0, description="Adaptive control: the KL (nats per reply) to steer towards.")
    kl_horizon: int = Field(default=10000, gt=0, description="Adaptive control: horizon in samples.")
    gamma: float = Field(default=1.0, gt=0, le=1, description="GAE discount.")
    lam: float = Field(default=0.95, ge=0, le=1, description="GAE lambda.")
    cliprange: float = Field(default=0.2, gt=0, description="PPO policy ratio clip.")
    cliprange_value: float = Field(default=0.2, gt=0, description="Value prediction clip.")
    vf_coef: float = Field(default=0.1, ge=0, description="Weight of the value loss.")
    whiten_rewards: bool = Field(default=False, description="Whiten rewards before GAE (advantages are always whitened).")

    @model_validator(mode="after")
    def _batches(self) -> "PpoStage":
        if self.rollout_batch_size % self.mini_batch_size:
            raise ValueError("rollout_batch_size must be a multiple of mini_batch_size")
        return self


Stage = Annotated[
    Union[PtStage, SftStage, RmStage, DpoStage, KtoStage, OrpoStage, GrpoStage, PpoStage],
    Field(discriminator="name"),
]
