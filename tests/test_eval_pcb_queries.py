"""`eval queries --line pcb` on real DeepPCB validation boards with the shipped pcb adapter: the expected sets come
from the annotations (and the clean templates never match a defect query), the figures are well-formed."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

pytestmark = pytest.mark.shared_data


def test_pcb_query_eval_on_a_few_boards(shared_datasets, tmp_path):
    from agent.cli import app
    from vision.deeppcb import parse_annotation, scan_deeppcb, split_of

    root = shared_datasets / "deeppcb"
    boards = [p for p in scan_deeppcb(root) if split_of(p.group) == "val"][:3]
    with_short = sum(any(c == 1 for c, _ in parse_annotation(p.annotation.read_text())) for p in boards)
    out = tmp_path / "pcb.json"
    result = CliRunner().invoke(app, ["eval", "queries", "--line", "pcb", "--max-boards", "3", "--no-kb",
                                      "-i", "find boards with a short", "-i", "boards with more than five defects",
                                      "--json", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["boards"] == 3 and report["clean_boards"] == 3
    short, many = report["rows"]
    assert short["expected"] == with_short  # 6 inspected images: 3 boards + their 3 defect-free templates
    assert 0 <= short["returned"] <= 6 and 0.0 <= short["precision"] <= 1.0 and 0.0 <= short["recall"] <= 1.0
    assert many["expected"] == sum(len(parse_annotation(p.annotation.read_text())) > 5 for p in boards)
    assert report["locator"] and "pcb_adapter" in report["locator"]
