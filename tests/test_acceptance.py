"""`verdict` is the part judged by the line's acceptance rules, whatever the instruction asked; `matches_query`
answers the instruction. The four cases of issue 19 (the negated query, the narrow query, the missing weld, the
out-of-tolerance offset) with both fields asserted, the rules' defaults and their config, reasons in zh and en."""

from __future__ import annotations

import pytest

from agent.acceptance import judge_part, rule_for
from agent.clauses import decide
from agent.parser import parse_instruction
from agent.verdict import DefectFinding, verdict_json_schema
from defect_agent.config import FusionConfig, LineConfig, load_line
from vision.detection import Box

LINE = load_line("battery_tab")
FUSION = FusionConfig()


def finding(cls: str, p: float = 0.97, **measurements: float) -> DefectFinding:
    return DefectFinding(
        defect_class=cls,
        box=Box(x1=10, y1=10, x2=50, y2=40),
        confidence=p,
        probability=p,
        measurements=measurements,
        source="derived" if cls in ("weld_offset", "missing_weld") else "detector",
    )


def both(instruction: str, findings: list[DefectFinding], line: LineConfig = LINE):
    query = parse_instruction(instruction, line=line.name)
    return decide(query, findings, line, FUSION)


def test_the_missing_weld_fails_the_part_whatever_the_instruction_asked():
    for instruction in ("find cells with weld spatter", "找出有焊渣飞溅的电芯", "find cells with a crack"):
        d = both(instruction, [finding("missing_weld")])
        assert d.verdict == "fail" and not d.matches_query, instruction


def test_an_offset_beyond_tolerance_fails_the_part_under_a_query_about_spatter():
    d = both("find cells with weld spatter", [finding("weld_offset", offset_mm=0.70)])
    assert d.verdict == "fail" and not d.matches_query
    assert "offset 0.70 mm > limit 0.2 mm" in d.verdict_reasons[0]


def test_the_narrow_query_matches_only_what_it_asked_and_the_verdict_stays_the_part():
    fs = [finding("weld_offset", offset_mm=0.25), finding("spatter")]
    d = both("find cells whose weld is offset more than 0.3 mm and shows spatter", fs)
    assert not d.matches_query  # 0.25 mm is under the instruction's 0.3 mm
    assert d.verdict == "fail"  # but above the line's 0.2 mm tolerance, and spatter rejects too


def test_the_negated_query_matches_clean_cells_and_they_pass():
    clean = [finding("weld_offset", offset_mm=0.03)]
    d = both("find cells without any spatter", clean)
    assert d.matches_query and d.verdict == "pass"
    dirty = both("find cells without any spatter", [*clean, finding("spatter")])
    assert not dirty.matches_query and dirty.verdict == "fail"


def test_offset_within_tolerance_passes_at_the_limit_goes_to_review():
    assert judge_part([finding("weld_offset", offset_mm=0.10)], LINE, FUSION).verdict == "pass"
    near = judge_part([finding("weld_offset", offset_mm=0.21)], LINE, FUSION)
    assert near.verdict == "review" and "limit" in near.reasons[0]


def test_a_finding_in_the_review_band_sends_the_part_to_review_and_below_it_is_ignored():
    assert judge_part([finding("crack", p=0.5)], LINE, FUSION).verdict == "review"
    assert judge_part([finding("crack", p=0.2)], LINE, FUSION).verdict == "pass"
    assert judge_part([finding("crack", p=0.5), finding("burn", p=0.9)], LINE, FUSION).verdict == "fail"


def test_structural_parts_never_reject():
    assert rule_for("tab", LINE) is None and rule_for("weld", LINE) is None
    assert judge_part([finding("tab"), finding("weld")], LINE, FUSION).verdict == "pass"


def test_the_line_config_sets_the_rules():
    data = LINE.model_dump()
    data["acceptance"] = {"rules": {"burn": {"reject": False}, "crack": {"limits": {"length_mm": 1.0}}}}
    line = LineConfig.model_validate(data)
    assert judge_part([finding("burn")], line, FUSION).verdict == "pass"
    assert judge_part([finding("crack", length_mm=0.5)], line, FUSION).verdict == "pass"
    assert judge_part([finding("crack", length_mm=1.5)], line, FUSION).verdict == "fail"
    assert judge_part([finding("crack")], line, FUSION).verdict == "review"  # the limit cannot be checked
    data["acceptance"] = {"rules": {"scratch": {}}}
    with pytest.raises(ValueError, match="scratch"):
        LineConfig.model_validate(data)


def test_reasons_follow_the_instruction_language():
    zh = both("找出有焊渣飞溅的电芯", [finding("missing_weld")])
    assert "漏焊" in zh.verdict_reasons[0] and "不合格" in zh.verdict_reasons[0]
    assert "未发现焊渣飞溅" in zh.query_reasons[0]
    en = both("find cells with weld spatter", [finding("missing_weld")])
    assert "missing weld" in en.verdict_reasons[0] and "rejects" in en.verdict_reasons[0]


def test_every_field_of_the_verdict_schema_is_documented():
    schema = verdict_json_schema()
    assert schema["$schema"].startswith("https://json-schema.org/") and schema["$id"].endswith("verdict-2.0.json")
    missing = []
    for name, model in {"Verdict": schema, **schema.get("$defs", {})}.items():
        for field, spec in model.get("properties", {}).items():
            if not spec.get("description"):
                missing.append(f"{name}.{field}")
    assert not missing, missing
