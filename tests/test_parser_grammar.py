"""Grammar of the deterministic parser: structure of the seed examples, precedence, negation scope, units and
calibration, confidence, scope, line choice, description."""

from __future__ import annotations

import datetime as dt
import logging

import pytest

from agent.parser import (
    AmbiguousQueryError,
    QueryParseError,
    UnknownTermError,
    UnsupportedQueryError,
    describe_query,
    format_logic,
    parse_instruction,
    parse_logic_expr,
)
from agent.query import Comparator, InspectionQuery

TODAY = dt.date(2025, 6, 2)


def _p(text: str, line: str | None = None) -> InspectionQuery:
    return parse_instruction(text, line=line, today=TODAY)


def _logic(text: str, line: str | None = None) -> str:
    return format_logic(_p(text, line).logic)


def test_seed_zh_full_structure():
    q = _p("找出所有极耳焊接偏移超0.3mm且伴随焊渣飞溅的电芯")
    assert (q.line, q.language) == ("battery_tab", "zh")
    c1, c2 = q.conditions
    assert (c1.id, c1.defect_class, c2.id, c2.defect_class) == ("c1", "weld_offset", "c2", "spatter")
    (k,) = c1.constraints
    assert (k.measure, k.op, k.value, k.raw_value, k.unit, k.text) == (
        "offset",
        Comparator.gt,
        0.3,
        0.3,
        "mm",
        "超0.3mm",
    )
    assert c1.text == "极耳焊接偏移超0.3mm" and c2.text == "焊渣飞溅"
    assert format_logic(q.logic) == "and(c1,c2)"
    assert q.logic.evaluate({"c1": True, "c2": True}) and not q.logic.evaluate({"c1": True, "c2": False})
    assert InspectionQuery.model_validate_json(q.model_dump_json()) == q


def test_seed_en_and_pcb():
    q = _p("find all cells whose tab weld is offset more than 0.3 mm and shows weld spatter")
    assert [c.defect_class for c in q.conditions] == ["weld_offset", "spatter"]
    assert q.conditions[0].region == "weld" and q.conditions[0].constraints[0].value == 0.3
    assert format_logic(q.logic) == "and(c1,c2)" and q.language == "en"
    q = _p("flag boards with an open circuit or a short longer than 2 mm")
    assert q.line == "pcb" and format_logic(q.logic) == "or(c1,c2)"
    assert q.conditions[0].constraints == []
    (k,) = q.conditions[1].constraints
    assert (q.conditions[1].defect_class, k.measure, k.op, k.value) == ("short", "length", Comparator.gt, 2.0)


@pytest.mark.parametrize(
    "text, logic",
    [
        ("cracks and burns or spatter", "or(and(c1,c2),c3)"),
        ("cracks or burns and spatter", "or(c1,and(c2,c3))"),
        ("cracks or burns, but no spatter", "and(or(c1,c2),not(c3))"),  # "but" joins whole clauses
        ("cracks or burns and no spatter", "or(c1,and(c2,not(c3)))"),
        ("missing weld or cracks, and no burns", "and(or(c1,c2),not(c3))"),  # a comma + a different op: a clause
        ("no cracks and no burns, or missing weld", "or(and(not(c1),not(c2)),c3)"),
        ("without cracks, burns, or spatter", "not(or(c1,c2,c3))"),  # Oxford comma: the same list
        ("spatter with cracks or burns", "and(c1,or(c2,c3))"),
        ("without cracks or burns", "not(or(c1,c2))"),  # the negation covers the bare list after it
        ("without cracks or with burns", "or(not(c1),c2)"),  # a positive word starts a new clause
        ("without cracks or a burn longer than 1 mm", "or(not(c1),c2)"),  # so does an article
        ("neither cracks nor burns", "and(not(c1),not(c2))"),
    ],
)
def test_precedence_and_negation_scope(text, logic):
    assert _logic(text) == logic


def test_clause_without_defect_continues_the_previous_one():
    q = _p("cracks longer than 1 mm and wider than 0.1 mm")
    assert len(q.conditions) == 1 and [k.measure for k in q.conditions[0].constraints] == ["length", "width"]
    q = _p("cracks longer than 1 mm or wider than 0.2 mm")
    assert [c.defect_class for c in q.conditions] == ["crack", "crack"]
    assert [k.measure for c in q.conditions for k in c.constraints] == ["length", "width"]


def test_pixels_use_each_lines_calibration():
    bt = _p("cracks longer than 40 px").conditions[0].constraints[0]
    pcb = _p("shorts longer than 40 px").conditions[0].constraints[0]
    assert (bt.value, bt.raw_value, bt.unit) == (1.0, 40.0, "px")  # 0.025 mm/px
    assert pcb.value == pytest.approx(40 * 0.0208) and pcb.unit == "px"
    area = _p("焊渣面积超过1600平方像素").conditions[0].constraints[0]
    assert area.measure == "area" and area.value == pytest.approx(1600 * 0.025**2) and area.unit == "px2"


