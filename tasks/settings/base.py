"""What every settings section shares: unknown keys are refused, and a loaded section is frozen."""

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
