"""Issue 21 part 4: every size carries ± (localisation spread estimated on matched findings, calibration error), a
size bound or an acceptance limit inside value ± uncertainty sends the image to review, the verdict schema
describes the field and the operator's table prints `2.31 ± 0.08 mm`. No model runs here."""

from __future__ import annotations

import pytest

from agent.acceptance import judge_part
from agent.clauses import decide
from agent.measure_calibration import box_errors, offset_errors
from agent.parser import parse_instruction
from agent.report import summary_table
from agent.uncertainty import KeySpread, MeasurementUncertainty, estimate_uncertainty, finding_uncertainty
from agent.verdict import DefectFinding, Verdict, verdict_json_schema
from defect_agent.config import AcceptanceRule, FusionConfig, load_line
from vision.detection import Box

LINE = load_line("battery_tab")
FUSION = FusionConfig()  # fixed margin 0.02 mm


def crack(length: float, plus_minus: float | None = None, p: float = 0.97) -> DefectFinding:
    return DefectFinding(
        defect_class="crack",
        box=Box(x1=10, y1=10, x2=90, y2=14),
        confidence=p,
        probability=p,
        measurements={"length_mm": length, "width_mm": 0.1, "area_mm2": length * 0.1},
        uncertainty={} if plus_minus is None else {"length_mm": plus_minus},
    )


def test_the_estimate_is_the_90th_percentile_of_the_absolute_error_per_key_and_per_class_with_enough_samples():
    errors = [("short", "length_mm", e / 100) for e in range(-50, 50)]  # |error| 0 .. 0.5 mm
    errors += [("spur", "length_mm", 0.3)] * 5 + [("short", "area_mm2", 0.01)] * 40
    est = estimate_uncertainty(errors, line="pcb", min_class_samples=30)
    assert est.keys["length_mm"].samples == 105
    assert est.keys["length_mm"].spread == pytest.approx(0.45, abs=0.02)
    assert est.per_class["short"]["length_mm"].spread == pytest.approx(0.45, abs=0.01)
    assert "spur" not in est.per_class  # five samples: the line's spread is used
    assert est.spread("spur", "length_mm") == est.keys["length_mm"].spread
    assert est.spread("short", "area_mm2") == pytest.approx(0.01)
    assert est.spread("short", "offset_mm") is None
    with pytest.raises(ValueError):
        estimate_uncertainty([], line="pcb")


def test_errors_come_from_findings_matched_to_truth_boxes_and_from_the_true_offset():
    mm = 0.025
    found = crack(80 * mm)  # box 80 x 4 px
    found.measurements = {"length_mm": 82 * mm, "width_mm": 4 * mm, "area_mm2": 82 * 4 * mm * mm}
    unmatched = crack(1.0)
    unmatched.box = Box(x1=300, y1=300, x2=340, y2=310)
    truth = [("crack", Box(x1=10, y1=10, x2=88, y2=14))]  # 78 x 4 px annotated
    errors = {key: err for _, key, err in box_errors([found, unmatched], truth, mm)}
    assert errors["length_mm"] == pytest.approx(4 * mm)  # the unmatched finding adds nothing
    assert errors["width_mm"] == pytest.approx(0.0)
    offset = DefectFinding(
        defect_class="weld_offset",
        box=Box(x1=0, y1=0, x2=5, y2=5),
        source="derived",
        confidence=0.9,
        probability=0.9,
        measurements={"offset_mm": 0.31},
    )
    assert offset_errors([offset], {"weld_offset": 0.3}) == [("weld_offset", "offset_mm", pytest.approx(0.01))]


