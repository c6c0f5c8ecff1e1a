"""`stage:` — the training objective. A tagged union on `name`; stage-only knobs live on their variant.

What a stage *is* lives on its variant too (`traits`, and `reference_source()` for how it gets its
reference model): the data it trains on, its objective, which finetune modes have a builder,
which data and training keys mean something for it. Builders, validation, `llmft data` and
`llmft plan` all read it here; nothing outside `config/` and `builders/` compares stage names.
"""

from __future__ import annotations

import dataclasses
import enum
import typing
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import Field, ValidationInfo, field_validator, model_validator

from llmft.config.base import Section
from llmft.config.finetune import MODES, FullFinetune
from llmft.config.rewards import AccuracyReward, PythonReward, RewardModelReward, RewardSpec, bare_names
from llmft.config.training import TrainingConfig

#: Record layouts a conversation stage reads (`data.*.format`).
CONVERSATION_FORMATS = ("alpaca", "sharegpt", "messages", "csv", "qa")
#: What a stage's loss is: next-token cross-entropy, a preference loss (pairs or labelled replies),
#: a reward model's pairwise score loss, or a policy-gradient loss on replies it samples itself.
Objective = Literal["next_token", "preference", "reward", "rollout"]
#: What a record becomes: `text` blocks (pt), a supervised `conversation` (sft), a chosen/rejected
#: `pair`, a reply `labelled` desirable or not (kto), or a `prompt` the policy answers.
Examples = Literal["text", "conversation", "pair", "labelled", "prompt"]
TRUNCATIONS = ("truncate_right", "truncate_left", "drop")


class Reference(enum.Enum):
    """Where a stage's reference model (the policy as training started) comes from."""

    NONE = "none"  # no reference
    ADAPTER_DISABLED = "adapter disabled"  # LoRA: the base with the (fresh) adapter switched off, no second copy
    STARTING_ADAPTER = "starting adapter"  # LoRA continuing finetune.adapter_path (or a non-zero init): a frozen copy
    FROZEN_COPY = "frozen copy"  # full: a frozen copy of the loaded model, in memory
    RELOADED = "reloaded"  # full: the trainer (TRL) reloads model.path, checked equal to the policy
    PRECOMPUTED = "precomputed"  # reference log-probs computed once before training; none kept

    @property
    def copies_weights(self) -> bool:
        """True when a second full set of weights is kept in memory."""
        return self in (Reference.FROZEN_COPY, Reference.RELOADED)

    def describe(self) -> str:
        return {
            Reference.NONE: "reference: none",
            Reference.ADAPTER_DISABLED: "reference: the base model (the adapter disabled, no second copy)",
            Reference.STARTING_ADAPTER: "reference: the adapter as training started (a frozen copy named 'ref')",
            Reference.FROZEN_COPY: "reference: a frozen copy of the starting model (made in memory)",
            Reference.RELOADED: "reference: reloaded by TRL from model.path, checked equal to the starting policy",
            Reference.PRECOMPUTED: "reference: log-probs precomputed once before training (no reference model kept)",
        }[self]


def policy_at_start(
    finetune: Any, full: Reference = Reference.FROZEN_COPY, continued: Reference = Reference.STARTING_ADAPTER
) -> Reference:
    """The reference "the policy as training started", for a finetune mode: `full` for full training,
    the adapter disabled for a fresh LoRA/QLoRA adapter, `continued` for a continued one or one that
    does not start at zero (`finetune.init`: pissa, olora, loftq)."""
    if isinstance(finetune, FullFinetune):
        return full
    if not finetune.starts_at_base:  # a continued adapter, or one that starts non-zero (finetune.init)
        return continued
    return Reference.ADAPTER_DISABLED


