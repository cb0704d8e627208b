"""What retrieval returns for one query vector: past cases with their similarity and the engineers' conclusions."""

from __future__ import annotations

from pydantic import BaseModel


class SimilarCase(BaseModel):
    case_id: int
    similarity: float  # cosine similarity in [-1, 1] (inner product of normalised vectors)
    line: str
    defect_class: str
    disposition: str  # scrap | rework | accept
    root_cause: str = ""
    corrective_action: str = ""
    report: str = ""
    # text search only (retrieval.ranking.hybrid_rank): the blended score that ordered the hits and the normalised
    # keyword (BM25) part; None for image / vector searches, which are ordered by `similarity`
    score: float | None = None
    keyword_score: float | None = None
