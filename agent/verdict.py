"""Verdict: the JSON result per image (one object per JSONL line). Outside tools rely on `image`, `verdict`,
`matches_query` and `defects`; bump VERDICT_SCHEMA_VERSION on any incompatible change.

2.0: `verdict` is the part's quality under the line's acceptance rules (it was the instruction's answer in 1.x);
`verdict_reasons` and `query_reasons` replace `reasons`; `match_uncertain` and each defect's `verdict` are new."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from agent.query import InspectionQuery
from retrieval.hits import SimilarCase
from vision.detection import Box

VERDICT_SCHEMA_VERSION = "2.0"
VERDICT_SCHEMA_ID = f"https://defect-agent.local/schemas/verdict-{VERDICT_SCHEMA_VERSION}.json"


class DefectFinding(BaseModel):
    """One defect found on the image, with its evidence, measurements and similar past cases."""

    defect_class: str = Field(description="The line's class name (canonical, e.g. `spatter`, `open`).")
    box: Box = Field(description="Region in pixels of the image as given (x1, y1, x2, y2).")
    source: Literal["detector", "derived", "anomaly"] = Field(
        "detector",
        description="`detector`: located by the model; `derived`: measured from located parts; `anomaly`: a region "
        "of the line's normal-only anomaly map (named by similar defect examples, else the anomaly class).",
    )
    confidence: float = Field(description="Detector confidence (derived defects: that of the parts they come from).")
    texture_score: float | None = Field(None, description="The embedder's raw defect-vs-normal score of the crop.")
    case_evidence: float | None = Field(
        None, description="Share of the similar past cases whose disposition was not `accept`."
    )
    verifier_score: float | None = Field(
        None, description="Template lines: the class verifier's probability of `defect_class`."
    )
    detector_class: str | None = Field(None, description="The detector's class, where the verifier relabelled the box.")
    alternatives: dict[str, float] = Field(
        default_factory=dict, description="Other classes the verifier gives at least 0.05, with their probability."
    )
    probability: float = Field(description="Fused, calibrated probability that the defect is real.")
    measurements: dict[str, float] = Field(
        default_factory=dict,
        description="Sizes in millimetres from the line's calibration: offset_mm, length_mm, width_mm, area_mm2.",
    )
    uncertainty: dict[str, float] = Field(
        default_factory=dict,
        description="± of each measurement (same keys and units as `measurements`): the box's localisation error "
        "estimated on labelled data (`defect-agent calibrate --measurement`) and the calibration's relative error, "
        "combined; a key without one is judged with the fixed measurement margin.",
    )
    verdict: Literal["pass", "fail", "review"] = Field(
        "pass",
        description="What this finding does to the part under the line's acceptance rules: `fail` rejects it, "
        "`review` sends it to a person, `pass` leaves it acceptable (within limits, cosmetic, or not real).",
    )
    matched_clauses: list[str] = Field(default_factory=list, description="Ids of the instruction's clauses it meets.")
    similar_cases: list[SimilarCase] = Field(
        default_factory=list, description="The most similar past cases of the knowledge base, best first."
    )


class ClauseResult(BaseModel):
    """How one clause of the instruction fared on this image."""

    id: str = Field(description="Clause id in the parsed query (c1, c2, ...).")
    text: str = Field(description="The clause as the operator wrote it, or its canonical label.")
    satisfied: bool = Field(description="Whether the clause holds on this image (probability >= 0.5).")
    count: int = Field(description="Findings that met the clause's class and constraints.")
    uncertain: bool = Field(False, description="The clause's probability lies in the review band.")


class ModelVersions(BaseModel):
    """Versions of every model and the knowledge-base snapshot that produced a verdict."""

    locator: str | None = Field(None, description="Detector weights: file name and sha256 prefix.")
    adapter: str | None = Field(None, description="The line's LoRA adapter: file name and sha256 prefix.")
    embedder: str | None = Field(None, description="Embedder architecture and checkpoint digest.")
    verifier: str | None = Field(None, description="Template lines: the class verifier's file and digest.")
    kb_snapshot: str | None = Field(None, description="Knowledge base: `<cases>@<digest>` at inspection time.")
    anomaly: str | None = Field(None, description="The line's anomaly model: method, backbone and bank digest.")


class AnomalySummary(BaseModel):
    """The whole image under the line's normal-only anomaly model."""

    score: float = Field(description="Image anomaly score: the largest patch distance to the normal memory bank.")
    threshold: float = Field(description="The line's calibrated image threshold (normal images lie below it).")
    anomalous: bool = Field(description="score > threshold.")
    peak: float = Field(description="The smoothed anomaly map's peak (what regions are cut at).")
    map_threshold: float = Field(description="The calibrated map threshold a region's peak is compared with.")


class Verdict(BaseModel):
    """The result for one image: the part's verdict under the line's rules, and the instruction's answer."""

    schema_version: str = Field(VERDICT_SCHEMA_VERSION, description="Version of this schema.")
    image: str = Field(description="The image path as given.")
    line: str = Field(description="Product line whose models and acceptance rules judged the image.")
    verdict: Literal["pass", "fail", "review"] = Field(
        description="The part's quality under the line's acceptance rules, whatever the instruction asked: `fail` "
        "(a defect rejects it), `review` (a finding is uncertain or at a limit: a person decides), `pass`. "
        "What an MES or a PLC acts on."
    )
    verdict_reasons: list[str] = Field(description="Why the part got its verdict: each deciding finding and rule.")
    matches_query: bool = Field(description="The instruction's answer: does this image show what was asked?")
    match_uncertain: bool = Field(
        False, description="The instruction's score lies in the review band: a person should confirm the answer."
    )
    score: float = Field(description="Probability that the image satisfies the instruction.")
    query_reasons: list[str] = Field(description="The instruction's answer clause by clause, then the logic.")
    clauses: list[ClauseResult] = Field(default_factory=list, description="Each clause of the instruction.")
    defects: list[DefectFinding] = Field(default_factory=list, description="Every finding, in reading order.")
    query: InspectionQuery | None = Field(None, description="The parsed instruction.")
    models: ModelVersions = Field(default_factory=ModelVersions, description="What produced this verdict.")
    anomaly: AnomalySummary | None = Field(
        None, description="Lines with an anomaly model: the image's score against the line's normal parts."
    )
    timings_ms: dict[str, float] = Field(default_factory=dict, description="Milliseconds per stage.")
    error: str | None = Field(
        None, description="Set when the image could not be inspected (verdict is then `review`, no defects)."
    )
    notes: list[str] = Field(
        default_factory=list,
        description="What the agent could not do for this image and why (e.g. similar cases unavailable).",
    )


def verdict_json_schema() -> dict[str, Any]:
    """JSON Schema (2020-12) of one verdict line, with an `$id` that names its version."""
    schema = Verdict.model_json_schema()
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": VERDICT_SCHEMA_ID,
        **schema,
    }
