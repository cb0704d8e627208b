"""A knowledge-base record: one past defect with the quality engineer's report and conclusion.

SQLite is the source of truth for these; the FAISS index only maps case ids to vectors."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from enum import Enum

from pydantic import BaseModel, Field, field_validator

from vision.detection import Box


class Disposition(str, Enum):
    """What was done with the defective part: scrapped, reworked or accepted as is."""

    scrap = "scrap"
    rework = "rework"
    accept = "accept"


def utcnow() -> datetime:
    return datetime.now(UTC)


class CaseInput(BaseModel):
    """What an engineer supplies to add a case (`kb add`, bulk import rows)."""

    line: str
    defect_class: str
    image_path: str  # where the image is now; the KB copies it into its content-addressed store
    box: Box | None = None  # region of the defect; None = whole image
    report: str = ""
    disposition: Disposition
    root_cause: str = ""
    corrective_action: str = ""
    author: str = ""
    measurements: dict[str, float] = Field(default_factory=dict)

    @field_validator("measurements")
    @classmethod
    def _finite(cls, value: dict[str, float]) -> dict[str, float]:
        # NaN / inf would be stored as JSON tokens no standard reader accepts and compared as never out of limits
        bad = sorted(name for name, v in value.items() if not math.isfinite(v))
        if bad:
            raise ValueError(f"measurements must be finite numbers; not: {', '.join(bad)}")
        return value


class Case(CaseInput):
    """A stored case. `image_path` points into the KB's content-addressed store; `image_sha256` is its key."""

    id: int
    image_sha256: str
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)

    @field_validator("measurements")
    @classmethod
    def _finite(cls, value: dict[str, float]) -> dict[str, float]:
        # a stored row is read as it is (one written before the check existed must not make the case unreadable);
        # `kb verify` reports it and `kb export` refuses it
        return value
