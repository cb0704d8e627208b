"""The knowledge base with the shipped open_clip embedder on the real sample crops (the other KB tests use a
deterministic colour-histogram double to pin exact orderings): a stored crop finds itself first, its class
dominates its neighbours, text finds the right class, and a removal or an edit shows in search at once."""

from __future__ import annotations

from collections import Counter

import pytest

from knowledge_base.sample import sample_cases


@pytest.fixture(scope="module")
def kb(tmp_path_factory):
    from defect_agent.config import load_app_config
    from knowledge_base import KnowledgeBase
    from vision.embedder import load_embedder

    kb = KnowledgeBase.open(tmp_path_factory.mktemp("kb") / "kb", embedder=load_embedder(load_app_config().embedder))
    kb.add_many(sample_cases(), progress=False)
    yield kb
    kb.close()


def test_each_crop_finds_itself_and_its_class(kb):
    cases = kb.list()
    assert len(cases) == 40
    agree = 0
    for case in cases:
        hits = kb.search_by_image(kb.images.absolute(case.image_path), k=5, line="battery_tab")
        assert hits[0].case_id == case.id and hits[0].similarity > 0.99
        agree += Counter(h.defect_class for h in hits[1:]).most_common(1)[0][0] == case.defect_class
    assert agree >= 32, f"neighbours share the class for only {agree}/40 cases"


def test_text_search_names_the_class(kb):
    for text, cls in [
        ("spatter beads around the weld", "spatter"),
        ("极耳上有细长的暗色裂纹", "crack"),
        ("dark burn mark with discoloured edges", "burn"),
    ]:
        hits = kb.search_by_text(text, k=3, line="battery_tab")
        assert hits[0].defect_class == cls, (text, [h.defect_class for h in hits])


def test_remove_and_edit_show_in_search_at_once(kb):
    case = next(c for c in kb.list() if c.defect_class == "crack")
    image = kb.images.absolute(case.image_path)
    kb.edit(case.id, disposition="accept")
    assert kb.search_by_image(image, k=1)[0].disposition == "accept"
    kb.remove(case.id)
    assert case.id not in {h.case_id for h in kb.search_by_image(image, k=10)}
    assert kb.verify().ok
