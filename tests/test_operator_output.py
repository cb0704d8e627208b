"""Output an operator can read: the summary table (the deciding clause, measurements as `offset 0.37 mm`, no text
lost to markup, the operator's language), overlays (banner with both answers, faint sub-threshold boxes, labels
that do not cover each other) and the shell (`help`, "why is image 3 fail" / "为什么第3张不合格")."""

from __future__ import annotations

import io

import numpy as np
import pytest

from agent.clauses import decide
from agent.overlay import REPORT_MIN, draw_overlay, font_file
from agent.parser import parse_instruction
from agent.report import summary_table
from agent.shell import InspectionShell
from agent.verdict import DefectFinding, Verdict
from defect_agent.config import FusionConfig, load_line
from vision.detection import Box

LINE = load_line("battery_tab")


def finding(cls: str, p: float, box: tuple[float, float, float, float], **measurements: float) -> DefectFinding:
    return DefectFinding(
        defect_class=cls,
        box=Box(x1=box[0], y1=box[1], x2=box[2], y2=box[3]),
        confidence=p,
        probability=p,
        measurements=measurements,
        source="derived" if cls == "weld_offset" else "detector",
    )


def verdict_for(instruction: str, findings: list[DefectFinding], image: str = "cell_001.png") -> Verdict:
    query = parse_instruction(instruction, line="battery_tab")
    d = decide(query, findings, LINE, FusionConfig())
    return Verdict(
        image=image,
        line="battery_tab",
        verdict=d.verdict,
        verdict_reasons=d.verdict_reasons,
        matches_query=d.matches_query,
        match_uncertain=d.match_uncertain,
        score=d.score,
        query_reasons=d.query_reasons,
        clauses=d.clauses,
        defects=findings,
        query=query,
    )


SEED_ZH = "找出所有极耳焊接偏移超0.3mm且伴随焊渣飞溅的电芯"


def cell_findings() -> list[DefectFinding]:
    return [
        finding("weld_offset", 0.97, (200, 150, 260, 210), offset_mm=0.37),
        finding("spatter", 0.9, (300, 160, 330, 190), length_mm=0.8),
        finding("spatter", 0.88, (302, 162, 331, 191), length_mm=0.7),  # overlapping: labels must not collide
        finding("crack", 0.1, (50, 300, 120, 310)),  # below the reporting threshold
    ]


def test_summary_table_in_chinese_with_the_deciding_clause_and_readable_measurements():
    table = summary_table([verdict_for(SEED_ZH, cell_findings())])
    assert "不合格" in table and "符合" in table
    assert "c1 极耳焊接偏移超0.3mm" in table and "偏移 0.37 mm" in table
    assert "{" not in table and "offset_mm" not in table  # never raw dicts or internal keys


def test_summary_table_in_english_keeps_bracketed_text():
    v = verdict_for("find cells with weld spatter", [finding("spatter", 0.9, (1, 1, 20, 20), length_mm=0.5)])
    v.verdict_reasons = ["[weld spatter] (p=0.90) rejects the part"]  # rich would take [..] as markup
    table = summary_table([v])
    assert "[weld spatter]" in table and "rejects" in table and "part" in table


def test_the_deciding_clause_of_a_failed_and_is_its_first_unmet_clause():
    v = verdict_for("find cells whose weld is offset more than 0.3 mm and shows spatter", cell_findings()[:1])
    assert not v.matches_query
    assert "c2" in summary_table([v], lang="en")


def test_overlay_banner_shows_both_answers_and_sub_threshold_boxes_are_faint():
    image = np.full((480, 640, 3), 200, np.uint8)
    v = verdict_for("find cells with weld spatter", cell_findings())
    out = draw_overlay(image, v, LINE, "en")
    assert out.shape[0] == 480 + 22 and out.shape[1] == 640  # the legend strip below the image
    banner = out[:22]
    assert (banner[:, :, 2] > 150).any(), "the part's verdict (fail, red) is written in the banner"
    crack = v.defects[3]
    assert crack.probability < REPORT_MIN
    edge = out[int(crack.box.y1), int(crack.box.x1) + 5]
    assert abs(int(edge[0]) - int(edge[2])) < 10, "a faint (grey) box, not a verdict colour"


def test_labels_do_not_cover_each_other():
    from agent import overlay

    taken: list[tuple[int, int, int, int]] = []
    rects = []
    for box in [(300, 160, 330, 190), (302, 162, 331, 191), (301, 161, 332, 192)]:
        rect = overlay._place((120, 16), box, (640, 480), taken)
        taken.append(rect)
        rects.append(rect)
    for i, a in enumerate(rects):
        for b in rects[i + 1 :]:
            assert not overlay._overlaps(a, b)


@pytest.mark.skipif(font_file("zh") is None, reason="no CJK font installed (make system-deps installs one)")
def test_chinese_overlay_labels_are_drawn_with_a_cjk_font():
    image = np.full((480, 640, 3), 200, np.uint8)
    v = verdict_for(SEED_ZH, cell_findings())
    zh = draw_overlay(image, v, LINE, "zh")
    en = draw_overlay(image, v, LINE, "en")
    assert zh.shape == en.shape and not np.array_equal(zh, en)


def _shell_with(verdicts: list[Verdict]) -> tuple[InspectionShell, io.StringIO]:
    out = io.StringIO()
    shell = InspectionShell(line="battery_tab", inspector_factory=lambda line: None)
    shell.stdout = out
    shell.last = verdicts
    return shell, out


def test_shell_help_is_the_shells_own_help():
    shell, out = _shell_with([])
    shell.onecmd("help")
    assert "why is image 3 fail" in out.getvalue() and ":images" in out.getvalue()


def test_shell_explains_why_an_image_got_its_verdict_in_both_languages():
    verdicts = [
        verdict_for("find cells with weld spatter", []),
        verdict_for("find cells with weld spatter", []),
        verdict_for("find cells with weld spatter", cell_findings(), image="cell_003.png"),
    ]
    shell, out = _shell_with(verdicts)
    shell.onecmd("why is image 3 fail")
    text = out.getvalue()
    assert "cell_003.png" in text and "fail" in text and "offset 0.37 mm > limit 0.2 mm" in text
    shell, out = _shell_with(verdicts)
    shell.onecmd("为什么第3张不合格")
    assert "不合格" in out.getvalue() and "偏移 0.37 mm" in out.getvalue()
