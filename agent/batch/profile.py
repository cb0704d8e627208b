"""A batch profile: the standing instructions of a line, in YAML under `configs/profiles/`."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator

from defect_agent.errors import ConfigError


class StandingInstruction(BaseModel):
    """One instruction a nightly job asks of every image."""

    id: str = Field(pattern=r"^[\w-]{1,64}$", description="Short name used in the CSV and the report.")
    text: str = Field(min_length=1, max_length=2000, description="The instruction, zh or en.")


class BatchProfile(BaseModel):
    """A line's standing instructions and how its report is written."""

    name: str
    line: str
    instructions: list[StandingInstruction] = Field(min_length=1)
    lang: str | None = Field(None, pattern="^(zh|en)$")
    worst: int = Field(12, ge=0, le=200)  # images shown with overlays in the report

    @field_validator("instructions")
    @classmethod
    def _unique_ids(cls, value: list[StandingInstruction]) -> list[StandingInstruction]:
        ids = [i.id for i in value]
        if len(ids) != len(set(ids)):
            raise ValueError(f"instruction ids must be unique: {ids}")
        return value


def load_profile(path: Path | str) -> BatchProfile:
    """Read and validate a profile; a missing or malformed file is a ConfigError naming it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no batch profile at {path} (see configs/profiles/)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        return BatchProfile.model_validate(data)
    except (yaml.YAMLError, ValidationError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not a valid batch profile: {exc}") from exc
