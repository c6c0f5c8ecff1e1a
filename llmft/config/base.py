"""The base every recipe section derives from: unknown keys fail, values are frozen."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """A recipe section. Unknown keys are errors; a validated section is immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)
