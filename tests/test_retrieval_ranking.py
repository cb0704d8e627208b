"""Tokeniser (English stemming, Chinese bigrams) and the hybrid vector + keyword ranking; the Retriever facade.
The Retriever test uses the HistogramEmbedder test double in place of the real embedder (a separate component)."""

from __future__ import annotations

from pathlib import Path

import cv2
from test_kb_support import HistogramEmbedder, case_input, make_image

from knowledge_base import KnowledgeBase
from knowledge_base.retriever import Retriever
from retrieval.ranking import fts_query, hybrid_rank, tokenize
from vision.detection import Box


def test_tokenize_english_and_chinese() -> None:
    assert tokenize("Cracks in the welded Tabs") == ["crack", "weld", "tab"]
    assert tokenize("焊渣飞溅") == ["焊渣", "渣飞", "飞溅"]
    assert tokenize("裂 offset_mm 0.3") == ["裂", "offset_mm", "0.3"]
    assert fts_query("the and") is None
    assert fts_query('say "spatter"') == '"say" OR "spatter"'


def test_hybrid_rank_blends_and_falls_back_to_keywords() -> None:
    sims = {1: 0.9, 2: -0.2, 3: 0.6}
    kw = {2: 8.0, 3: 6.0}
    assert [r.case_id for r in hybrid_rank(sims, kw, weight=0.0, k=3)] == [1, 3, 2]
    assert [r.case_id for r in hybrid_rank(sims, kw, weight=1.0, k=3)] == [2, 3, 1]
    mid = hybrid_rank(sims, kw, weight=0.5, k=3)
    # 3: (0.8 + 0.75) / 2 = 0.775 beats 2: (0.4 + 1) / 2 = 0.7 and 1: 0.95 / 2: neither extreme's winner
    assert [r.case_id for r in mid] == [3, 2, 1] and mid[0].keyword_score == 0.75
    only_kw = hybrid_rank({}, kw, weight=0.2, k=1)
    assert only_kw[0].case_id == 2 and only_kw[0].similarity is None


def test_retriever_for_crop_and_text(tmp_path: Path) -> None:
    emb = HistogramEmbedder()
    with KnowledgeBase.open(tmp_path / "kb", embedder=emb) as kb:
        a = kb.add(case_input(make_image(tmp_path / "a.png", "red"), report="spatter beads near the weld"))
        kb.add(case_input(make_image(tmp_path / "b.png", "red", seed=3), line="pcb", report="spatter"))
        c = kb.add(case_input(make_image(tmp_path / "c.png", "blue"), defect_class="crack", report="crack at bend"))
        r = Retriever(kb, emb, k=2)
        image = cv2.imread(str(make_image(tmp_path / "q.png", "red", seed=7)))
        hits = r.for_crop(image, Box(x1=10, y1=10, x2=40, y2=40), line="battery_tab")
        assert [h.case_id for h in hits] == [a.id, c.id] and hits[0].similarity > hits[1].similarity
        assert [h.case_id for h in r.for_text("crack", line="battery_tab", k=1)] == [c.id]
        assert r.for_vector(emb.embed_images([image])[0], line="pcb")[0].line == "pcb"
