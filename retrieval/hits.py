"""What retrieval returns for one query vector: past cases with their similarity and the engineers' conclusions."""

from __future__ import annotations

from pydantic import BaseModel, Field


class SimilarCase(BaseModel):
    """A past case returned by a knowledge-base search: its similarity to the query and the engineers' conclusions."""

    case_id: int = Field(description="Id of the case in the knowledge base (`defect-agent kb show ID`).")
    similarity: float = Field(description="Cosine similarity in [-1, 1] (inner product of normalised vectors).")
    line: str = Field(description="Product line of the case.")
    defect_class: str = Field(description="Defect class of the case.")
    disposition: str = Field(description="What was done with the part: scrap | rework | accept.")
    root_cause: str = Field("", description="Root cause the engineers found.")
    corrective_action: str = Field("", description="Corrective action taken.")
    report: str = Field("", description="The engineer's description of the defect.")
    # text search only (retrieval.ranking.hybrid_rank): the blended score that ordered the hits and the normalised
    # keyword (BM25) part; None for image / vector searches, which are ordered by `similarity`
    score: float | None = Field(None, description="Text search: the blended vector + keyword score; else null.")
    keyword_score: float | None = Field(None, description="Text search: the normalised keyword (BM25) part.")
