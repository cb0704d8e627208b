"""Hybrid ranking for text queries: vector similarity (text embedding vs case image embeddings) blended with a
keyword score over the engineers' words (report, root cause, corrective action).

Keyword scores come from SQLite FTS5's BM25 over text tokenised here, so that Chinese reports work: latin words are
lower-cased and lightly stemmed, runs of CJK characters become overlapping character bigrams (Chinese has no spaces;
bigrams are the usual unit for search over short technical texts). The same tokeniser feeds the FTS index and the
queries, so both sides always agree."""

from __future__ import annotations

import re
from dataclasses import dataclass

from pydantic import BaseModel, Field

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")
_TOKEN = re.compile(r"[a-z0-9]+(?:[._][a-z0-9]+)*|[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")
_STOP = frozenset("a an and are as at be by for from has have in is it of on or the to was were with".split())


def _stem(word: str) -> str:
    # light plural / verb-form folding: "cracks"->"crack", "welded"->"weld"; consistent on both sides is what counts
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 4 and word.endswith("ed") and not word.endswith("eed"):
        return word[:-2]
    if len(word) > 5 and word.endswith("ing"):
        return word[:-3]
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def tokenize(text: str) -> list[str]:
    """Search tokens of a text: stemmed latin words (stop words dropped) and CJK character bigrams."""
    tokens: list[str] = []
    for match in _TOKEN.finditer(text.lower()):
        part = match.group(0)
        if _CJK.fullmatch(part):
            if len(part) == 1:
                tokens.append(part)
            else:
                tokens.extend(part[i : i + 2] for i in range(len(part) - 1))
        elif part not in _STOP:
            tokens.append(_stem(part))
    return tokens


def fts_document(*texts: str) -> str:
    """The body stored in the FTS index: tokens joined by spaces (FTS5's default tokenizer then splits on them)."""
    return " ".join(tok for text in texts if text for tok in tokenize(text))


def fts_query(text: str) -> str | None:
    """An FTS5 MATCH expression (OR of quoted tokens) or None when the text has no searchable token."""
    tokens = list(dict.fromkeys(tokenize(text)))
    if not tokens:
        return None
    return " OR ".join('"' + tok.replace('"', '""') + '"' for tok in tokens)


class RankingConfig(BaseModel):
    """How text queries are ranked. `keyword_weight` 0 = vectors only, 1 = keywords only."""

    keyword_weight: float = Field(0.35, ge=0.0, le=1.0)
    candidates_per_k: int = Field(10, ge=1)  # each source proposes k * this many candidates before blending


@dataclass(frozen=True)
class Ranked:
    """One candidate of a hybrid text search with the blended score that orders it and both of its parts."""

    case_id: int
    score: float  # blended score used for the order
    similarity: float | None  # cosine similarity of the case vector to the query vector (None: no vector used)
    keyword_score: float  # BM25 normalised to [0, 1] by the best candidate's


def hybrid_rank(similarities: dict[int, float], keyword: dict[int, float], weight: float, k: int) -> list[Ranked]:
    """Blend per-candidate cosine similarity and raw BM25 scores; returns the best k.

    BM25 is unbounded, so it is divided by the best candidate's score (the top keyword match scores 1). Cosine
    similarity is mapped from [-1, 1] to [0, 1] so both terms share a range. A candidate missing from one source
    scores 0 there. With no similarities at all (no embedder), the order is the keyword order."""
    if not similarities:
        weight = 1.0
    top_kw = max(keyword.values(), default=0.0)
    ranked: list[Ranked] = []
    for case_id in set(similarities) | set(keyword):
        kw = keyword.get(case_id, 0.0) / top_kw if top_kw > 0 else 0.0
        sim = similarities.get(case_id)
        vec_part = 0.0 if sim is None else (sim + 1.0) / 2.0
        ranked.append(Ranked(case_id, (1.0 - weight) * vec_part + weight * kw, sim, kw))
    ranked.sort(key=lambda r: (-r.score, r.case_id))
    return ranked[:k]
