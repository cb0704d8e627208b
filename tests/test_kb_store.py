"""Knowledge base behaviour: add / search / edit / remove visible at once, soft history, restore, filters,
content-addressed images, embedder-version safety, export, prototypes. Uses the HistogramEmbedder test double
(tests/test_kb_support.py) in place of the real embedder, which is a separate component."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import cv2
import numpy as np
import pytest
from test_kb_support import HistogramEmbedder, case_input, make_image, unit

from defect_agent.errors import DefectAgentError
from knowledge_base import KnowledgeBase
from knowledge_base.kb import CaseNotFound, ModelVersionMismatch
from vision.detection import Box


@pytest.fixture()
def kb(tmp_path: Path):
    base = KnowledgeBase.open(tmp_path / "kb", embedder=HistogramEmbedder())
    yield base
    base.close()


def _ids(hits) -> list[int]:
    return [h.case_id for h in hits]


def test_add_search_edit_remove_are_visible_at_once(kb: KnowledgeBase, tmp_path: Path) -> None:
    red = kb.add(
        case_input(
            make_image(tmp_path / "red.png", "red"),
            report="spatter on the weld",
            root_cause="dirty electrode",
            corrective_action="clean electrode",
        )
    )
    blue = kb.add(case_input(make_image(tmp_path / "blue.png", "blue"), defect_class="crack", disposition="scrap"))
    query = cv2.imread(str(make_image(tmp_path / "q.png", "red", seed=9)))

    hits = kb.search_by_image(query, None, k=2)
    assert _ids(hits) == [red.id, blue.id]
    assert hits[0].similarity > 0.95 and hits[0].similarity > hits[1].similarity
    assert hits[0].root_cause == "dirty electrode" and hits[0].corrective_action == "clean electrode"
    assert hits[0].disposition == "rework"

    # an edit of text fields shows in the next search's hits
    kb.edit(red.id, disposition="scrap", root_cause="electrode wear")
    hit = kb.search_by_image(query, None, k=1)[0]
    assert (hit.case_id, hit.disposition, hit.root_cause) == (red.id, "scrap", "electrode wear")

    # a new image re-embeds the case: it now matches a green query, no longer the red one
    kb.edit(red.id, image_path=str(make_image(tmp_path / "green.png", "green")))
    assert kb.search_by_image(query, None, k=1)[0].similarity < 0.5
    green_query = cv2.imread(str(make_image(tmp_path / "gq.png", "green", seed=4)))
    assert kb.search_by_image(green_query, None, k=1)[0].case_id == red.id

    kb.remove(blue.id)
    assert blue.id not in _ids(kb.search_by_image(query, None, k=5))
    assert _ids(kb.search_by_image(query, None, k=5)) == [red.id]
    with pytest.raises(CaseNotFound, match="restore"):
        kb.get(blue.id)


def test_history_keeps_removed_and_edited_cases_and_restore_brings_back(kb: KnowledgeBase, tmp_path: Path) -> None:
    case = kb.add(case_input(make_image(tmp_path / "a.png", "yellow"), report="first words"))
    kb.edit(case.id, report="second words")
    kb.remove(case.id)
    assert kb.count() == 0
    history = kb.history(case.id)
    assert [h.op for h in history] == ["add", "edit", "remove"]
    assert history[1].before.report == "first words" and history[1].after.report == "second words"
    assert history[2].before.report == "second words" and history[2].after is None
    assert Path(history[2].before.image_path).is_file()  # the image stays in the store

    restored = kb.restore(case.id)
    assert restored.id == case.id and restored.report == "second words"
    query = cv2.imread(str(make_image(tmp_path / "q.png", "yellow", seed=3)))
    assert _ids(kb.search_by_image(query, None, k=1)) == [case.id]
    # ids are never reused: the next case gets a new one
    other = kb.add(case_input(make_image(tmp_path / "b.png", "grey")))
    assert other.id > case.id


def test_images_are_content_addressed_and_deduplicated(kb: KnowledgeBase, tmp_path: Path) -> None:
    src = make_image(tmp_path / "src" / "x.png", "green", seed=5)
    a = kb.add(case_input(src, report="one"))
    copy = tmp_path / "elsewhere.png"
    copy.write_bytes(src.read_bytes())
    b = kb.add(case_input(copy, defect_class="crack"))
    assert a.image_sha256 == b.image_sha256 and a.image_path == b.image_path
    stored = Path(a.image_path)
    assert stored.is_file() and stored.parent.name == a.image_sha256[:2] and stored.stem == a.image_sha256[2:]
    assert stored.parent.parent == kb.kb_dir / "images"
    src.unlink()  # the case no longer depends on the original file
    assert kb.get(a.id).image_path == str(stored)
    assert len(list((kb.kb_dir / "images").rglob("*.png"))) == 1


def test_box_region_is_what_gets_embedded(kb: KnowledgeBase, tmp_path: Path) -> None:
    # left half red, right half blue: the box picks which colour the case vector describes
    img = np.zeros((64, 128, 3), dtype=np.uint8)
    img[:, :64] = (30, 30, 220)
    img[:, 64:] = (210, 60, 30)
    path = tmp_path / "split.png"
    cv2.imwrite(str(path), img)
    left = kb.add(case_input(path, box=Box(x1=8, y1=16, x2=40, y2=48)))
    right = kb.add(case_input(path, box=Box(x1=88, y1=16, x2=120, y2=48)))
    red = cv2.imread(str(make_image(tmp_path / "r.png", "red")))
    assert kb.search_by_image(red, None, k=1)[0].case_id == left.id
    assert kb.search_by_image(img, Box(x1=90, y1=10, x2=120, y2=50), k=1)[0].case_id == right.id
    with pytest.raises(DefectAgentError, match="outside"):
        kb.add(case_input(path, box=Box(x1=500, y1=500, x2=600, y2=600)))


def test_filters_line_class_disposition_and_dates(kb: KnowledgeBase, tmp_path: Path) -> None:
    old = datetime(2024, 1, 10, tzinfo=UTC)
    img = make_image(tmp_path / "r.png", "red")
    a = kb.add(case_input(img, line="battery_tab", defect_class="spatter", disposition="rework"), created_at=old)
    b = kb.add(case_input(img, line="pcb", defect_class="spatter", disposition="scrap"))
    c = kb.add(case_input(img, line="battery_tab", defect_class="crack", disposition="scrap"))
    q = unit(1)
    vec = kb.search_by_vector
    assert set(_ids(vec(_vec(kb, a.id), k=5, line="battery_tab"))) == {a.id, c.id}
    assert _ids(vec(q, k=5, line="pcb")) == [b.id]
    assert set(_ids(vec(q, k=5, disposition="scrap"))) == {b.id, c.id}
    assert _ids(vec(q, k=5, line="battery_tab", defect_class="crack")) == [c.id]
    assert _ids(vec(q, k=5, until=datetime(2025, 1, 1))) == [a.id]
    assert set(_ids(vec(q, k=5, since=datetime.now(UTC) - timedelta(hours=1)))) == {b.id, c.id}
    assert vec(q, k=5, line="no_such_line") == []
    assert [x.id for x in kb.list(line="battery_tab", disposition="scrap")] == [c.id]
    assert kb.count(defect_class="spatter") == 2


def _vec(kb: KnowledgeBase, case_id: int) -> np.ndarray:
    row = kb.conn.execute("SELECT vector FROM vectors WHERE case_id = ?", (case_id,)).fetchone()
    return np.frombuffer(row[0], dtype="<f4")


def test_search_by_case_excludes_itself(kb: KnowledgeBase, tmp_path: Path) -> None:
    a = kb.add(case_input(make_image(tmp_path / "a.png", "red", seed=1)))
    b = kb.add(case_input(make_image(tmp_path / "b.png", "red", seed=2)))
    c = kb.add(case_input(make_image(tmp_path / "c.png", "blue", seed=3)))
    assert _ids(kb.search_by_case(a.id, k=2)) == [b.id, c.id]


def test_vectors_without_embedder_and_version_safety(tmp_path: Path) -> None:
    img = make_image(tmp_path / "a.png", "red")
    with KnowledgeBase.open(tmp_path / "kb") as kb:
        with pytest.raises(DefectAgentError, match="needs an embedder"):
            kb.add(case_input(img))
        assert kb.count() == 0 and not list((tmp_path / "kb" / "images").rglob("*.png"))
        kb.add(case_input(img), vector=unit(1), model_version="test-hist-v1")
        with pytest.raises(DefectAgentError, match="dimension"):
            kb.add(case_input(img), vector=np.ones(8, dtype=np.float32))
        with pytest.raises(ModelVersionMismatch, match="rebuild --reembed"):
            kb.add(case_input(img), vector=unit(2), model_version="other-model")
        assert kb.count() == 1
    # a different embedder must not query vectors it did not make
    with KnowledgeBase.open(tmp_path / "kb", embedder=HistogramEmbedder(version="v2")) as kb:
        with pytest.raises(ModelVersionMismatch):
            kb.search_by_vector(unit(3), k=1)
        report = kb.verify()
        assert not report.ok and report.model_version_mismatch
        kb.rebuild(reembed=True, progress=False)
        assert kb.verify().ok and kb.index.model_version() == "v2"
        assert len(kb.search_by_vector(unit(3), k=1)) == 1


def test_text_search_blends_keywords_and_vectors(kb: KnowledgeBase, tmp_path: Path) -> None:
    img = make_image(tmp_path / "a.png", "grey")
    spatter = kb.add(case_input(img, report="heavy weld spatter on the tab", root_cause="current too high"))
    crack = kb.add(case_input(img, defect_class="crack", report="hairline crack along the bend"))
    zh = kb.add(case_input(img, report="极耳焊接处有焊渣飞溅", corrective_action="降低焊接电流"))
    hits = kb.search_by_text("spatter", k=3, keyword_weight=1.0)
    assert hits[0].case_id == spatter.id and hits[0].keyword_score == 1.0
    assert _ids(kb.search_by_text("cracks", k=1, keyword_weight=1.0)) == [crack.id]  # stemmed
    assert _ids(kb.search_by_text("焊渣", k=1, keyword_weight=1.0)) == [zh.id]
    assert _ids(kb.search_by_text("焊接电流", k=1, keyword_weight=1.0)) == [zh.id]
    assert kb.search_by_text("spatter", k=3, keyword_weight=1.0, line="pcb") == []
    blended = kb.search_by_text("spatter", k=3, keyword_weight=0.5)
    assert all(h.score is not None for h in blended) and blended[0].case_id == spatter.id


def test_export_jsonl_and_prototypes_and_snapshot(kb: KnowledgeBase, tmp_path: Path) -> None:
    a = kb.add(case_input(make_image(tmp_path / "a.png", "red"), measurements={"offset_mm": 0.41}))
    kb.add(case_input(make_image(tmp_path / "b.png", "red", 2), defect_class="crack", disposition="accept"))
    snap = kb.snapshot_id()
    out = tmp_path / "out" / "kb.jsonl"
    assert kb.export(out, include_vectors=True) == 2
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert rows[0]["id"] == a.id and rows[0]["measurements"] == {"offset_mm": 0.41}
    assert len(rows[0]["vector"]) == 32 and rows[0]["model_version"] == "test-hist-v1"
    protos = kb.class_prototypes("battery_tab")
    assert set(protos) == {"spatter"}  # the accepted crack is not a defect prototype
    assert abs(float(np.linalg.norm(protos["spatter"])) - 1.0) < 1e-5
    kb.edit(a.id, report="changed")
    assert kb.snapshot_id() != snap and kb.snapshot_id().startswith("2@")


def test_texture_prototypes_leave_out_the_lines_measured_defects(kb: KnowledgeBase, tmp_path: Path) -> None:
    from agent.pipeline import _kb_prototypes
    from defect_agent.config import load_line

    kb.add(case_input(make_image(tmp_path / "a.png", "red")))
    kb.add(case_input(make_image(tmp_path / "b.png", "blue"), defect_class="weld_offset"))
    assert set(kb.class_prototypes("battery_tab")) == {"spatter", "weld_offset"}  # the case is kept and retrievable
    protos = _kb_prototypes(kb, load_line("battery_tab"))
    assert protos is not None and set(protos) == {"spatter"}  # a measured defect has no texture to score
