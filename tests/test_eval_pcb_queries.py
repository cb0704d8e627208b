"""`eval queries --line pcb` on real DeepPCB validation boards with the shipped pcb adapter: the expected sets come
from the annotations (and the clean templates never match a defect query), the figures are well-formed."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner


@pytest.mark.shared_data
def test_pcb_query_eval_on_a_few_boards(shared_datasets, tmp_path):
    from agent.cli import app
    from vision.datasets.deeppcb import parse_annotation, scan_deeppcb, split_of

    root = shared_datasets / "deeppcb"
    boards = [p for p in scan_deeppcb(root) if split_of(p.group) == "val"][:3]
    with_short = sum(any(c == 1 for c, _ in parse_annotation(p.annotation.read_text())) for p in boards)
    out = tmp_path / "pcb.json"
    result = CliRunner().invoke(
        app,
        [
            "eval",
            "queries",
            "--line",
            "pcb",
            "--max-boards",
            "3",
            "--no-kb",
            "-i",
            "find boards with a short",
            "-i",
            "boards with more than five defects",
            "--json",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["boards"] == 3 and report["clean_boards"] == 3
    short, many = report["rows"]
    assert short["expected"] == with_short  # 6 inspected images: 3 boards + their 3 defect-free templates
    assert 0 <= short["returned"] <= 6 and 0.0 <= short["precision"] <= 1.0 and 0.0 <= short["recall"] <= 1.0
    assert many["expected"] == sum(len(parse_annotation(p.annotation.read_text())) > 5 for p in boards)
    assert report["locator"] and "pcb_adapter" in report["locator"]


@pytest.mark.shared_data
def test_inspect_pcb_boards_with_their_templates(shared_datasets, tmp_path):
    import shutil

    from agent.cli import app
    from vision.datasets.deeppcb import scan_deeppcb, split_of

    pairs = [p for p in scan_deeppcb(shared_datasets / "deeppcb") if split_of(p.group) == "val"][:2]
    boards = tmp_path / "boards"
    boards.mkdir()
    for p in pairs:  # an operator's folder: each board beside its golden template
        shutil.copy(p.test, boards / p.test.name)
        shutil.copy(p.template, boards / p.template.name)
    lonely = boards / "99999999_test.jpg"
    shutil.copy(pairs[0].test, lonely)  # a board whose template is missing
    out = tmp_path / "v.jsonl"
    result = CliRunner().invoke(
        app,
        [
            "inspect",
            "find boards with a short or an open circuit",
            str(boards),
            "--line",
            "pcb",
            "--no-kb",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 3, result.output  # one image could not be inspected
    verdicts = {json.loads(line)["image"]: json.loads(line) for line in out.read_text().splitlines()}
    assert len(verdicts) == 3  # templates are references, not boards
    assert "_temp" in verdicts[str(lonely)]["error"] and verdicts[str(lonely)]["verdict"] == "review"
    for p in pairs:
        v = verdicts[str(boards / p.test.name)]
        assert v["error"] is None and v["verdict"] in {"pass", "fail", "review"}
        assert "pcb_adapter" in v["models"]["locator"] and v["defects"]


def test_family_figures_weigh_queries_alike_and_pool_decisions():
    """A query that expects one image moves the mean as much as one that expects 200; the pooled figure counts
    every (query, image) decision once."""
    from agent.evaluation import QueryScore, family_scores

    rows = [
        QueryScore(
            instruction="a", family="count", precision=0.5, recall=1.0, returned=2, expected=1, correct=1, review=0
        ),
        QueryScore(
            instruction="b", family="count", precision=1.0, recall=0.9, returned=90, expected=100, correct=90, review=0
        ),
    ]
    (fam,) = family_scores(rows)
    assert fam.precision_mean == pytest.approx(0.75) and fam.precision_min == 0.5
    assert fam.precision_pooled == pytest.approx(91 / 92) and fam.recall_pooled == pytest.approx(91 / 101)
    old = [r.model_copy(update={"correct": None}) for r in rows]  # reports written before `correct` existed
    assert family_scores(old)[0].precision_pooled is None
