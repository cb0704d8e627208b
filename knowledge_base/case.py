"""A knowledge-base record: one past defect with the quality engineer's report and conclusion.

SQLite is the source of truth for these; the FAISS index only maps case ids to vectors."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import Enum

from pydantic import BaseModel, Field

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


class Case(CaseInput):
    """A stored case. `image_path` points into the KB's content-addressed store; `image_sha256` is its key."""

    id: int
    image_sha256: str
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
