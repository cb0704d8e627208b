"""The derived FAISS index against SQLite: corruption and loss are detected with a rebuild hint, rebuild repairs,
out-of-band database edits are found by verify, schema migrations upgrade old databases, and large bases switch to
IVF. Vectors are given directly (no embedder needed)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from test_kb_support import case_input, make_image, unit

from knowledge_base import KnowledgeBase
from knowledge_base.db import DB_NAME
from knowledge_base.schema import LATEST, migrate
from retrieval.policy import IndexPolicy
from retrieval.store import IndexUnavailable


def _fill(kb: KnowledgeBase, tmp_path: Path, n: int, start: int = 0) -> list[int]:
    img = make_image(tmp_path / "img.png", "grey")
    items = [case_input(img, report=f"case {i}") for i in range(start, start + n)]
    cases = kb.add_many(items, vectors=[unit(i) for i in range(start, start + n)], model_version="m1", progress=False)
    return [c.id for c in cases]


def test_corrupt_index_is_detected_and_rebuild_repairs(tmp_path: Path) -> None:
    with KnowledgeBase.open(tmp_path / "kb") as kb:
        ids = _fill(kb, tmp_path, 20)
    index_file = tmp_path / "kb" / "index" / "vectors.faiss"
    data = bytearray(index_file.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte inside the vector data: faiss alone would not notice
    index_file.write_bytes(bytes(data))

    with KnowledgeBase.open(tmp_path / "kb") as kb:
        with pytest.raises(IndexUnavailable, match="corrupt.*defect-agent kb rebuild"):
            kb.search_by_vector(unit(3), k=1)
        report = kb.verify()
        assert not report.ok and "corrupt" in report.file_problem
        assert "defect-agent kb rebuild" in report.render()
        # a write while the index is unusable still lands in SQLite (the truth) and is indexed by the rebuild
        new_id = kb.add(case_input(make_image(tmp_path / "n.png", "red")), vector=unit(99), model_version="m1").id
        repaired = kb.rebuild(progress=False)
        assert repaired.ok and repaired.index_count == 21
        assert kb.search_by_vector(unit(3), k=1)[0].case_id == ids[3]
        assert kb.search_by_vector(unit(99), k=1)[0].case_id == new_id


def test_truncated_and_missing_index_files(tmp_path: Path) -> None:
    with KnowledgeBase.open(tmp_path / "kb") as kb:
        _fill(kb, tmp_path, 5)
    index_file = tmp_path / "kb" / "index" / "vectors.faiss"
    index_file.write_bytes(index_file.read_bytes()[:100])
    with KnowledgeBase.open(tmp_path / "kb") as kb:
        assert "corrupt" in kb.verify().file_problem
    index_file.unlink()
    with KnowledgeBase.open(tmp_path / "kb") as kb:
        with pytest.raises(IndexUnavailable, match="missing"):
            kb.search_by_vector(unit(1), k=1)
        assert "missing" in kb.verify().file_problem
        assert kb.rebuild(progress=False).ok
        assert len(kb.search_by_vector(unit(1), k=5)) == 5


def test_rows_changed_behind_the_index_are_found_and_fixed(tmp_path: Path) -> None:
    with KnowledgeBase.open(tmp_path / "kb") as kb:
        ids = _fill(kb, tmp_path, 10)
    # out-of-band edits with raw sqlite (no history entry, index untouched)
    raw = sqlite3.connect(tmp_path / "kb" / DB_NAME)
    raw.execute("DELETE FROM cases WHERE id = ?", (ids[4],))
    raw.execute("DELETE FROM vectors WHERE case_id = ?", (ids[4],))
    raw.commit()
    raw.close()

    with KnowledgeBase.open(tmp_path / "kb") as kb:
        report = kb.verify()
        assert not report.ok and report.extra_ids == [ids[4]] and report.count_mismatch
        assert report.n_extra == 1 and report.missing_ids == []
        # searches never return the vanished case even before the repair
        assert ids[4] not in [h.case_id for h in kb.search_by_vector(unit(4), k=10)]
        assert kb.rebuild(progress=False).ok
        assert kb.verify().index_count == 9

    raw = sqlite3.connect(tmp_path / "kb" / DB_NAME)
    raw.execute(
        "INSERT INTO cases (line, defect_class, image_path, image_sha256, disposition, created_at, updated_at)"
        " VALUES ('battery_tab', 'crack', 'images/x.png', 'x', 'scrap', '2025-01-01T00:00:00.000000+00:00',"
        " '2025-01-01T00:00:00.000000+00:00')"
    )
    new_id = raw.execute("SELECT MAX(id) FROM cases").fetchone()[0]
    raw.execute("INSERT INTO vectors VALUES (?, 'm1', 32, ?)", (new_id, unit(77).astype("<f4").tobytes()))
    raw.commit()
    raw.close()
    with KnowledgeBase.open(tmp_path / "kb") as kb:
        report = kb.verify()
        assert report.missing_ids == [new_id] and not report.ok
        assert report.keyword_index_mismatch
        assert kb.rebuild(progress=False).ok


def test_index_lagging_on_disk_is_replayed_not_lost(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import knowledge_base.index_sync as sync

    with KnowledgeBase.open(tmp_path / "kb") as kb:
        _fill(kb, tmp_path, 5)
    # pretend the index is large: single writes no longer rewrite the file
    monkeypatch.setattr(sync, "PERSIST_EVERY_BYTES", 0)
    kb = KnowledgeBase.open(tmp_path / "kb")
    late = kb.add(case_input(make_image(tmp_path / "l.png", "red")), vector=unit(50), model_version="m1")
    kb.conn.close()  # crash without close(): the file still has 5 vectors
    with KnowledgeBase.open(tmp_path / "kb") as kb2:
        report = kb2.verify()
        assert report.ok and report.pending_ops == 1 and report.index_count == 6
        assert kb2.search_by_vector(unit(50), k=1)[0].case_id == late.id


def test_migrations_upgrade_an_old_schema(tmp_path: Path) -> None:
    kb_dir = tmp_path / "kb"
    kb_dir.mkdir()
    raw = sqlite3.connect(kb_dir / DB_NAME, isolation_level=None)
    assert migrate(raw, target=1) == [1]
    img = make_image(tmp_path / "a.png", "red")
    from knowledge_base.images import ImageStore

    stored = ImageStore(kb_dir).put(img.read_bytes(), ".png")
    raw.execute(
        "INSERT INTO cases (line, defect_class, image_path, image_sha256, report, disposition, created_at,"
        " updated_at) VALUES ('battery_tab', 'spatter', ?, ?, 'old weld spatter report', 'rework',"
        " '2023-05-01T00:00:00.000000+00:00', '2023-05-01T00:00:00.000000+00:00')",
        (stored.rel_path, stored.sha256),
    )
    raw.execute("INSERT INTO vectors VALUES (1, 'm1', 32, ?)", (unit(5).astype("<f4").tobytes(),))
    raw.execute("INSERT INTO meta VALUES ('dim', '32'), ('model_version', 'm1')")
    raw.close()

    with KnowledgeBase.open(kb_dir) as kb:
        versions = [r[0] for r in kb.conn.execute("SELECT version FROM schema_version ORDER BY version")]
        assert versions == list(range(1, LATEST + 1))
        assert kb.get(1).report == "old weld spatter report"
        # v2 back-filled the keyword index from the old rows
        assert [h.case_id for h in kb.search_by_text("spatter", k=1, keyword_weight=1.0)] == [1]
        # the index never existed: it is built from the stored vectors
        assert kb.search_by_vector(unit(5), k=1)[0].case_id == 1
    with KnowledgeBase.open(kb_dir) as kb:  # idempotent
        assert kb.conn.execute("SELECT COUNT(*) FROM schema_version").fetchone()[0] == LATEST


def test_large_base_uses_ivf_and_stays_consistent(tmp_path: Path) -> None:
    policy = IndexPolicy(exact_below=200, min_nprobe=64)
    with KnowledgeBase.open(tmp_path / "kb", policy=policy) as kb:
        ids = _fill(kb, tmp_path, 150)
        assert kb.index.ready().spec.kind == "flat"
        ids += _fill(kb, tmp_path, 150, start=150)  # crosses exact_below: retrained as IVF
        vindex = kb.index.ready()
        assert vindex.spec.kind == "ivf" and vindex.spec.nlist >= 2 and vindex.ntotal == 300
        assert kb.search_by_vector(unit(200), k=1)[0].case_id == ids[200]
        kb.remove(ids[200])  # IVF removes in place
        assert ids[200] not in [h.case_id for h in kb.search_by_vector(unit(200), k=10)]
        # a filter matching one case still finds it through the approximate index
        kb.edit(ids[7], line="pcb")
        assert [h.case_id for h in kb.search_by_vector(unit(123), k=3, line="pcb")] == [ids[7]]
    with KnowledgeBase.open(tmp_path / "kb", policy=policy) as kb:
        report = kb.verify()
        assert report.ok and report.index_kind.startswith("IVF") and report.index_count == 299
        assert kb.rebuild(progress=False).index_kind.startswith("IVF")


def test_hnsw_option_rebuilds_on_delete(tmp_path: Path) -> None:
    policy = IndexPolicy(kind="hnsw", hnsw_m=8, hnsw_ef_construction=40, hnsw_ef_search=64)
    with KnowledgeBase.open(tmp_path / "kb", policy=policy) as kb:
        ids = _fill(kb, tmp_path, 40)
        assert kb.index.ready().spec.kind == "hnsw"
        kb.remove(ids[3])
        assert ids[3] not in [h.case_id for h in kb.search_by_vector(unit(3), k=40)]
        assert kb.verify().ok and kb.verify().index_count == 39