@dataclass(frozen=True)
class StageTraits:
    """What a stage is, as every consumer needs to know it."""

    formats: tuple[str, ...]  # data formats it trains on (`data.*.format`; `auto` is checked once read)
    objective: Objective
    examples: Examples
    modes: tuple[str, ...]  # finetune modes with a builder: this stage's row of the supported table
    fast_path: bool = False  # the pt/sft fast path (padding-free, chunked loss, fused ops, passes, S2-Attn) and packing
    # padding-free batches and fused ops apply to its forward (data.padding_free, training.fused_ops): the
    # fast-path stages, and those whose TRL trainer scores through TRL's fused log-prob head, which scores a
    # padded batch as one padding-free row (llmft.fastpath.unpadded_scoring)
    fast_forward: bool = False
    # training.max_tokens_per_forward applies: a micro-batch runs as several forward/backward passes
    # (pt/sft: of whole examples; dpo, rm, orpo: of whole pairs)
    forward_passes: bool = False
    next_token_loss: bool = False  # the loss contains a next-token loss (the random-init alarm applies)
    group_by_length: bool = False  # its trainer honours data.group_by_length
    truncation: tuple[str, ...] = TRUNCATIONS  # data.truncation values it honours; () = the key has no effect
    supervision: bool = False  # data.mask_prompt / train_on choose what it supervises
    # its loss reads llmft's labels, so data.train_on_reasoning applies (rm scores whole sequences; TRL's
    # kto/orpo trainers build their own labels)
    reasoning_labels: bool = False
    chat_template: bool = True  # renders conversations with data.template (pt reads plain text)
    task: Literal["causal_lm", "reward"] = "causal_lm"  # what the model is loaded as
    samples: bool = False  # generates replies from the model it trains
    head_adapter: bool = True  # a LoRA adapter on the output head trains (TRL's dpo/kto/grpo read its weight directly)
    multi_process: bool = True  # trains in several processes / under DeepSpeed
    torch_compile: bool = True  # its trainer can compile the model (training.torch_compile)
    resumes: bool = True  # its trainer continues from a checkpoint-N/ (training.resume_from_checkpoint)

    @property
    def fuses_ops(self) -> bool:
        """training.fused_ops applies: to its forward (fast_forward), or to its rollouts, sampled through
        merged LoRA layers (samples; `llmft.fastpath.sampling`)."""
        return self.fast_forward or self.samples

    @property
    def sequences_per_example(self) -> int:
        """Sequences through the model per example: chosen and rejected (or KTO's reply and its
        mismatched KL reply) go through together."""
        return 2 if self.examples in ("pair", "labelled") else 1


class StageSection(Section):
    """A `stage:` variant: its knobs, its traits, and how it gets a reference model."""

    traits: ClassVar[StageTraits]

    def reference_source(self, finetune: Any) -> Reference:
        """Where this stage's reference model comes from, given the finetune section."""
        return Reference.NONE

    def generated_tokens(self) -> tuple[str, int] | None:
        """(key, tokens) of the longest reply a sampling stage generates, which data.max_length must leave room for."""
        return None

    def batch_problems(self, training: TrainingConfig, evaluates: bool) -> list[tuple[str, str]]:
        """Batch shapes this stage needs, as (dotted.key, problem) pairs."""
        return []

    def input_dirs(self) -> list[tuple[str, str]]:
        """(dotted.key, directory) of the runs this stage reads besides its model (a reward model),
        checked to exist before anything loads (`llmft.preflight`)."""
        return []

    def reward_entries(self) -> list[tuple[str, Any]]:
        """(dotted.key, entry) of the `stage.rewards` a sampling stage scores with; their inputs
        (schema files, python imports) are checked before anything loads (`llmft.preflight`)."""
        return []

    def own_problems(self) -> list[tuple[str, str]]:
        """Problems within the stage section that belong to a key deeper than `stage`, as (dotted.key, problem)."""
        return []

    def passes_blocker(self) -> str | None:
        """Why a micro-batch cannot run in passes (`training.max_tokens_per_forward`) with these settings."""
        return None


#: DPO losses as TRL's DPOTrainer offers them.
DpoLoss = Literal[
    "sigmoid",
    "hinge",
    "ipo",
    "exo_pair",
    "nca_pair",
    "robust",
    "bco_pair",
    "sppo_hard",
    "aot",
    "aot_unpaired",
    "apo_zero",
    "apo_down",
    "discopop",
    "sigmoid_norm",
]
#: The DPO losses that couple a micro-batch's pairs (sorted across it, or a token mean over it): a
#: micro-batch cut into passes of whole pairs would change them.
BATCH_COUPLED_DPO_LOSSES = ("aot", "aot_unpaired", "sft")
#: The DPO losses TRL applies `label_smoothing` to.
SMOOTHED_DPO_LOSSES = ("robust", "exo_pair", "aot", "aot_unpaired")
#: GRPO losses as TRL's GRPOConfig offers them (`loss_type`).
GrpoLoss = Literal["grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo"]
ALL_MODES = MODES