def test_the_finding_uncertainty_adds_the_calibration_error_in_quadrature_and_twice_for_areas():
    stored = MeasurementUncertainty(
        line="battery_tab", keys={"length_mm": KeySpread(spread=0.03, bias=0.0, samples=50)}
    )
    line = LINE.model_copy(update={"calibration": LINE.calibration.model_copy(update={"mm_per_px_uncertainty": 0.02})})
    u = finding_uncertainty("crack", {"length_mm": 2.0, "area_mm2": 0.5, "refined": 1.0}, line, stored)
    assert u["length_mm"] == pytest.approx((0.03**2 + 0.04**2) ** 0.5)  # 2 % of 2 mm
    assert u["area_mm2"] == pytest.approx(0.02)  # no stored spread: 2 x 2 % of 0.5 mm²
    assert "refined" not in u
    assert finding_uncertainty("crack", {"length_mm": 2.0}, LINE, None) == {}  # nothing known: the margin applies


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_a_size_bound_inside_the_band_sends_the_image_to_review_with_the_reason(lang: str):
    instruction = "cracks longer than 2 mm" if lang == "en" else "长度超过2毫米的裂纹"
    query = parse_instruction(instruction, line="battery_tab")
    d = decide(query, [crack(2.05, 0.08)], LINE, FUSION)
    assert d.match_uncertain and d.clauses[0].uncertain
    reason = d.query_reasons[0]
    assert "2.05 ± 0.08 mm" in reason
    assert ("lies within its uncertainty" in reason) if lang == "en" else ("测量不确定度之内" in reason)
    # the same finding without its ± is decided by the fixed 0.02 mm margin: a confident yes
    sure = decide(query, [crack(2.05)], LINE, FUSION)
    assert sure.matches_query and not sure.match_uncertain
    # far outside the band: confident both ways
    assert not decide(query, [crack(2.3, 0.08)], LINE, FUSION).match_uncertain
    assert not decide(query, [crack(1.7, 0.08)], LINE, FUSION).matches_query


def test_a_band_that_cannot_change_the_answer_does_not_send_to_review():
    query = parse_instruction("cracks longer than 2 mm", line="battery_tab")
    d = decide(query, [crack(2.05, 0.08), crack(3.0, 0.08)], LINE, FUSION)  # the 3 mm crack answers alone
    assert d.matches_query and not d.match_uncertain


def test_an_acceptance_limit_inside_the_band_sends_the_part_to_review_and_the_margin_stays_the_floor():
    line = LINE.model_copy(
        update={
            "acceptance": LINE.acceptance.model_copy(
                update={"rules": {"crack": AcceptanceRule(limits={"length_mm": 2.0})}}
            )
        }
    )
    near = judge_part([crack(2.06, 0.08)], line, FUSION)
    assert near.verdict == "review" and "2.06 ± 0.08 mm" in near.reasons[0] and "uncertainty" in near.reasons[0]
    assert judge_part([crack(2.06)], line, FUSION).verdict == "fail"  # beyond the 0.02 mm margin alone
    assert judge_part([crack(2.2, 0.08)], line, FUSION).verdict == "fail"
    assert judge_part([crack(1.8, 0.08)], line, FUSION).verdict == "pass"
    # a tiny ± never narrows the band below the fixed margin
    assert judge_part([crack(2.015, 0.001)], line, FUSION).verdict == "review"
    zh = judge_part([crack(2.06, 0.08)], line, FUSION, lang="zh")
    assert "不确定度" in zh.reasons[0]


def test_the_schema_describes_the_uncertainty_field():
    spec = verdict_json_schema()["$defs"]["DefectFinding"]["properties"]["uncertainty"]
    assert "±" in spec["description"] and spec["type"] == "object"


def test_the_operator_table_prints_the_measurement_with_its_uncertainty():
    query = parse_instruction("cracks longer than 2 mm", line="battery_tab")
    finding = crack(2.31, 0.08)
    d = decide(query, [finding], LINE, FUSION)
    v = Verdict(
        image="cell.png",
        line="battery_tab",
        verdict=d.verdict,
        verdict_reasons=d.verdict_reasons,
        matches_query=d.matches_query,
        match_uncertain=d.match_uncertain,
        score=d.score,
        query_reasons=d.query_reasons,
        clauses=d.clauses,
        defects=[finding],
        query=query,
    )
    table = summary_table([v], lang="en")
    assert "length 2.31 ± 0.08 mm" in table


def test_review_images_are_counted_both_ways_in_the_evaluation():
    from agent.evaluation import pooled_figures, set_counts

    counts = set_counts(returned={"a", "b", "c"}, expected={"a", "b", "d"}, review={"c", "d"})
    assert (counts.correct, counts.decided_returned, counts.decided_expected, counts.decided_correct) == (2, 2, 2, 2)
    assert (counts.flagged_returned, counts.flagged_correct) == (4, 3)
    pooled = pooled_figures([counts])
    assert pooled.precision == pytest.approx(2 / 3) and pooled.recall == pytest.approx(2 / 3)
    assert pooled.precision_decided == 1.0 and pooled.recall_decided == 1.0  # review images left out
    assert pooled.precision_flagged == pytest.approx(3 / 4) and pooled.recall_flagged == 1.0
    assert pooled.review == 2
