"""The knowledge base keeps only what is true (issue 22, part 4): import rows are checked against the line's config
(line, class or synonym, box inside the image, finite measurements, sound CSV, UTF-8); importing or adding the same
case twice adds it once; orphan image files are reported and collected without touching a file any case or its
history cites; backups restore a knowledge base atomically; a damaged or mismatched knowledge base gives one line
naming the file and the command that repairs it. The HistogramEmbedder test double stands in for the real embedder."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest
import typer
from test_kb_support import HistogramEmbedder, case_input, make_image, unit
from typer.testing import CliRunner

import knowledge_base.cli as kb_cli
from defect_agent.errors import DefectAgentError
from knowledge_base import KnowledgeBase, KnowledgeBaseCorrupt
from knowledge_base.backup import BackupInvalid, check_backup, make_backup, restore_backup
from knowledge_base.db import DB_NAME
from knowledge_base.importer import import_cases, read_source
from knowledge_base.schema import LATEST, migrate
from retrieval.store import IndexUnavailable
from vision.detection import Box

HEADER = "image,line,class,disposition,box,report,measurements\n"


@pytest.fixture()
def cli(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(kb_cli, "make_embedder", HistogramEmbedder)
    app = typer.Typer()
    kb_cli.register(app, typer.Typer(), typer.Typer(), typer.Typer())
    runner = CliRunner()

    def run(*args: str):
        return runner.invoke(app, list(args), catch_exceptions=True)

    return run


def _one_line_error(result, *fragments: str) -> str:
    """The CLI failed with a DefectAgentError (agent.cli prints it as one line, exit 2), not a traceback."""
    assert result.exit_code != 0 and isinstance(result.exception, DefectAgentError), result.output
    message = str(result.exception)
    assert "\n" not in message and "Traceback" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


def _kb(tmp_path: Path, name: str = "kb") -> KnowledgeBase:
    return KnowledgeBase.open(tmp_path / name, embedder=HistogramEmbedder())


# 1. import validation --------------------------------------------------------------------------------------------
def test_import_maps_synonyms_and_refuses_unknown_lines_and_classes(tmp_path: Path) -> None:
    make_image(tmp_path / "a.png", "red")
    make_image(tmp_path / "b.png", "blue")
    make_image(tmp_path / "c.png", "green")
    (tmp_path / "cases.csv").write_text(
        HEADER + "a.png,battery_tab,spatter,rework,,by name,\n"  # line 2: good
        "b.png,battery_tab,焊渣,rework,,zh synonym,\n"  # 3: good -> spatter
        "c.png,Battery_Tab,Weld Spatter,rework,,en synonym in another case,\n"  # 4: good -> battery_tab / spatter
        "a.png,pcb,Mouse Bite,scrap,,pcb synonym,\n"  # 5: good -> mousebite
        "a.png,battery_tab,spater,rework,,typo,\n"  # 6: unknown class, suggestion
        "a.png,battery_tab,weld,rework,,a part,\n"  # 7: a part, not a defect
        "a.png,battery-tabb,crack,scrap,,no such line,\n"  # 8: unknown line, suggestion
        "a.png,battery_tab,crack,scrap,,,\n",  # 9: good
        encoding="utf-8",
    )
    with _kb(tmp_path) as kb:
        report = import_cases(kb, tmp_path / "cases.csv", progress=False, check_names=True)
        assert report.rows == 8 and len(report.imported) == 5
        errors = {e.row: e.message for e in report.errors}
        assert sorted(errors) == [6, 7, 8]
        assert "unknown defect class 'spater'" in errors[6] and "did you mean 'spatter'" in errors[6]
        assert "part" in errors[7] and "spatter, crack" in errors[7]
        assert "unknown product line 'battery-tabb'" in errors[8] and "did you mean 'battery_tab'" in errors[8]
        stored = [(c.line, c.defect_class, c.report) for c in kb.list()]
        assert stored == [
            ("battery_tab", "spatter", "by name"),
            ("battery_tab", "spatter", "zh synonym"),
            ("battery_tab", "spatter", "en synonym in another case"),
            ("pcb", "mousebite", "pcb synonym"),
            ("battery_tab", "crack", ""),
        ]


def test_import_refuses_boxes_outside_the_image_and_non_finite_numbers(tmp_path: Path) -> None:
    make_image(tmp_path / "a.png", "red", size=(64, 48))
    rows = [
        {"image": "a.png", "line": "battery_tab", "class": "crack", "disposition": "scrap", "box": [4, 4, 40, 30]},
        {"image": "a.png", "line": "battery_tab", "class": "crack", "disposition": "scrap", "box": [30, 20, 70, 40]},
        {"image": "a.png", "line": "battery_tab", "class": "crack", "disposition": "scrap", "box": [10, 10, 10, 30]},
        {"image": "a.png", "line": "battery_tab", "class": "crack", "disposition": "scrap", "box": [-5, 0, 20, 20]},
        {"image": "a.png", "line": "battery_tab", "class": "burn", "disposition": "scrap", "box": [99, 99, 120, 130]},
    ]
    lines = [json.dumps(r) for r in rows]
    # json.dumps would refuse these; an export from another tool may still contain them
    lines.append(
        '{"image": "a.png", "line": "battery_tab", "class": "burn", "disposition": "scrap", '
        '"measurements": {"offset_mm": NaN}}'
    )
    lines.append(
        '{"image": "a.png", "line": "battery_tab", "class": "burn", "disposition": "scrap", '
        '"measurements": {"offset_mm": Infinity}}'
    )
    lines.append(
        '{"image": "a.png", "line": "battery_tab", "class": "burn", "disposition": "scrap", "box": [NaN, 1, 20, 20]}'
    )
    (tmp_path / "cases.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with _kb(tmp_path) as kb:
        report = import_cases(kb, tmp_path / "cases.jsonl", progress=False, check_names=True)
        errors = {e.row: e.message for e in report.errors}
        assert len(report.imported) == 1 and sorted(errors) == [2, 3, 4, 5, 6, 7, 8]
        assert "reaches outside the 64x48 image" in errors[2] and "empty" in errors[3]
        assert "reaches outside" in errors[4] and "lies outside" in errors[5]
        assert "finite" in errors[6] and "offset_mm" in errors[6] and "finite" in errors[7]
        assert "not a finite number" in errors[8]
        # the same checks guard the library's add and the CLI's --measurement
        with pytest.raises(DefectAgentError, match="outside"):
            kb.add(case_input(tmp_path / "a.png", box=Box(x1=0, y1=0, x2=65, y2=10)))
        with pytest.raises(ValueError, match="finite"):
            case_input(tmp_path / "a.png", measurements={"offset_mm": float("inf")})


def test_export_never_writes_nan(tmp_path: Path) -> None:
    with _kb(tmp_path) as kb:
        ok = kb.add(case_input(make_image(tmp_path / "a.png", "red"), measurements={"offset_mm": 0.25}))
        kb.export(tmp_path / "good.jsonl", include_vectors=True)

        def refuse(token: str) -> None:
            raise AssertionError(f"export wrote {token}")

        for line in (tmp_path / "good.jsonl").read_text().splitlines():
            assert json.loads(line, parse_constant=refuse)["measurements"] == {"offset_mm": 0.25}
        # a row written before the check existed (raw SQL: json.dumps' default allows NaN)
        kb.conn.execute("UPDATE cases SET measurements = ? WHERE id = ?", ('{"offset_mm": NaN}', ok.id))
        assert kb.get(ok.id).measurements["offset_mm"] != 0.25  # still readable
        with pytest.raises(DefectAgentError, match=f"case {ok.id} has NaN"):
            kb.export(tmp_path / "bad.jsonl")
        assert not (tmp_path / "bad.jsonl").exists()
        report = kb.verify()
        assert not report.ok and report.non_finite_measurements == [ok.id]


def test_unterminated_csv_quote_does_not_swallow_the_rows_after_it(tmp_path: Path) -> None:
    for name, colour in (("a", "red"), ("b", "blue"), ("c", "green"), ("d", "yellow")):
        make_image(tmp_path / f"{name}.png", colour)
    (tmp_path / "cases.csv").write_text(
        HEADER + 'a.png,battery_tab,crack,scrap,,"never closed,\n'  # 2: unterminated quote
        "b.png,battery_tab,crack,scrap,,second,\n"  # 3: good, must not be swallowed
        'c.png,battery_tab,burn,scrap,,"a report\nover two lines",\n'  # 4-5: a legitimate multi-line field
        "d.png,battery_tab,burn,scrap,,too,many,values\n"  # 6: wrong column count
        "d.png,battery_tab,spatter,rework\n"  # 7: too few values
        "d.png,battery_tab,spatter,rework,,last,\n"  # 8: good
        'a.png,battery_tab,burn,scrap,,"open at the end\n',  # 9: unterminated at end of file
        encoding="utf-8",
    )
    rows, errors = read_source(tmp_path / "cases.csv", check_names=True)
    assert [(r.row, r.case.report) for r in rows] == [(3, "second"), (4, "a report\nover two lines"), (8, "last")]
    messages = {e.row: e.message for e in errors}
    assert sorted(messages) == [2, 6, 7, 9]
    assert "unterminated quote" in messages[2] and "unterminated quote" in messages[9]
    assert "8 values for the 7 header columns" in messages[6] and "4 values" in messages[7]
    # a quote that runs into a later field's quote is reported the same way
    (tmp_path / "two.csv").write_text(
        HEADER + 'a.png,battery_tab,crack,scrap,,"runs on,\nb.png,battery_tab,crack,scrap,"1,1,9,9",x,\n',
        encoding="utf-8",
    )
    rows, errors = read_source(tmp_path / "two.csv")
    assert [r.row for r in rows] == [3] and [e.row for e in errors] == [2]
    assert "unterminated quote" in errors[0].message


def test_non_utf8_csv_is_one_clear_error_and_a_bom_is_fine(cli, tmp_path: Path) -> None:
    make_image(tmp_path / "a.png", "red")
    text = "image,line,class,disposition\na.png,battery_tab,焊渣,rework\n"
    (tmp_path / "gbk.csv").write_bytes(text.encode("gbk"))
    r = cli("kb", "import", str(tmp_path / "gbk.csv"), "--kb", str(tmp_path / "kb"))
    _one_line_error(r, str(tmp_path / "gbk.csv"), "not UTF-8", "line 2", "iconv")
    assert not (tmp_path / "kb").exists()  # nothing created for a file that cannot be read
    (tmp_path / "utf16.csv").write_bytes(text.encode("utf-16"))
    _one_line_error(cli("kb", "import", str(tmp_path / "utf16.csv"), "--kb", str(tmp_path / "kb")), "UTF-16")
    (tmp_path / "bom.csv").write_bytes(text.encode("utf-8-sig"))
    r = cli("kb", "import", str(tmp_path / "bom.csv"), "--kb", str(tmp_path / "kb"), "--json")
    assert r.exit_code == 0, r.output
    with KnowledgeBase.open(tmp_path / "kb") as kb:
        assert [c.defect_class for c in kb.list()] == ["spatter"]


def test_cli_add_maps_synonyms_and_refuses_unknown_classes(cli, tmp_path: Path) -> None:
    kb = str(tmp_path / "kb")
    img = str(make_image(tmp_path / "a.png", "red"))
    r = cli("kb", "add", img, "--line", "battery_tab", "--class", "裂纹", "--disposition", "scrap", "--kb", kb)
    assert r.exit_code == 0 and "battery_tab/crack" in r.output, r.output
    r = cli("kb", "add", img, "--line", "battery_tab", "--class", "crak", "--disposition", "scrap", "--kb", kb)
    _one_line_error(r, "unknown defect class 'crak'", "did you mean 'crack'")
    burn = ("kb", "add", img, "--line", "battery_tab", "--class", "burn", "--disposition", "scrap", "--kb", kb)
    _one_line_error(cli(*burn, "--box", "60,40,90,90"), "outside the 64x48 image")
    r = cli(*burn, "--measurement", "offset_mm=nan")
    _one_line_error(r, "finite")


# 2. idempotent import and add ------------------------------------------------------------------------------------
def test_reimport_adds_nothing_and_reports_what_is_present(cli, tmp_path: Path) -> None:
    make_image(tmp_path / "a.png", "red")
    make_image(tmp_path / "b.png", "blue")
    (tmp_path / "b_copy.png").write_bytes((tmp_path / "b.png").read_bytes())
    (tmp_path / "cases.csv").write_text(
        HEADER + "a.png,battery_tab,spatter,rework,,first,\n"
        'a.png,battery_tab,spatter,rework,"2,2,30,30",same image other box: another case,\n'
        "b.png,battery_tab,crack,scrap,,b,\n"
        "b_copy.png,battery_tab,crack,scrap,,same bytes as line 4: the same case,\n",
        encoding="utf-8",
    )
    with _kb(tmp_path) as kb:
        first = import_cases(kb, tmp_path / "cases.csv", progress=False, check_names=True)
        assert first.ok and len(first.imported) == 3
        assert [(p.row, p.case_id) for p in first.already_present] == [(5, first.imported[2])]
        embedded = kb.embedder.calls
        again = import_cases(kb, tmp_path / "cases.csv", progress=False, check_names=True)
        assert again.imported == [] and again.ok
        assert [(p.row, p.case_id) for p in again.already_present] == list(
            zip([2, 3, 4, 5], [*first.imported, first.imported[2]])
        )
        assert kb.embedder.calls == embedded  # nothing re-embedded
        assert kb.count() == 3 and kb.conn.execute("SELECT COUNT(*) FROM history").fetchone()[0] == 3
    r = cli("kb", "import", str(tmp_path / "cases.csv"), "--kb", str(tmp_path / "kb"))
    assert r.exit_code == 0 and "imported 0 of 4 rows" in r.output and "4 already present (cases 1, 2, 3)" in r.output


def test_cli_add_of_an_identical_case_names_the_existing_one(cli, tmp_path: Path) -> None:
    kb = str(tmp_path / "kb")
    img = str(make_image(tmp_path / "a.png", "red"))
    args = ("kb", "add", img, "--line", "battery_tab", "--class", "spatter", "--disposition", "rework", "--kb", kb)
    assert "added case 1" in cli(*args, "--box", "2,2,30,30").output
    r = cli(*args, "--box", "2,2,30,30", "--report", "other words, same case")
    assert r.exit_code == 0 and "already present as case 1" in r.output and "nothing added" in r.output
    assert "added case 2" in cli(*args).output  # whole image: another case
    with KnowledgeBase.open(tmp_path / "kb") as base:
        assert base.count() == 2 and base.get(1).report == ""
        # once removed, the same case may come back as a new one (the removed one stays in history)
        base.remove(1)
    assert "added case 3" in cli(*args, "--box", "2,2,30,30").output


def test_schema_v4_backfills_content_keys_of_an_old_base(tmp_path: Path) -> None:
    kb_dir = tmp_path / "kb"
    kb_dir.mkdir()
    raw = sqlite3.connect(kb_dir / DB_NAME, isolation_level=None)
    assert migrate(raw, target=3) == [1, 2, 3]
    img = make_image(tmp_path / "a.png", "red")
    from knowledge_base.images import ImageStore

    stored = ImageStore(kb_dir).put(img.read_bytes(), ".png")
    raw.execute(
        "INSERT INTO cases (line, defect_class, image_path, image_sha256, disposition, created_at, updated_at, "
        "box_x1, box_y1, box_x2, box_y2) VALUES ('battery_tab', 'burn', ?, ?, 'scrap', "
        "'2023-05-01T00:00:00.000000+00:00', '2023-05-01T00:00:00.000000+00:00', 1, 2, 30, 40)",
        (stored.rel_path, stored.sha256),
    )
    raw.execute("INSERT INTO vectors VALUES (1, 'test-hist-v1', 32, ?)", (unit(5).astype("<f4").tobytes(),))
    raw.execute("INSERT INTO meta VALUES ('dim', '32'), ('model_version', 'test-hist-v1')")
    raw.close()
    with _kb(tmp_path) as kb:
        assert kb.conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] == LATEST >= 4
        assert kb.conn.execute("SELECT content_sha256 FROM cases").fetchone()[0]
        case, added = kb.add_unique(case_input(img, defect_class="burn", box=Box(x1=1, y1=2, x2=30, y2=40)))
        assert (case.id, added) == (1, False)


# 3. orphan images and gc -----------------------------------------------------------------------------------------
def test_verify_reports_orphans_and_gc_removes_only_them(cli, tmp_path: Path) -> None:
    with _kb(tmp_path) as kb:
        live = kb.add(case_input(make_image(tmp_path / "a.png", "red")))
        gone = kb.add(case_input(make_image(tmp_path / "b.png", "blue"), defect_class="crack"))
        old_image = kb.add(case_input(make_image(tmp_path / "c.png", "grey"), defect_class="burn"))
        kb.edit(old_image.id, image_path=str(make_image(tmp_path / "d.png", "green")))  # c.png: only in history
        kb.remove(gone.id)  # b.png: only in history
        stray = kb.images.put(make_image(tmp_path / "e.png", "yellow").read_bytes(), ".png")  # an add cut short
        temp_old = kb.images.root / "ab" / ".cdef.png.x1y2.png"
        temp_new = kb.images.root / "ab" / ".0123.png.z9y8.png"
        for f in (temp_old, temp_new):
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_bytes(b"partial copy")
        os.utime(temp_old, (time.time() - 7200, time.time() - 7200))
        report = kb.verify()
        assert report.ok and report.n_orphan_images == 3 and report.n_missing_images == 0
        assert set(report.orphan_images) == {
            stray.rel_path,
            "images/ab/.cdef.png.x1y2.png",
            "images/ab/.0123.png.z9y8.png",
        }
        assert "kb gc" in report.render()
        dry = kb.gc(dry_run=True)
        assert len(dry.removed) == 2 and kb.images.absolute(stray.rel_path).is_file()
    r = cli("kb", "gc", "--kb", str(tmp_path / "kb"), "--json")
    assert r.exit_code == 0, r.output
    gc = json.loads(r.output)
    size = len((tmp_path / "e.png").read_bytes())
    assert sorted(gc["removed"]) == sorted([stray.rel_path, "images/ab/.cdef.png.x1y2.png"])
    assert gc["bytes_freed"] == size + len(b"partial copy") and gc["kept_recent_temp"] == 1
    with _kb(tmp_path) as kb:
        for case in (live, gone, old_image):  # every file a case or its history cites is still there
            assert Path(case.image_path).is_file()
        assert kb.restore(gone.id).id == gone.id
        assert kb.verify().n_orphan_images == 1  # the young temp file, until it is old enough
        assert len(kb.gc(temp_grace_s=0).removed) == 1 and kb.verify().n_orphan_images == 0


def test_a_commit_recopies_an_image_a_concurrent_gc_removed(tmp_path: Path) -> None:
    with _kb(tmp_path) as kb:
        prepared = kb.prepare_case(case_input(make_image(tmp_path / "a.png", "red")))
        kb.embed_prepared([prepared])
        assert kb.gc().removed == [prepared.stored.rel_path]  # not cited yet: an orphan at this moment
        ((case_id, added),) = kb.commit_unique([prepared])
        assert added and Path(kb.get(case_id).image_path).is_file()
        assert kb.verify().n_missing_images == 0 and kb.gc().removed == []


# 4. backup, restore, damaged and mismatched bases ----------------------------------------------------------------
def test_backup_and_restore_round_trip(cli, tmp_path: Path) -> None:
    kb, backup = str(tmp_path / "kb"), tmp_path / "backups" / "monday"
    for i, colour in enumerate(("red", "blue", "green")):
        img = str(make_image(tmp_path / f"{colour}.png", colour))
        add = ("kb", "add", img, "--line", "battery_tab", "--class", "spatter", "--disposition", "rework")
        r = cli(*add, "--report", f"case {i}", "--kb", kb)
        assert r.exit_code == 0, r.output
    assert cli("kb", "rm", "2", "--kb", kb).exit_code == 0
    r = cli("kb", "backup", str(backup), "--kb", kb)
    assert r.exit_code == 0 and "backed up 2 cases (4 history entries) and 3 images" in r.output, r.output
    manifest = json.loads((backup / "backup.json").read_text())
    assert manifest["cases"] == 2 and manifest["images"] == 3 and not (backup / "index").exists()
    _one_line_error(cli("kb", "backup", str(backup), "--kb", kb), "not empty")

    # life goes on after the backup: an edit, a removal and a new case
    assert cli("kb", "edit", "1", "--report", "changed later", "--kb", kb).exit_code == 0
    assert cli("kb", "rm", "3", "--kb", kb).exit_code == 0
    img = str(make_image(tmp_path / "grey.png", "grey"))
    assert (
        cli("kb", "add", img, "--line", "pcb", "--class", "short", "--disposition", "scrap", "--kb", kb).exit_code == 0
    )

    r = cli("kb", "restore-backup", str(backup), "--kb", kb)
    assert r.exit_code == 0 and "2 cases; index rebuilt" in r.output and "OK" in r.output, r.output
    with KnowledgeBase.open(tmp_path / "kb") as base:
        assert [(c.id, c.report) for c in base.list()] == [(1, "case 0"), (3, "case 2")]
        assert base.verify().ok and base.verify().n_orphan_images == 1  # grey.png: cited by no restored case
        assert [h.case_id for h in base.search_by_case(1, k=5)] == [3]
    assert cli("kb", "restore", "2", "--kb", kb).exit_code == 0  # restoring one removed case still works
    r = cli("kb", "restore", "--from-backup", str(backup), "--kb", kb)  # the alias
    assert r.exit_code == 0, r.output
    with KnowledgeBase.open(tmp_path / "kb") as base:
        assert [c.id for c in base.list()] == [1, 3]
    assert cli("kb", "restore", "--kb", kb).exit_code != 0  # neither an id nor a backup


def test_restore_while_another_process_has_the_base_open(tmp_path: Path) -> None:
    with _kb(tmp_path) as kb:
        kb.add(case_input(make_image(tmp_path / "a.png", "red")))
        make_backup(kb, tmp_path / "bk")
        kb.add(case_input(make_image(tmp_path / "b.png", "blue")))
        assert len(kb.search_by_vector(unit(1), k=5)) == 2
        restore_backup(tmp_path / "kb", tmp_path / "bk", embedder=HistogramEmbedder())
        # the open connection sees the restored database at once, the index once it reloads the rebuilt file
        assert [c.id for c in kb.list()] == [1]
        assert [h.case_id for h in kb.search_by_vector(unit(1), k=5)] == [1]


def test_truncated_database_is_one_line_and_a_backup_repairs_it(cli, tmp_path: Path) -> None:
    with _kb(tmp_path) as kb:
        for i in range(40):  # enough rows that the database spans many pages
            kb.add(case_input(make_image(tmp_path / f"{i}.png", "red", seed=i), report="long words " * 40))
        make_backup(kb, tmp_path / "bk")
    db_file = tmp_path / "kb" / DB_NAME
    data = db_file.read_bytes()
    db_file.write_bytes(data[: len(data) // 2])
    with pytest.raises(KnowledgeBaseCorrupt, match="restore-backup"):
        KnowledgeBase.open(tmp_path / "kb")
    kb = str(tmp_path / "kb")
    for args in (("search", "--text", "words"), ("list",), ("verify",), ("stats",)):
        _one_line_error(cli("kb", *args, "--kb", kb), str(db_file), "kb restore-backup")
    r = cli("kb", "restore-backup", str(tmp_path / "bk"), "--kb", kb)
    assert r.exit_code == 0, r.output
    assert list((tmp_path / "kb").glob(f"{DB_NAME}.damaged-*"))  # moved aside, not deleted
    with KnowledgeBase.open(tmp_path / "kb") as base:
        assert base.count() == 40 and base.verify().ok

    db_file.write_bytes(b"")  # truncated to nothing: SQLite alone would start an empty base over the images
    _one_line_error(cli("kb", "list", "--kb", kb), "empty (0 bytes)", "kb restore-backup")


def test_a_damaged_or_incomplete_backup_is_refused_and_the_base_is_untouched(tmp_path: Path) -> None:
    with _kb(tmp_path) as kb:
        case = kb.add(case_input(make_image(tmp_path / "a.png", "red")))
        make_backup(kb, tmp_path / "bk")
        kb.add(case_input(make_image(tmp_path / "b.png", "blue")))
    copy = tmp_path / "bk" / DB_NAME
    original = copy.read_bytes()
    copy.write_bytes(original[:-100] + b"\0" * 100)
    with pytest.raises(BackupInvalid, match=f"{copy}.*does not match its manifest"):
        restore_backup(tmp_path / "kb", tmp_path / "bk")
    copy.write_bytes(original)
    image = tmp_path / "bk" / Path(case.image_path).relative_to(tmp_path / "kb")
    image.unlink()
    with pytest.raises(BackupInvalid, match="lacks 1 image"):
        check_backup(tmp_path / "bk")
    with pytest.raises(BackupInvalid, match="no kb.sqlite3"):
        check_backup(tmp_path)
    with KnowledgeBase.open(tmp_path / "kb") as kb:
        assert kb.count() == 2 and kb.verify().ok


def test_mismatched_index_and_vectors_are_one_line_errors(cli, tmp_path: Path) -> None:
    kb = str(tmp_path / "kb")
    img = str(make_image(tmp_path / "a.png", "red"))
    assert (
        cli(
            "kb", "add", img, "--line", "battery_tab", "--class", "burn", "--disposition", "scrap", "--kb", kb
        ).exit_code
        == 0
    )
    index = tmp_path / "kb" / "index"

    # the index of another knowledge base, with vectors of another dimension
    with KnowledgeBase.open(tmp_path / "other") as other:
        other.add(case_input(Path(img)), vector=np.ones(8, dtype=np.float32), model_version="test-hist-v1")
    for name in ("vectors.faiss", "vectors.json"):
        (index / name).write_bytes((tmp_path / "other" / "index" / name).read_bytes())
    _one_line_error(
        cli("kb", "search", "--case", "1", "--kb", kb), str(index / "vectors.json"), "dimension 8", "kb rebuild"
    )
    r = cli("kb", "verify", "--kb", kb)
    assert r.exit_code == 1 and "dimension 8" in r.output and "defect-agent kb rebuild" in r.output
    assert cli("kb", "rebuild", "--kb", kb).exit_code == 0

    # the index file missing
    (index / "vectors.faiss").unlink()
    _one_line_error(
        cli("kb", "search", "--case", "1", "--kb", kb), str(index / "vectors.faiss"), "missing", "kb rebuild"
    )
    assert cli("kb", "rebuild", "--kb", kb).exit_code == 0

    # a vector of another dimension written behind the knowledge base's back
    with KnowledgeBase.open(tmp_path / "kb") as base:
        base.conn.execute("UPDATE vectors SET dim = 8, vector = ? WHERE case_id = 1", (unit(1, 8).tobytes(),))
    r = cli("kb", "verify", "--kb", kb, "--json")
    report = json.loads(r.output)
    assert r.exit_code == 1 and report["wrong_dim_vectors"] == [1]
    assert cli("kb", "search", "--text", "burn", "--kb", kb).exit_code == 0  # searching still works
    assert cli("kb", "rebuild", "--reembed", "--kb", kb).exit_code == 0
    assert cli("kb", "verify", "--kb", kb).exit_code == 0

    # an embedder making vectors of another dimension
    class Wide(HistogramEmbedder):
        def embed_images(self, images):
            return np.hstack([super().embed_images(images)] * 2)

    with KnowledgeBase.open(tmp_path / "kb", embedder=Wide()) as base:
        with pytest.raises(DefectAgentError, match="dimension 64 differs.*kb rebuild --reembed") as info:
            base.add(case_input(make_image(tmp_path / "b.png", "blue")))
        assert str(tmp_path / "kb" / DB_NAME) in str(info.value)
        with pytest.raises(DefectAgentError, match="bad query vector.*kb rebuild --reembed"):
            base.search_by_image(tmp_path / "b.png")


def test_an_index_save_cut_short_by_a_kill_is_rebuilt_not_refused(tmp_path: Path) -> None:
    with _kb(tmp_path) as kb:
        ids = [kb.add(case_input(make_image(tmp_path / f"{i}.png", "red", seed=i))).id for i in range(3)]
    index = tmp_path / "kb" / "index"
    # what a SIGKILL between the two renames leaves: the new index file, the old manifest, the marker
    (index / "vectors.faiss").write_bytes((index / "vectors.faiss").read_bytes() + b"\0" * 64)
    (index / ".writing").write_text("12345 abc\n")
    with _kb(tmp_path) as kb:
        assert len(kb.search_by_vector(unit(1), k=5)) == 3
        assert not (index / ".writing").exists()  # the rebuilt index was saved
        assert kb.verify().ok
    # without the marker the same mismatch is damage, and is reported as such
    (index / "vectors.faiss").write_bytes((index / "vectors.faiss").read_bytes() + b"\0" * 64)
    with _kb(tmp_path) as kb:
        with pytest.raises(IndexUnavailable, match="corrupt.*kb rebuild"):
            kb.search_by_vector(unit(1), k=5)
        assert kb.rebuild(progress=False).ok and [h.case_id for h in kb.search_by_case(ids[0], k=5)] == ids[1:]