class PtStage(StageSection):
    name: Literal["pt"] = Field(description="Continued pre-training: next-token loss on every token.")
    traits = StageTraits(
        formats=("text",),
        objective="next_token",
        examples="text",
        modes=ALL_MODES,
        fast_path=True,
        fast_forward=True,
        forward_passes=True,
        next_token_loss=True,
        group_by_length=True,
        truncation=(),
        chat_template=False,
    )


class SftStage(StageSection):
    name: Literal["sft"] = Field(description="Supervised fine-tuning on conversations.")
    traits = StageTraits(
        reasoning_labels=True,
        formats=CONVERSATION_FORMATS,
        objective="next_token",
        examples="conversation",
        modes=ALL_MODES,
        fast_path=True,
        fast_forward=True,
        forward_passes=True,
        next_token_loss=True,
        group_by_length=True,
        supervision=True,
    )


class RmStage(StageSection):
    name: Literal["rm"] = Field(description="Reward model: a one-score head on the causal LM, pairwise loss on preference data.")
    # no qlora: the score head hit a dtype mismatch under bitsandbytes
    traits = StageTraits(
        formats=("preference",),
        objective="reward",
        examples="pair",
        modes=("full", "freeze", "lora"),
        group_by_length=True,
        task="reward",
        fast_forward=True,
        forward_passes=True,
    )


