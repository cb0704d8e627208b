"""`defect-agent kb ...` through typer's test runner. The configured embedder is replaced by the HistogramEmbedder
test double (the real one is a separate component); everything else is the real CLI on a real knowledge base."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from test_kb_support import HistogramEmbedder, make_image
from typer.testing import CliRunner

import knowledge_base.cli as kb_cli


@pytest.fixture()
def cli(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(kb_cli, "make_embedder", HistogramEmbedder)
    app = typer.Typer()
    kb_cli.register(app, typer.Typer(), typer.Typer(), typer.Typer())
    runner = CliRunner()

    def run(*args: str):
        return runner.invoke(app, list(args), catch_exceptions=True)

    return run


def test_cli_round_trip(cli, tmp_path: Path) -> None:
    kb = str(tmp_path / "kb")
    red = make_image(tmp_path / "red.png", "red")
    blue = make_image(tmp_path / "blue.png", "blue")
    r = cli(
        "kb",
        "add",
        str(red),
        "--line",
        "battery_tab",
        "--class",
        "spatter",
        "--disposition",
        "rework",
        "--report",
        "weld spatter",
        "--root-cause",
        "high current",
        "--action",
        "lower current",
        "--box",
        "2,2,40,40",
        "--measurement",
        "offset_mm=0.3",
        "--kb",
        kb,
    )
    assert r.exit_code == 0, r.output
    assert "added case 1" in r.output
    r = cli("kb", "add", str(blue), "--line", "pcb", "--class", "short", "--disposition", "scrap", "--kb", kb)
    assert r.exit_code == 0, r.output

    r = cli("kb", "search", "--image", str(red), "--box", "2,2,40,40", "--k", "2", "--json", "--kb", kb)
    assert r.exit_code == 0, r.output
    hits = json.loads(r.output)
    assert [h["case_id"] for h in hits] == [1, 2] and hits[0]["root_cause"] == "high current"

    r = cli("kb", "search", "--text", "spatter", "--line", "battery_tab", "--json", "--kb", kb)
    assert [h["case_id"] for h in json.loads(r.output)] == [1]
    r = cli("kb", "search", "--case", "1", "--kb", kb)
    assert r.exit_code == 0 and "pcb" in r.output

    r = cli("kb", "edit", "1", "--disposition", "scrap", "--report", "worse than thought", "--kb", kb)
    assert r.exit_code == 0, r.output
    r = cli("kb", "show", "1", "--json", "--kb", kb)
    assert json.loads(r.output)["case"]["disposition"] == "scrap"

    r = cli("kb", "rm", "2", "--kb", kb)
    assert r.exit_code == 0 and "removed case 2" in r.output
    r = cli("kb", "search", "--image", str(blue), "--json", "--kb", kb)
    assert [h["case_id"] for h in json.loads(r.output)] == [1]
    r = cli("kb", "show", "2", "--history", "--kb", kb)
    assert r.exit_code == 0 and "was removed" in r.output and "remove" in r.output

    r = cli("kb", "list", "--line", "battery_tab", "--kb", kb)
    assert "1 case(s)" in r.output
    r = cli("kb", "stats", "--json", "--kb", kb)
    stats = json.loads(r.output)
    assert stats["cases"] == 1 and stats["removed_cases"] == 1 and stats["index_kind"] == "Flat"
    r = cli("kb", "export", str(tmp_path / "out.jsonl"), "--kb", kb)
    assert r.exit_code == 0 and len((tmp_path / "out.jsonl").read_text().splitlines()) == 1
    r = cli("kb", "restore", "2", "--kb", kb)
    assert r.exit_code == 0
    r = cli("kb", "verify", "--kb", kb)
    assert r.exit_code == 0 and "OK" in r.output


def test_cli_verify_exit_code_and_rebuild(cli, tmp_path: Path) -> None:
    kb = str(tmp_path / "kb")
    img = make_image(tmp_path / "a.png", "grey")
    assert (
        cli(
            "kb", "add", str(img), "--line", "battery_tab", "--class", "crack", "--disposition", "accept", "--kb", kb
        ).exit_code
        == 0
    )
    (tmp_path / "kb" / "index" / "vectors.faiss").write_bytes(b"garbage")
    r = cli("kb", "verify", "--kb", kb)
    assert r.exit_code == 1 and "corrupt" in r.output and "defect-agent kb rebuild" in r.output
    r = cli("kb", "search", "--case", "1", "--kb", kb)
    assert r.exit_code != 0 and "kb rebuild" in str(r.exception)
    r = cli("kb", "rebuild", "--kb", kb)
    assert r.exit_code == 0, r.output
    assert cli("kb", "verify", "--kb", kb).exit_code == 0


def test_cli_import_reports_bad_rows_with_exit_3(cli, tmp_path: Path) -> None:
    make_image(tmp_path / "a.png", "red")
    (tmp_path / "cases.csv").write_text(
        "image,line,class,disposition\na.png,battery_tab,spatter,rework\na.png,battery_tab,spatter,sometimes\n"
    )
    r = cli("kb", "import", str(tmp_path), "--kb", str(tmp_path / "kb"))
    assert r.exit_code == 3
    assert "imported 1 of 2" in r.output and "line 3" in r.output


def test_cli_read_commands_do_not_create_a_kb(cli, tmp_path: Path) -> None:
    r = cli("kb", "list", "--kb", str(tmp_path / "nowhere"))
    assert r.exit_code != 0 and "no knowledge base" in str(r.exception)
    assert not (tmp_path / "nowhere").exists()
