"""Past cases similar to a detected defect crop or to a question in words: the knowledge base asked through its
embedder (the pipeline itself embeds each crop once and calls `KnowledgeBase.search_by_vector`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from retrieval.embedding import Embeds
from retrieval.hits import SimilarCase
from vision.detection import Box

if TYPE_CHECKING:
    from knowledge_base.kb import KnowledgeBase


class Retriever:
    """Embeds a query (crop or text) and asks the knowledge base for the k most similar cases of a product line."""

    def __init__(self, kb: KnowledgeBase, embedder: Embeds, k: int = 5) -> None:
        self.kb = kb
        self.embedder = embedder
        self.k = k

    def embed_crop(self, image: np.ndarray, box: Box | None) -> np.ndarray:
        from vision.crops import crop_region

        return np.asarray(self.embedder.embed_images([crop_region(image, box)]), dtype=np.float32)[0]

    def for_crop(
        self, image: np.ndarray, box: Box | None, line: str | None = None, k: int | None = None
    ) -> list[SimilarCase]:
        """Cases like the region `box` of a BGR image (crop_region: the same crop the cases were embedded from)."""
        return self.kb.search_by_vector(self.embed_crop(image, box), k=k or self.k, line=line)

    def for_vector(self, vector: np.ndarray, line: str | None = None, k: int | None = None) -> list[SimilarCase]:
        """For callers that already embedded the crop (the pipeline embeds once for texture and retrieval)."""
        return self.kb.search_by_vector(vector, k=k or self.k, line=line)

    def for_text(self, text: str, line: str | None = None, k: int | None = None) -> list[SimilarCase]:
        """Cases matching a description: text embedding blended with keywords (retrieval.ranking)."""
        return self.kb.search_by_text(text, k=k or self.k, line=line)
