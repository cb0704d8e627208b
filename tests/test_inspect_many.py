"""Many instructions, one look (issue 21 part 5): `inspect "A" IMAGES --also "B"` and `eval queries -i A -i B`
analyse each image once, counted on a real Inspector (its `locate` wrapped, no model replaced), and give the
verdicts that one run per instruction gives (timings aside); instructions of different lines are one clear error."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import pytest
from typer.testing import CliRunner

from agent.clauses import decide
from agent.cli import app
from agent.many import MixedLinesError, parse_instructions
from agent.parser import parse_instruction
from agent.report import summary_table
from agent.verdict import DefectFinding, Verdict
from defect_agent.config import FusionConfig, load_line
from vision.datasets.synth.battery_tab import BatteryTabParams, generate_battery_tab
from vision.detection import Box

SPATTER = "find cells with weld spatter"
CRACK = "找出有裂纹的电芯"
LOT = "L456批次的焊渣"  # scope: only images whose name carries the lot id


@pytest.fixture(scope="module")
def cells(tmp_path_factory) -> list[str]:
    folder = tmp_path_factory.mktemp("cells")
    paths = []
    for i, (name, spatter) in enumerate([("cell_L456_a", True), ("cell_b", False)]):
        params = BatteryTabParams(
            force_offset_mm=0.4, force_spatter=spatter, force_crack=i == 1, force_burn=False, force_missing_weld=False
        )
        image, _ = generate_battery_tab(52_000 + i, params)
        path = folder / f"{name}.png"
        cv2.imwrite(str(path), image)
        paths.append(str(path))
    return paths


@pytest.fixture
def locate_calls(monkeypatch) -> dict[str, int]:
    """Counts the images every Inspector the command builds analyses: the real `Inspector.locate_batch`, wrapped."""
    from agent.pipeline import Inspector

    calls = {"n": 0}
    real = Inspector.locate_batch

    def counted(self, locator_inputs, *args, **kwargs):
        calls["n"] += len(locator_inputs)
        return real(self, locator_inputs, *args, **kwargs)

    monkeypatch.setattr(Inspector, "locate_batch", counted)
    return calls


def _lines(path: Path) -> list[dict]:
    out = []
    for text in path.read_text(encoding="utf-8").splitlines():
        row = json.loads(text)
        row.pop("timings_ms")
        out.append(row)
    return out


def test_several_instructions_in_one_pass_equal_separate_runs(cells, tmp_path, locate_calls):
    multi = tmp_path / "multi.jsonl"
    args = ["inspect", SPATTER, *cells, "--also", CRACK, "--also", LOT, "--no-kb", "--out", str(multi)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert locate_calls["n"] == len(cells)  # each image analysed once for the three instructions
    shared = _lines(multi)
    # grouped per image, in the order the instructions were given; the lot's instruction sees only its image
    assert [(Path(v["image"]).name, v["query"]["instruction"]) for v in shared] == [
        ("cell_L456_a.png", SPATTER),
        ("cell_L456_a.png", CRACK),
        ("cell_L456_a.png", LOT),
        ("cell_b.png", SPATTER),
        ("cell_b.png", CRACK),
    ]
    assert "q1" in result.output and "q3" in result.output and LOT in result.output  # the table's legend

    separate = []
    for i, instruction in enumerate([SPATTER, CRACK, LOT]):
        out = tmp_path / f"single{i}.jsonl"
        result = CliRunner().invoke(app, ["inspect", instruction, *cells, "--no-kb", "--out", str(out)])
        assert result.exit_code == 0, result.output
        separate += _lines(out)
    assert locate_calls["n"] == len(cells) + 2 * len(cells) + 1  # the separate runs: 2 + 2 + 1 analyses
    key = lambda v: (v["image"], v["query"]["instruction"])  # noqa: E731
    assert sorted(shared, key=key) == sorted(separate, key=key)
    by = {key(v): v for v in shared}
    assert by[(cells[0], SPATTER)]["matches_query"] and not by[(cells[1], SPATTER)]["matches_query"]
    assert by[(cells[0], LOT)]["matches_query"]
    assert by[(cells[0], SPATTER)]["verdict"] == by[(cells[0], CRACK)]["verdict"]  # the part's answer is one


def test_instructions_of_different_lines_are_refused_before_any_model_loads(cells, locate_calls):
    with pytest.raises(MixedLinesError, match="different product lines.*battery_tab.*pcb"):
        parse_instructions([SPATTER, "find boards with a short"])
    result = CliRunner().invoke(app, ["inspect", SPATTER, cells[0], "--also", "find boards with a short"])
    assert isinstance(result.exception, MixedLinesError) and locate_calls["n"] == 0
    # --line decides for all of them, as it does for one
    assert {q.line for q in parse_instructions(["find shorts", "find opens"], line="pcb")} == {"pcb"}


def test_eval_queries_decides_every_instruction_on_one_analysis_per_image(tmp_path, locate_calls):
    out = tmp_path / "report.json"
    instructions = [SPATTER, CRACK, "cells with at least two cracks"]
    args = ["eval", "queries", "--n", "2", "--seed", "77", "--no-kb", "--out", str(tmp_path / "set")]
    args += [x for text in instructions for x in ("-i", text)] + ["--json", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert locate_calls["n"] == 2
    report = json.loads(out.read_text())
    assert [r["instruction"] for r in report["rows"]] == instructions
    assert all(isinstance(r["exact"], bool) for r in report["rows"])
    assert report["exact_share"] == sum(r["exact"] for r in report["rows"]) / 3
    assert report["analyse_s"] > 0 and report["wall_s"] >= report["analyse_s"]
    assert "exact returned set:" in result.output and "analysed once" in result.output


def _verdict(instruction: str, image: str, findings: list[DefectFinding]) -> Verdict:
    line = load_line("battery_tab")
    query = parse_instruction(instruction, line="battery_tab")
    d = decide(query, findings, line, FusionConfig())
    return Verdict(
        image=image,
        line="battery_tab",
        verdict=d.verdict,
        verdict_reasons=d.verdict_reasons,
        matches_query=d.matches_query,
        score=d.score,
        query_reasons=d.query_reasons,
        clauses=d.clauses,
        defects=findings,
        query=query,
    )


def test_table_of_several_instructions_names_each_row_instruction_and_counts_parts_once():
    spatter = DefectFinding(
        defect_class="spatter",
        box=Box(x1=1, y1=1, x2=20, y2=20),
        confidence=0.9,
        probability=0.9,
        source="detector",
        measurements={"length_mm": 0.5},
    )
    verdicts = [_verdict(text, "cell_1.png", [spatter.model_copy(deep=True)]) for text in (SPATTER, CRACK)]
    verdicts += [_verdict(text, "cell_2.png", []) for text in (SPATTER, CRACK)]
    table = summary_table(verdicts, lang="en")
    assert "2 images x 2 instructions" in table
    assert table.count("cell_1.png") == 1 and table.count("cell_2.png") == 1  # the image once per group
    assert "q1  " + SPATTER in table and "q2  " + CRACK in table  # the legend
    assert "fail 1" in table and "pass 1" in table  # parts counted per image, not per instruction
    assert "q1 1, q2 0" in table
    single = summary_table(verdicts[:1], lang="en")  # one instruction: the table as before
    assert "#" not in single.splitlines()[2] and "matching the instruction: 1" in single


def test_bench_picks_instructions_across_families(load_benchmark):
    bench = load_benchmark("bench_many_queries")
    picked = bench.line_instructions("pcb", 6)
    assert len(picked) == 6 and len({f for f, _ in picked}) == 6  # one of each family first
    with pytest.raises(SystemExit) as exc:
        bench.main(["--help"])
    assert exc.value.code == 0


@pytest.mark.shared_data
def test_pcb_boards_with_templates_are_analysed_once_for_all_instructions(shared_datasets, tmp_path, locate_calls):
    import shutil

    from vision.datasets.deeppcb import scan_deeppcb, split_of

    pair = next(p for p in scan_deeppcb(shared_datasets / "deeppcb") if split_of(p.group) == "val")
    boards = tmp_path / "boards"
    boards.mkdir()
    shutil.copy(pair.test, boards / pair.test.name)
    shutil.copy(pair.template, boards / pair.template.name)  # the golden template: a reference, not a board
    out = tmp_path / "v.jsonl"
    instructions = ["find boards with a short", "boards with an open circuit or a spur", "找出有针孔的电路板"]
    args = ["inspect", instructions[0], str(boards), "--line", "pcb", "--no-kb", "--out", str(out)]
    result = CliRunner().invoke(app, [*args, "--also", instructions[1], "--also", instructions[2]])
    assert result.exit_code == 0, result.output
    assert locate_calls["n"] == 1
    rows = _lines(out)
    assert [r["query"]["instruction"] for r in rows] == instructions and {r["image"] for r in rows} == {
        str(boards / pair.test.name)
    }

    report = tmp_path / "eval.json"
    args = ["eval", "queries", "--line", "pcb", "--max-boards", "1", "--no-kb", "--json", str(report)]
    result = CliRunner().invoke(app, args + [x for text in instructions for x in ("-i", text)])
    assert result.exit_code == 0, result.output
    assert locate_calls["n"] == 1 + 2  # the board and its template, once each for the three instructions
    data = json.loads(report.read_text())
    assert data["images"] == 2 and len(data["rows"]) == 3 and data["exact_share"] is not None