class DpoStage(StageSection):
    name: Literal["dpo"] = Field(description="Direct preference optimisation (TRL's DPOTrainer).")
    beta: float = Field(default=0.1, gt=0, description="Strength of the implicit KL constraint to the reference.")
    loss_type: DpoLoss = Field(default="sigmoid", description="DPO loss variant, as TRL names them.")
    label_smoothing: float = Field(
        default=0.0,
        ge=0,
        lt=0.5,
        validate_default=True,
        description="Assumed fraction of flipped preference labels (robust/cDPO).",
    )
    reference: Literal["model", "precomputed"] = Field(
        default="model",
        description="Reference log-probs: from a reference model during training (LoRA: the base with "
        "the adapter disabled, no second copy; full: a frozen copy), or computed once before training.",
    )
    traits = StageTraits(
        reasoning_labels=True,
        formats=("preference",),
        objective="preference",
        examples="pair",
        modes=ALL_MODES,
        group_by_length=True,
        head_adapter=False,
        fast_forward=True,
        forward_passes=True,
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

    def reference_source(self, finetune: Any) -> Reference:
        return Reference.PRECOMPUTED if self.reference == "precomputed" else policy_at_start(finetune)

    def passes_blocker(self) -> str | None:
        if self.loss_type in BATCH_COUPLED_DPO_LOSSES:
            return f"stage.loss_type {self.loss_type!r} couples the micro-batch's pairs, so they cannot run in separate passes"
        return None


class KtoStage(StageSection):
    name: Literal["kto"] = Field(description="Kahneman-Tversky optimisation on single replies labelled desirable or not.")
    beta: float = Field(default=0.1, gt=0, description="Strength of the KL constraint to the reference.")
    desirable_weight: float = Field(default=1.0, gt=0, description="Loss weight of desirable replies.")
    undesirable_weight: float = Field(default=1.0, gt=0, description="Loss weight of undesirable replies.")
    # TRL's KTOTrainer tokenizes and batches itself: it cuts over-long sequences at the end
    traits = StageTraits(
        formats=("kto",),
        objective="preference",
        examples="labelled",
        modes=ALL_MODES,
        truncation=("truncate_right", "drop"),
        head_adapter=False,
        fast_forward=True,
    )

    def reference_source(self, finetune: Any) -> Reference:
        return policy_at_start(finetune)

    def batch_problems(self, training: TrainingConfig, evaluates: bool) -> list[tuple[str, str]]:
        if training.micro_batch_size < 2:
            return [
                (
                    "training.micro_batch_size",
                    "KTO needs at least 2 (its KL term pairs each prompt with another "
                    f"reply in the same micro-batch); got {training.micro_batch_size}",
                )
            ]
        return []


class OrpoStage(StageSection):
    name: Literal["orpo"] = Field(description="Odds-ratio preference optimisation: SFT and preference in one loss, no reference.")
    beta: float = Field(default=0.1, gt=0, description="Weight of the odds-ratio term (lambda in the paper).")
    # TRL's ORPOTrainer tokenizes and batches itself: it cuts over-long sequences at the end
    traits = StageTraits(
        formats=("preference",),
        objective="preference",
        examples="pair",
        modes=ALL_MODES,
        next_token_loss=True,
        truncation=("truncate_right", "drop"),
        head_adapter=False,
        fast_forward=True,
        forward_passes=True,
    )


#: What the sampling stages (grpo, ppo) share: they generate replies to prompts and train on them.
ROLLOUT_TRAITS = StageTraits(
    formats=CONVERSATION_FORMATS,
    objective="rollout",
    examples="prompt",
    modes=ALL_MODES,
    truncation=(),
    samples=True,
)
REWARDS_DOC = (
    "What a reply is rewarded for: a list of entries tagged on `type` (a bare name such as `ends_cleanly` is "
    "`{type: ends_cleanly}`), each with a `weight`; its reward is their weighted sum. See "
    "[`stage.rewards` entries](#stagerewards-entries) and docs/alignment.md."
)


class RewardedStage(StageSection):
    """A sampling stage that scores its replies with `stage.rewards` entries (`llmft.rewards`): grpo,
    and ppo without a reward model. The reply's reward is the weighted sum of the entries."""

    rewards: list[RewardSpec] = Field(
        default_factory=list,
        description=REWARDS_DOC,
    )
    allow_python_rewards: bool = Field(
        default=False,
        description="Allow `python` rewards, which import and run your own code (like trust_remote_code).",
    )

    @field_validator("rewards", mode="before")
    @classmethod
    def _bare_names(cls, value: Any) -> Any:
        return bare_names(value)

    def own_problems(self) -> list[tuple[str, str]]:
        if self.allow_python_rewards:
            return []
        return [
            (
                "stage.allow_python_rewards",
                f"stage.rewards.{i} is a python reward ({entry.function}), which imports and runs your own code; "
                "set stage.allow_python_rewards: true to allow it",
            )
            for i, entry in enumerate(self.rewards)
            if isinstance(entry, PythonReward)
        ]

    def reward_entries(self) -> list[tuple[str, Any]]:
        return [(f"stage.rewards.{i}", entry) for i, entry in enumerate(self.rewards)]

    def record_columns(self) -> list[tuple[str, str]]:
        """(dotted.key, column) of the record columns the rewards read: every prompt's record must have them."""
        found = []
        for i, entry in enumerate(self.rewards):
            if isinstance(entry, AccuracyReward):
                found.append((f"stage.rewards.{i}.column", entry.column))
            elif isinstance(entry, PythonReward):
                found += [(f"stage.rewards.{i}.columns", c) for c in entry.columns]
        return found

    def input_dirs(self) -> list[tuple[str, str]]:
        return [(f"stage.rewards.{i}.path", e.path) for i, e in enumerate(self.rewards) if isinstance(e, RewardModelReward)]


class GrpoStage(RewardedStage):
    name: Literal["grpo"] = Field(
        description="Group relative policy optimisation (TRL's GRPOTrainer) on rewards chosen and weighted in `rewards`."
    )
    num_generations: int = Field(default=4, ge=2, description="Completions sampled per prompt (the group).")
    max_completion_length: int = Field(default=64, gt=0, description="Longest sampled completion, in tokens.")
    temperature: float = Field(default=1.0, gt=0, description="Sampling temperature of the completions.")
    beta: float = Field(default=0.0, ge=0, description="KL coefficient to the reference (0 = no reference model).")
    loss_type: GrpoLoss = Field(
        default="dapo",
        description="TRL's GRPO loss: `dapo` (tokens normalised over the accumulated batch), `grpo` (per "
        "sequence length; length-biased), `dr_grpo` (by a constant, max_completion_length), `bnpo` (over "
        "the local batch), `cispo` (clipped importance weights), `sapo` (soft gate), `luspo` (sequence-level, "
        "run with importance_sampling_level sequence), `vespo` (sequence-level soft weighting).",
    )
    rewards: list[RewardSpec] = Field(
        description=REWARDS_DOC,
    )
    traits = dataclasses.replace(ROLLOUT_TRAITS, head_adapter=False, fast_forward=True)

    @field_validator("rewards")
    @classmethod
    def _some_reward(cls, value: list[Any]) -> list[Any]:
        if not value:
            raise ValueError("give at least one reward, e.g. [{type: accuracy, match: math}, format]")
        return value

    def reference_source(self, finetune: Any) -> Reference:
        return Reference.NONE if self.beta == 0 else policy_at_start(finetune, full=Reference.RELOADED)

    def generated_tokens(self) -> tuple[str, int]:
        return "max_completion_length", self.max_completion_length

    def batch_problems(self, training: TrainingConfig, evaluates: bool) -> list[tuple[str, str]]:
        group, per_round = self.num_generations, training.micro_batch_size * training.gradient_accumulation_steps
        if per_round % group:
            return [
                (
                    "training.micro_batch_size",
                    f"x gradient_accumulation_steps = {per_round} completions per generation "
                    f"round must be a multiple of stage.num_generations ({group}): each prompt's group is sampled whole",
                )
            ]
        if evaluates and training.micro_batch_size % group:
            return [
                (
                    "training.micro_batch_size",
                    f"({training.micro_batch_size}) must be a multiple of stage.num_generations "
                    f"({group}) to evaluate: an eval batch holds whole groups",
                )
            ]
        return []


class PpoStage(RewardedStage):
    name: Literal["ppo"] = Field(
        description="Proximal policy optimisation (llmft's own trainer) against a reward model or rule rewards."
    )
    reward_model: str | None = Field(
        default=None,
        description="Directory of an `rm` stage output (adapter or full) whose raw score rewards a reply. "
        "Give this or `rewards`.",
    )
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
    # llmft's own PPO loop keeps policy, value head and reference together in one process
    traits = dataclasses.replace(
        ROLLOUT_TRAITS,
        multi_process=False,
        torch_compile=False,
        resumes=False,  # its checkpoints hold the weights, value head and state, not the optimizer
    )

    @model_validator(mode="after")
    def _batches(self) -> PpoStage:
        if self.rollout_batch_size % self.mini_batch_size:
            raise ValueError("rollout_batch_size must be a multiple of mini_batch_size")
        return self

    @model_validator(mode="after")
    def _one_scorer(self) -> PpoStage:
        if (self.reward_model is None) == (not self.rewards):
            raise ValueError(
                "give either reward_model (an rm run's directory: its raw score is the reward) or rewards "
                "(rule rewards, e.g. [{type: accuracy, match: numeric}]), " + ("not both" if self.rewards else "one of them")
            )
        return self

    def reference_source(self, finetune: Any) -> Reference:
        # the PPO loop's LoRA reference is always the policy with its adapter disabled (a continued
        # adapter included: the builder warns that the KL then pulls towards the model before it)
        return policy_at_start(finetune, continued=Reference.ADAPTER_DISABLED)

    def input_dirs(self) -> list[tuple[str, str]]:
        return ([("stage.reward_model", self.reward_model)] if self.reward_model else []) + super().input_dirs()

    def generated_tokens(self) -> tuple[str, int]:
        return "max_new_tokens", self.max_new_tokens


#: Every stage, in schema order. A new stage is one variant here (with its traits) and one builder
#: module `llmft/builders/<name>.py`.
STAGE_VARIANTS: tuple[type[StageSection], ...] = (PtStage, SftStage, RmStage, DpoStage, KtoStage, OrpoStage, GrpoStage, PpoStage)
Stage = Annotated[Union[STAGE_VARIANTS], Field(discriminator="name")]  # type: ignore[valid-type]  # noqa: UP007


def _name(variant: type[StageSection]) -> str:
    return typing.get_args(variant.model_fields["name"].annotation)[0]


#: Stage names in schema order, and each stage's traits by name.
STAGES: tuple[str, ...] = tuple(_name(v) for v in STAGE_VARIANTS)
TRAITS: dict[str, StageTraits] = {_name(v): v.traits for v in STAGE_VARIANTS}


def stages_with(trait: str) -> str:
    """The stages whose `trait` is true, for messages: "pt, sft and dpo"."""
    names = [name for name, traits in TRAITS.items() if getattr(traits, trait)]
    return ", ".join(names[:-1]) + f" and {names[-1]}" if len(names) > 1 else names[0]