@pytest.mark.parametrize(
    "text, measure, value, unit",
    [
        ("cracks longer than 300 µm", "length", 0.3, "um"),
        ("cracks longer than 300um", "length", 0.3, "um"),
        ("裂纹长度超过300微米", "length", 0.3, "um"),
        ("cracks longer than 0.2 cm", "length", 2.0, "cm"),
        ("spatter area above 2 mm²", "area", 2.0, "mm2"),
        ("焊渣面积超过2平方毫米", "area", 2.0, "mm2"),
        ("spatter of size 1 mm² or more", "area", 1.0, "mm2"),  # size: the unit picks area
        ("spatter of size 1 mm or more", "length", 1.0, "mm"),
        ("offset more than 0.3 millimetres", "offset", 0.3, "mm"),
        ("burns with confidence above 80%", "confidence", 0.8, "%"),
        ("burns with confidence above 80", "confidence", 0.8, "%"),  # above 1: only a percentage makes sense
        ("burns with confidence above 0.8", "confidence", 0.8, ""),
    ],
)
def test_units(text, measure, value, unit):
    (k,) = _p(text).conditions[0].constraints
    assert (k.measure, k.unit) == (measure, unit) and k.value == pytest.approx(value)


def test_ranges_give_two_bounds():
    ks = _p("offset between 0.2 and 0.4 mm").conditions[0].constraints
    assert [(k.op, k.value) for k in ks] == [(Comparator.ge, 0.2), (Comparator.le, 0.4)]
    ks = _p("裂纹长度0.5~1.5mm").conditions[0].constraints
    assert [(k.op, k.value) for k in ks] == [(Comparator.ge, 0.5), (Comparator.le, 1.5)]
    with pytest.raises(UnsupportedQueryError, match="smaller"):
        _p("cracks between 3 and 1 mm")


def test_counts():
    c = _p("两处以上裂纹").conditions[0]
    assert (c.count.op, c.count.value) == (Comparator.ge, 2)
    c = _p("no more than 2 cracks").conditions[0]
    assert (c.count.op, c.count.value) == (Comparator.le, 2)
    with pytest.raises(UnsupportedQueryError, match="whole number"):
        _p("more than 2.5 cracks")


def test_confidence_alone_filters_all_findings_attached_bounds_one_clause():
    q = _p("cracks or burns; confidence at least 0.75")
    assert q.min_confidence == 0.75 and all(not c.constraints for c in q.conditions)
    q = _p("cracks with confidence at least 0.75 or burns")
    assert q.min_confidence is None and q.conditions[0].constraints[0].measure == "confidence"
    with pytest.raises(QueryParseError, match="between 0 and 1"):
        _p("cracks with confidence above 120")


def test_scope_and_returns():
    q = _p("yesterday's cells from lot L123 in folder cam2 with cracks, show the 4 most similar cases with overlays")
    assert q.scope.date == TODAY - dt.timedelta(days=1) and q.scope.lot == "L123" and q.scope.folder == "cam2"
    assert q.want.similar_cases == 4 and q.want.overlays
    assert [c.defect_class for c in q.conditions] == ["crack"]
    q = parse_instruction("today's cracks")
    assert q.scope.date == dt.date.today()
    with pytest.raises(UnsupportedQueryError, match="two lots"):
        _p("lot L1 cracks in lot L2")


def test_line_choice(caplog):
    assert _p("cracks").line == "battery_tab"  # default line
    assert _p("boards with more than 2 defects").line == "pcb"  # subject word
    assert _p("电路板上的缺陷").line == "pcb"
    assert _p("mouse bites").line == "pcb"  # the default line's words do not cover it; pcb's do
    with caplog.at_level(logging.WARNING):
        assert _p("boards with more than 2 defects", line="battery_tab").line == "battery_tab"  # --line wins
    assert "pcb" in caplog.text
    with pytest.raises(AmbiguousQueryError):
        _p("cells and boards with defects")
    with pytest.raises(UnknownTermError) as err:
        _p("shorts", line="battery_tab")
    assert "line 'pcb'" in str(err.value)


def test_negated_comparator_after_the_measure_inverts_it():
    (k,) = _p("偏移没有超过0.3mm").conditions[0].constraints
    assert (k.op, k.value) == (Comparator.le, 0.3)
    q = _p("没有超过0.3mm的偏移")  # at the start of the clause it negates the clause
    assert format_logic(q.logic) == "not(c1)" and q.conditions[0].constraints[0].op == Comparator.gt


def test_logic_expression_round_trip_and_errors():
    for text in ["c1", "and(c1,c2)", "or(c1,not(and(c2,c3)))"]:
        assert format_logic(parse_logic_expr(text)) == text
    for bad in ["and(c1)", "or(c1,", "not(c1,c2)", "c1 c2", ""]:
        with pytest.raises(ValueError):
            parse_logic_expr(bad)


def test_describe_query():
    text = describe_query(_p("today's cells in lot L9 with offset more than 12 px and no cracks, show 3 similar cases"))
    assert "weld offset" in text and "offset more than 0.3 mm (typed 12 px)" in text
    assert "no crack" in text and "2025-06-02" in text and "L9" in text and "3 most similar" in text
    assert "at least 2 × short" in describe_query(_p("at least two shorts"))
