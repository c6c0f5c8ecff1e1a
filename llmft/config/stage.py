"""`stage:` — the training objective. A tagged union on `name`; stage-only knobs live on their variant."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field

from llmft.config.base import Section


class PtStage(Section):
    name: Literal["pt"] = Field(description="Continued pre-training: next-token loss on every token.")


class SftStage(Section):
    name: Literal["sft"] = Field(description="Supervised fine-tuning on conversations.")


class RmStage(Section):
    name: Literal["rm"] = Field(description="Reward model on preference pairs.")


class DpoStage(Section):
    name: Literal["dpo"] = Field(description="Direct preference optimisation.")


class KtoStage(Section):
    name: Literal["kto"] = Field(description="Kahneman-Tversky optimisation on single replies labelled desirable or not.")


class PpoStage(Section):
    name: Literal["ppo"] = Field(description="Proximal policy optimisation against a reward model.")


Stage = Annotated[
    Union[PtStage, SftStage, RmStage, DpoStage, KtoStage, PpoStage], Field(discriminator="name")
]
