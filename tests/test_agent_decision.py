"""Clause evaluation, fusion and the pass / review / fail decision on hand-built findings."""

from __future__ import annotations

import pytest

from agent.clauses import bound_probability, count_distribution, decide
from agent.fusion import FusionWeights, fit_fusion
from agent.query import Comparator, Condition, CountConstraint, InspectionQuery, Logic, NumericConstraint
from agent.verdict import DefectFinding
from defect_agent.config import FusionConfig, load_line
from vision.detection import Box

LINE = load_line("battery_tab")
FUSION = FusionConfig()


def seed_query() -> InspectionQuery:
    """The seed instruction's parse, written out: weld offset > 0.3 mm AND spatter."""
    return InspectionQuery(
        instruction="find all cells whose tab weld is offset more than 0.3 mm and shows weld spatter",
        language="en",
        line="battery_tab",
        conditions=[
            Condition(
                id="c1",
                defect_class="weld_offset",
                constraints=[
                    NumericConstraint(measure="offset", op=Comparator.gt, value=0.3, raw_value=0.3, unit="mm")
                ],
            ),
            Condition(id="c2", defect_class="spatter"),
        ],
        logic=Logic(op="and", args=[Logic(op="cond", cond="c1"), Logic(op="cond", cond="c2")]),
    )


def finding(cls: str, p: float, **measurements: float) -> DefectFinding:
    return DefectFinding(
        defect_class=cls,
        box=Box(x1=10, y1=10, x2=50, y2=40),
        confidence=p,
        probability=p,
        measurements=measurements,
        source="derived" if cls == "weld_offset" else "detector",
    )


def test_offset_and_spatter_fails_the_cell():
    d = decide(seed_query(), [finding("weld_offset", 0.95, offset_mm=0.45), finding("spatter", 0.9)], LINE, FUSION)
    assert d.matches_query and d.verdict == "fail"
    assert all(c.satisfied for c in d.clauses)


def test_offset_below_the_query_bound_does_not_match_but_spatter_still_fails_the_part():
    d = decide(seed_query(), [finding("weld_offset", 0.95, offset_mm=0.12), finding("spatter", 0.9)], LINE, FUSION)
    assert not d.matches_query and d.verdict == "fail"
    assert any("spatter" in r for r in d.verdict_reasons)
    assert not d.clauses[0].satisfied and d.clauses[1].satisfied


def test_missing_spatter_does_not_match_but_the_offset_beyond_tolerance_fails_the_part():
    d = decide(seed_query(), [finding("weld_offset", 0.95, offset_mm=0.6)], LINE, FUSION)
    assert d.verdict == "fail" and not d.matches_query
    assert "no weld spatter found" in d.query_reasons[1]
    assert "offset 0.60 mm > limit 0.2 mm" in d.verdict_reasons[0]


def test_offset_at_the_query_bound_makes_the_answer_uncertain():
    d = decide(seed_query(), [finding("weld_offset", 0.95, offset_mm=0.305), finding("spatter", 0.95)], LINE, FUSION)
    assert d.match_uncertain and d.verdict == "fail"


def test_low_confidence_spatter_makes_the_answer_uncertain():
    d = decide(seed_query(), [finding("weld_offset", 0.95, offset_mm=0.6), finding("spatter", 0.55)], LINE, FUSION)
    assert d.match_uncertain
    assert d.verdict == "fail"  # the offset alone rejects the cell


def test_low_confidence_spatter_alone_sends_the_part_to_review():
    d = decide(seed_query(), [finding("weld_offset", 0.95, offset_mm=0.05), finding("spatter", 0.55)], LINE, FUSION)
    assert d.verdict == "review" and not d.matches_query


def test_count_clause_uses_the_count_distribution():
    q = InspectionQuery(
        instruction="at least two spatter",
        language="en",
        line="battery_tab",
        conditions=[Condition(id="c1", defect_class="spatter", count=CountConstraint(op=Comparator.ge, value=2))],
        logic=Logic(op="cond", cond="c1"),
    )
    one = decide(q, [finding("spatter", 0.99)], LINE, FUSION)
    two = decide(q, [finding("spatter", 0.99), finding("spatter", 0.99)], LINE, FUSION)
    assert not one.matches_query and two.matches_query
    assert one.verdict == two.verdict == "fail"  # any real spatter rejects the cell, however many were asked for


def test_not_clause_inverts():
    q = InspectionQuery(
        instruction="spatter but no crack",
        language="en",
        line="battery_tab",
        conditions=[Condition(id="c1", defect_class="spatter"), Condition(id="c2", defect_class="crack")],
        logic=Logic(op="and", args=[Logic(op="cond", cond="c1"), Logic(op="not", args=[Logic(op="cond", cond="c2")])]),
    )
    assert decide(q, [finding("spatter", 0.99)], LINE, FUSION).matches_query
    assert not decide(q, [finding("spatter", 0.99), finding("crack", 0.99)], LINE, FUSION).matches_query


def test_matched_clauses_are_recorded_on_findings():
    fs = [finding("weld_offset", 0.95, offset_mm=0.45), finding("spatter", 0.9), finding("crack", 0.9)]
    d = decide(seed_query(), fs, LINE, FUSION)
    assert fs[0].matched_clauses == ["c1"] and fs[1].matched_clauses == ["c2"] and fs[2].matched_clauses == []
    assert any("crack x1" in r for r in d.query_reasons)


def test_count_distribution_is_poisson_binomial():
    dist = count_distribution([0.5, 0.5])
    assert dist == pytest.approx([0.25, 0.5, 0.25])


def test_bound_probability_is_sharp_far_from_threshold():
    assert bound_probability(0.5, Comparator.gt, 0.3, 0.02) > 0.999
    assert bound_probability(0.1, Comparator.gt, 0.3, 0.02) < 1e-3
    assert bound_probability(0.3, Comparator.gt, 0.3, 0.02) == pytest.approx(0.5)


def test_default_fusion_is_identity_on_detector_confidence():
    assert FusionWeights().fuse(0.8, texture=0.1, cases=0.9) == pytest.approx(0.8, abs=1e-6)


def test_fit_fusion_learns_that_texture_separates_true_from_false():
    conf = [0.6] * 40
    tex = [0.9] * 20 + [0.1] * 20
    labels = [1] * 20 + [0] * 20
    w = fit_fusion(conf, tex, [None] * 40, labels)
    assert w.texture > 0.5
    assert w.fuse(0.6, 0.9) > 0.8 > 0.2 > w.fuse(0.6, 0.1)
