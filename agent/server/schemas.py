"""What crosses the HTTP boundary: the same pydantic models as the CLI (InspectionQuery, Verdict, Case,
SimilarCase) wrapped in small request / response models, so the OpenAPI document is generated from them."""

from __future__ import annotations

from pydantic import BaseModel, Field

from agent.query import InspectionQuery
from agent.verdict import Verdict
from knowledge_base.case import Case, Disposition
from retrieval.hits import SimilarCase
from vision.detection import Box


class ErrorBody(BaseModel):
    """Every 4xx / 5xx answer: one line that says what was wrong and what to do."""

    error: str = Field(description="Short kind of error, e.g. `bad_instruction`, `unknown_line`, `too_large`.")
    detail: str = Field(description="What was wrong and what to do about it.")


class Health(BaseModel):
    """The server is up; which lines it serves and which it has loaded."""

    status: str = Field(description="`ok` when the server answers.")
    version: str = Field(description="defect-agent version.")
    lines: list[str] = Field(description="Product lines configured.")
    loaded: list[str] = Field(description="Lines whose models are loaded (each loads on first use, then stays).")


class LineTerm(BaseModel):
    """A defect class of a line with the words operators may type for it (completion on the page)."""

    name: str = Field(description="Canonical class name.")
    en: list[str] = Field(description="English words for it.")
    zh: list[str] = Field(description="Chinese words for it.")
    role: str = Field(
        description="`defect`, `derived` (measured from parts), `part` (never a defect) or `anomaly` (a region of "
        "the line's anomaly model that no example names)."
    )


class LineInfo(BaseModel):
    """A product line as the page and line software see it."""

    name: str = Field(description="Line name, used as `line` in requests.")
    title_en: str = Field(description="English title.")
    title_zh: str = Field(description="Chinese title.")
    terms: list[LineTerm] = Field(description="Defect classes and their words.")
    example_en: str = Field(description="An instruction that works on this line, in English.")
    example_zh: str = Field(description="The same in Chinese.")


class InspectedImage(BaseModel):
    """One inspected image: its verdict and where the page fetches the image."""

    name: str = Field(description="The file name as uploaded, or the path under the capture root.")
    image_id: str = Field(description="Content hash; GET /images/{image_id} returns the image.")
    verdict: Verdict = Field(description="The verdict (schema 2.0), the same JSON as one line of `inspect --out`.")


class InspectResponse(BaseModel):
    """The answer of POST /inspect: the parsed instruction and one verdict per image, in order."""

    query: InspectionQuery = Field(description="The instruction as the agent understood it.")
    images: list[InspectedImage] = Field(description="One entry per image, in the order given.")
    counts: dict[str, int] = Field(description="Images per part verdict (fail / review / pass) and matching.")


class CaseCreate(BaseModel):
    """A confirmed finding saved as a new knowledge-base case (the page's "save as case")."""

    line: str = Field(description="Product line of the part.")
    defect_class: str = Field(description="Class name or any of its synonyms (zh / en) on that line.")
    image_id: str = Field(description="An image inspected by this server (from POST /inspect).", min_length=8)
    box: Box | None = Field(None, description="Defect region in pixels; null: the whole image.")
    disposition: Disposition = Field(description="scrap | rework | accept.")
    report: str = Field("", description="The engineer's or operator's description.", max_length=4000)
    root_cause: str = Field("", max_length=2000, description="Root cause, if known.")
    corrective_action: str = Field("", max_length=2000, description="Corrective action, if any.")
    author: str = Field("", max_length=200, description="Who confirmed it.")
    measurements: dict[str, float] = Field(default_factory=dict, description="Measurements in mm (finite).")


class NormalMark(BaseModel):
    """An anomaly the engineer declares normal (a false alarm): the image joins the line's normal model."""

    image_id: str = Field(description="An image inspected by this server (from POST /inspect).", min_length=8)
    author: str = Field("", max_length=200, description="Who declared it normal.")


class NormalMarked(BaseModel):
    """What marking an image normal did."""

    line: str = Field(description="The line whose anomaly model learned the image.")
    patches_added: int = Field(description="Patch features of the image that joined the normal memory bank.")


class CaseOut(BaseModel):
    """A stored case and the address of its image."""

    case: Case = Field(description="The knowledge-base record.")
    image_url: str = Field(description="GET this for the case's image.")


class SearchResponse(BaseModel):
    """Cases most similar to a text or to a stored case."""

    hits: list[SimilarCase] = Field(description="Best first.")
