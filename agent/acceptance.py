"""The part's verdict under the line's acceptance rules: `pass` | `fail` | `review`, whatever the instruction asked.

This is what an MES or a PLC acts on (a station's OK / NG). The instruction's answer (`matches_query`) is decided
separately by `agent.clauses`; the two never feed each other. Rules come from the line config (`acceptance:`), with
defaults that make every defect class reject, a derived offset reject beyond its `tolerance_mm`, and a finding whose
fused probability lies in the review band (or a measurement within its uncertainty, at least the fixed margin, of
its limit) go to a person."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from agent.messages import class_label, measurement_text, say
from agent.verdict import DefectFinding
from defect_agent.config import AcceptanceRule, DerivedDefect, FusionConfig, LineConfig

PartVerdict = Literal["pass", "fail", "review"]


class Acceptance(BaseModel):
    """The part's verdict with one reason per finding that decided it (or why it passed)."""

    verdict: PartVerdict
    reasons: list[str]
    finding_verdicts: list[PartVerdict]  # per finding, in order: what it did to the part


def rule_for(defect_class: str, line: LineConfig) -> AcceptanceRule | None:
    """The acceptance rule of a class (configured, else the default); None for structural parts (tab, weld)."""
    if defect_class in line.acceptance.rules:
        return line.acceptance.rules[defect_class]
    spec = next((c for c in line.classes if c.name == defect_class), None)
    if spec is not None and spec.role == "part":
        return None
    if spec is not None and spec.role == "anomaly" and line.anomaly is not None:
        action = line.anomaly.unexplained or ("review" if line.locator is not None else "reject")
        return AcceptanceRule(review_only=action == "review")
    derived = next((d for d in line.derived if d.name == defect_class), None)
    if isinstance(derived, DerivedDefect) and derived.rule == "offset":
        return AcceptanceRule(limits={"offset_mm": derived.tolerance_mm})
    return AcceptanceRule()


def _judge_one(
    finding: DefectFinding, rule: AcceptanceRule, band: tuple[float, float], margin: float, line: LineConfig, lang: str
) -> tuple[PartVerdict, str | None]:
    low, high = band
    p = finding.probability
    name = class_label(finding.defect_class, line, lang)
    if p < low or not rule.reject:
        return "pass", None
    over: list[str] = []
    near: list[str] = []
    missing: list[str] = []
    for key, limit in rule.limits.items():
        value = finding.measurements.get(key)
        if value is None:
            missing.append(key)
            continue
        # the finding's own ± replaces the fixed margin where it is known; the margin stays the floor
        known = finding.uncertainty.get(key)
        half = margin if known is None else max(known, margin)
        what = measurement_text(key, value, lang, known)
        if value > limit + half:
            over.append(say("over_limit", lang, what=what, limit=limit))
        elif value >= limit - half:
            if known is None:
                near.append(say("near_limit", lang, what=what, limit=limit, margin=margin))
            else:
                near.append(say("near_limit_uncertain", lang, what=what, limit=limit))
    if rule.limits and not over and not near and not missing:
        return "pass", None
    if rule.review_only:
        return "review", say("unexplained_anomaly", lang, name=name, p=p)
    if p < high:
        return "review", say("uncertain_finding", lang, name=name, p=p, low=low, high=high)
    if over or (not rule.limits):
        detail = "; ".join(over) if over else say("class_rejects", lang)
        return "fail", say("rejects", lang, name=name, p=p, detail=detail)
    if missing:
        return "review", say("unmeasured", lang, name=name, keys=", ".join(missing))
    return "review", say("near", lang, name=name, detail="; ".join(near))


def review_band(line: LineConfig, fusion: FusionConfig) -> tuple[float, float]:
    """The probability band that sends a finding to a person: the line's own (`acceptance.review_band`), else the
    fusion's default."""
    return line.acceptance.review_band or fusion.review_band


def judge_part(findings: list[DefectFinding], line: LineConfig, fusion: FusionConfig, lang: str = "en") -> Acceptance:
    """Judge one part by its findings under the line's acceptance rules."""
    band = review_band(line, fusion)
    margin = (
        line.acceptance.measurement_margin_mm
        if line.acceptance.measurement_margin_mm is not None
        else fusion.measurement_margin_mm
    )
    outcomes: list[PartVerdict] = []
    fails: list[str] = []
    reviews: list[str] = []
    for finding in findings:
        rule = rule_for(finding.defect_class, line)
        if rule is None:
            outcomes.append("pass")
            continue
        outcome, reason = _judge_one(finding, rule, band, margin, line, lang)
        outcomes.append(outcome)
        if outcome == "fail" and reason:
            fails.append(reason)
        elif outcome == "review" and reason:
            reviews.append(reason)
    if fails:
        return Acceptance(verdict="fail", reasons=fails + reviews, finding_verdicts=outcomes)
    if reviews:
        return Acceptance(verdict="review", reasons=reviews, finding_verdicts=outcomes)
    return Acceptance(verdict="pass", reasons=[say("part_ok", lang, line=line.name)], finding_verdicts=outcomes)
