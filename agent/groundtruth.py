"""Ground truth for an instruction: the same clause logic (agent.clauses.decide) run on exact findings built from
annotations, so that 'the set of images the instruction should return' is defined once, for every query."""

from __future__ import annotations

from agent.clauses import decide
from agent.query import InspectionQuery
from agent.verdict import DefectFinding
from defect_agent.config import FusionConfig, LineConfig
from vision.detection import Box

_EXACT = FusionConfig(review_band=(0.5, 0.5), measurement_margin_mm=0.0)


def box_measurements(box: Box, mm_per_px: float) -> dict[str, float]:
    long_side, short_side = max(box.width, box.height), min(box.width, box.height)
    return {"length_mm": long_side * mm_per_px, "width_mm": short_side * mm_per_px, "area_mm2": box.area * mm_per_px**2}


def exact_finding(cls: str, box: Box, measurements: dict[str, float], source: str = "detector") -> DefectFinding:
    return DefectFinding(
        defect_class=cls, box=box, source=source, confidence=1.0, probability=1.0, measurements=measurements
    )


def battery_tab_findings(truth, line: LineConfig) -> list[DefectFinding]:
    """Exact findings of a generated battery_tab image (vision.datasets.synth.battery_tab.BatteryTabTruth)."""
    mm = truth.mm_per_px
    defect_classes = {c.name for c in line.classes if c.role == "defect"}
    findings = [
        exact_finding(o.name, o.box, box_measurements(o.box, mm)) for o in truth.objects if o.name in defect_classes
    ]
    welds, tabs = truth.boxes("weld"), truth.boxes("tab")
    if truth.offset_mm is not None and welds:
        findings.append(exact_finding("weld_offset", welds[0], {"offset_mm": truth.offset_mm}, source="derived"))
    if truth.missing_weld and tabs:
        findings.append(exact_finding("missing_weld", tabs[0], {}, source="derived"))
    return findings


def expected_match(query: InspectionQuery, findings: list[DefectFinding], line: LineConfig) -> bool:
    return decide(query, [f.model_copy(deep=True) for f in findings], line, _EXACT).matches_query


def expected_part_verdict(findings: list[DefectFinding], line: LineConfig) -> str:
    """The part's verdict the line's acceptance rules give exact ground-truth findings (no measurement margin)."""
    from agent.acceptance import judge_part

    return judge_part([f.model_copy(deep=True) for f in findings], line, _EXACT).verdict


def precision_recall(predicted: set[str], expected: set[str]) -> tuple[float, float]:
    tp = len(predicted & expected)
    precision = tp / len(predicted) if predicted else (1.0 if not expected else 0.0)
    recall = tp / len(expected) if expected else 1.0
    return precision, recall
