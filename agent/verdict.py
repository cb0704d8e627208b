"""Verdict: the JSON result per image. Outside tools rely on `image`, `matches_query`, `verdict` and `defects`
(one object per JSONL line); bump VERDICT_SCHEMA_VERSION on any incompatible change."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from agent.query import InspectionQuery
from retrieval.hits import SimilarCase
from vision.detection import Box

VERDICT_SCHEMA_VERSION = "1.0"


class DefectFinding(BaseModel):
    defect_class: str
    box: Box
    source: Literal["detector", "derived"] = "detector"
    confidence: float  # detector confidence (derived defects: that of the parts they come from)
    texture_score: float | None = None  # embedder's defect-vs-normal score of the crop, raw
    case_evidence: float | None = None  # share of similar cases whose disposition was not 'accept'
    verifier_score: float | None = None  # template lines: the class verifier's probability of defect_class
    detector_class: str | None = None  # the detector's class, where the verifier relabelled the box
    alternatives: dict[str, float] = Field(default_factory=dict)  # other classes the verifier gives >= 0.05
    probability: float  # fused, calibrated probability that the defect is real
    measurements: dict[str, float] = Field(default_factory=dict)  # offset_mm, length_mm, width_mm, area_mm2
    matched_clauses: list[str] = Field(default_factory=list)
    similar_cases: list[SimilarCase] = Field(default_factory=list)


class ClauseResult(BaseModel):
    id: str
    text: str
    satisfied: bool
    count: int  # findings that met the clause's class and constraints
    uncertain: bool = False  # a count or measurement within the review margin


class ModelVersions(BaseModel):
    locator: str | None = None
    adapter: str | None = None
    embedder: str | None = None
    verifier: str | None = None
    kb_snapshot: str | None = None


class Verdict(BaseModel):
    schema_version: str = VERDICT_SCHEMA_VERSION
    image: str  # the path as given
    line: str
    matches_query: bool
    verdict: Literal["pass", "fail", "review"]
    score: float  # probability that the image satisfies the instruction
    reasons: list[str]
    clauses: list[ClauseResult] = Field(default_factory=list)
    defects: list[DefectFinding] = Field(default_factory=list)
    query: InspectionQuery | None = None
    models: ModelVersions = Field(default_factory=ModelVersions)
    timings_ms: dict[str, float] = Field(default_factory=dict)
    error: str | None = None  # set when the image could not be inspected (verdict is then 'review')


def verdict_json_schema() -> dict:
    return Verdict.model_json_schema()
