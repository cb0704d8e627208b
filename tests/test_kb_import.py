"""Bulk import: bad rows are reported by line number and skipped, good rows go in together, a failure during the
commit leaves nothing behind, and an export with vectors re-imports without re-embedding. The HistogramEmbedder
test double stands in for the real embedder (a separate component)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_kb_support import HistogramEmbedder, make_image

from knowledge_base import KnowledgeBase
from knowledge_base.importer import import_cases

HEADER = "image,line,class,disposition,box,report,root_cause,action,author,measurements,created_at\n"


def test_csv_with_bad_rows_imports_the_good_ones(tmp_path: Path) -> None:
    make_image(tmp_path / "imgs" / "a.png", "red")
    make_image(tmp_path / "imgs" / "b.png", "blue")
    (tmp_path / "imgs" / "broken.png").write_bytes(b"not an image")
    csv = tmp_path / "cases.csv"
    csv.write_text(
        HEADER + 'imgs/a.png,battery_tab,spatter,rework,"4,4,40,30",spatter on weld,current high,lower current,li,'
        '"{""offset_mm"": 0.3}",2024-03-01\n'  # line 2: good
        + "imgs/missing.png,battery_tab,spatter,rework,,,,,,,\n"  # line 3: no such file
        + "imgs/b.png,battery_tab,crack,maybe,,,,,,,\n"  # line 4: bad disposition
        + "imgs/broken.png,battery_tab,crack,scrap,,,,,,,\n"  # line 5: not an image
        + 'imgs/b.png,battery_tab,crack,scrap,"1,2,3",,,,,,\n'  # line 6: bad box
        + "imgs/b.png,pcb,crack,scrap,,hairline crack,,,,,\n"  # line 7: good
        + ",battery_tab,crack,scrap,,,,,,,\n",  # line 8: no image
        encoding="utf-8",
    )
    with KnowledgeBase.open(tmp_path / "kb", embedder=HistogramEmbedder()) as kb:
        report = import_cases(kb, csv, progress=False)
        assert report.rows == 7 and len(report.imported) == 2
        assert [e.row for e in report.errors] == [3, 4, 5, 6, 8]
        messages = {e.row: e.message for e in report.errors}
        assert "not found" in messages[3] and "disposition" in messages[4] and "decode" in messages[5]
        assert "4 numbers" in messages[6] and "image" in messages[8]
        first = kb.get(report.imported[0])
        assert first.box is not None and first.box.x2 == 40 and first.measurements == {"offset_mm": 0.3}
        assert first.corrective_action == "lower current" and first.created_at.year == 2024
        assert kb.verify().ok and kb.verify().index_count == 2


def test_folder_with_jsonl_sidecar(tmp_path: Path) -> None:
    folder = tmp_path / "batch"
    make_image(folder / "x.png", "green")
    lines = [
        {
            "image": "x.png",
            "line": "battery_tab",
            "defect_class": "burn",
            "disposition": "scrap",
            "box": [2, 2, 30, 30],
            "report": "burn mark",
        },
        {"image": "x.png", "line": "battery_tab", "disposition": "scrap"},
    ]
    (folder / "cases.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n{oops\n", encoding="utf-8")
    with KnowledgeBase.open(tmp_path / "kb", embedder=HistogramEmbedder()) as kb:
        report = import_cases(kb, folder, progress=False)
        assert len(report.imported) == 1 and [e.row for e in report.errors] == [2, 3]
        assert "defect_class" in report.errors[0].message and "JSON" in report.errors[1].message


def test_failure_during_import_writes_nothing(tmp_path: Path) -> None:
    class Exploding(HistogramEmbedder):
        def embed_images(self, images):
            raise RuntimeError("embedder crashed")

    make_image(tmp_path / "a.png", "red")
    make_image(tmp_path / "b.png", "blue")
    csv = tmp_path / "c.csv"
    csv.write_text(HEADER + "a.png,battery_tab,spatter,rework,,,,,,,\nb.png,battery_tab,crack,scrap,,,,,,,\n")
    with KnowledgeBase.open(tmp_path / "kb", embedder=Exploding()) as kb:
        with pytest.raises(RuntimeError, match="crashed"):
            import_cases(kb, csv, progress=False)
        assert kb.count() == 0
        assert kb.conn.execute("SELECT COUNT(*) FROM history").fetchone()[0] == 0
        assert not list((tmp_path / "kb" / "images").rglob("*.png"))  # copies undone


def test_export_with_vectors_reimports_without_embedder(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_image(tmp_path / "a.png", "red")
    make_image(tmp_path / "b.png", "blue")
    csv = tmp_path / "c.csv"
    csv.write_text(
        HEADER + "a.png,battery_tab,spatter,rework,,weld spatter,,,,,\n"
        "b.png,pcb,short,scrap,,copper short,,,,,2023-01-02T03:04:05\n"
    )
    with KnowledgeBase.open(src, embedder=HistogramEmbedder()) as kb:
        import_cases(kb, csv, progress=False)
        kb.export(tmp_path / "all.jsonl", include_vectors=True)
        before = [(h.case_id, round(h.similarity, 5)) for h in kb.search_by_case(1, k=1)]
    with KnowledgeBase.open(tmp_path / "copy") as copy:  # no embedder at all
        report = import_cases(copy, tmp_path / "all.jsonl", progress=False)
        assert report.ok and len(report.imported) == 2
        assert copy.index.model_version() == "test-hist-v1"
        assert [(h.case_id, round(h.similarity, 5)) for h in copy.search_by_case(1, k=1)] == before
        assert copy.get(2).created_at.year == 2023
