"""Evaluating an InspectionQuery on one image's findings: a probability per clause, per image, and the decision.

Each finding carries a fused probability p_i that it is real; a measurement bound holds with probability
Phi((m - v) / sigma) (sigma = the measurement's uncertainty). The number of findings meeting a clause is then a
Poisson-binomial variable, so count clauses ("at least two") get an exact probability; AND / OR / NOT combine
clause probabilities as independent events. The image score falls in pass / review / fail by the review band."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel

from agent.query import MEASUREMENT_KEYS, Comparator, Condition, InspectionQuery, Logic, NumericConstraint
from agent.verdict import ClauseResult, DefectFinding
from defect_agent.config import DerivedDefect, FusionConfig, LineConfig


class Decision(BaseModel):
    matches_query: bool
    verdict: Literal["pass", "fail", "review"]
    score: float
    clauses: list[ClauseResult]
    reasons: list[str]


def _phi(z: float) -> float:
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


def bound_probability(measured: float, op: Comparator, value: float, sigma: float) -> float:
    """Probability that the true measurement satisfies `op value`, given a measurement with gaussian error."""
    if sigma <= 0:
        return 1.0 if op.holds(measured, value) else 0.0
    z = (measured - value) / sigma
    if op in (Comparator.gt, Comparator.ge):
        return _phi(z)
    if op in (Comparator.lt, Comparator.le):
        return 1.0 - _phi(z)
    return max(0.0, 1.0 - abs(z) / 2.0)


def count_distribution(probabilities: list[float]) -> list[float]:
    """P(N = n) for N the number of successes of independent Bernoulli(p_i) (Poisson-binomial, by DP)."""
    dist = [1.0]
    for p in probabilities:
        nxt = [0.0] * (len(dist) + 1)
        for n, q in enumerate(dist):
            nxt[n] += q * (1.0 - p)
            nxt[n + 1] += q * p
        dist = nxt
    return dist


def _implicit_constraints(cond: Condition, finding: DefectFinding, line: LineConfig) -> list[NumericConstraint]:
    """A derived offset defect is only 'present' above the line's tolerance unless the query sets its own bound."""
    spec = next((d for d in line.derived if d.name == finding.defect_class), None)
    if not isinstance(spec, DerivedDefect) or spec.rule != "offset":
        return []
    if any(c.measure == "offset" for c in cond.constraints):
        return []
    return [
        NumericConstraint(
            measure="offset",
            op=Comparator.gt,
            value=spec.tolerance_mm,
            raw_value=spec.tolerance_mm,
            unit="mm",
            text="line tolerance",
        )
    ]


def finding_probability(
    finding: DefectFinding, cond: Condition, query: InspectionQuery, line: LineConfig, sigma_mm: float
) -> float:
    """Probability that this finding is real and meets the clause's class and bounds."""
    if cond.defect_class is not None and finding.defect_class != cond.defect_class:
        return 0.0
    if query.min_confidence is not None and finding.probability < query.min_confidence:
        return 0.0
    p = finding.probability
    for c in [*cond.constraints, *_implicit_constraints(cond, finding, line)]:
        if c.measure == "confidence":
            p *= 1.0 if c.op.holds(finding.probability, c.value) else 0.0
            continue
        measured = finding.measurements.get(MEASUREMENT_KEYS[c.measure])
        if measured is None:
            return 0.0
        sigma = sigma_mm if c.measure != "area" else sigma_mm * max(math.sqrt(max(measured, 0.0)), 0.1) * 2
        p *= bound_probability(measured, c.op, c.value, sigma)
    return p


def clause_probability(per_finding: list[float], cond: Condition) -> float:
    dist = count_distribution(per_finding)
    return sum(q for n, q in enumerate(dist) if cond.count.op.holds(n, cond.count.value))


def logic_probability(node: Logic, clause_p: dict[str, float]) -> float:
    if node.op == "cond":
        return clause_p[node.cond]  # type: ignore[index]
    if node.op == "not":
        return 1.0 - logic_probability(node.args[0], clause_p)
    values = [logic_probability(a, clause_p) for a in node.args]
    if node.op == "and":
        return math.prod(values)
    return 1.0 - math.prod(1.0 - v for v in values)


def _fmt_constraint(c: NumericConstraint) -> str:
    unit = {"offset": "mm", "length": "mm", "width": "mm", "area": "mm²", "confidence": ""}[c.measure]
    return f"{c.measure} {c.op.value} {c.value:g}{(' ' + unit) if unit else ''}"


def clause_label(cond: Condition) -> str:
    parts = [cond.defect_class or "any defect", *(_fmt_constraint(c) for c in cond.constraints)]
    count = (
        ""
        if (cond.count.op == Comparator.ge and cond.count.value == 1)
        else f" count {cond.count.op.value} {cond.count.value}"
    )
    return " ".join(parts) + count


def _evidence(finding: DefectFinding) -> str:
    shown = {k: round(v, 3) for k, v in finding.measurements.items()}
    return f"{finding.defect_class} p={finding.probability:.2f} {shown}"


def decide(query: InspectionQuery, findings: list[DefectFinding], line: LineConfig, fusion: FusionConfig) -> Decision:
    """Evaluate every clause, mark which findings matched which clause, and decide pass / review / fail."""
    low, high = fusion.review_band
    sigma = fusion.measurement_margin_mm
    clause_p: dict[str, float] = {}
    results: list[ClauseResult] = []
    reasons: list[str] = []
    for cond in query.conditions:
        per = [finding_probability(f, cond, query, line, sigma) for f in findings]
        p = clause_probability(per, cond)
        clause_p[cond.id] = p
        hits = [f for f, q in zip(findings, per) if q >= 0.5]
        for f in hits:
            if cond.id not in f.matched_clauses:
                f.matched_clauses.append(cond.id)
        results.append(
            ClauseResult(
                id=cond.id,
                text=cond.text or clause_label(cond),
                satisfied=p >= 0.5,
                count=len(hits),
                uncertain=low <= p < high,
            )
        )
        near = sorted(zip(per, findings), key=lambda t: -t[0])[:3]
        detail = "; ".join(_evidence(f) for q, f in near if q > 0.01) or f"no {cond.defect_class or 'defect'} found"
        state = "met" if p >= high else ("uncertain" if p >= low else "not met")
        reasons.append(f"{cond.id} [{clause_label(cond)}] {state} (p={p:.2f}): {detail}")
    score = logic_probability(query.logic, clause_p)
    verdict: Literal["pass", "fail", "review"] = "fail" if score >= high else ("review" if score >= low else "pass")
    reasons.append(f"{query.logic.describe()} -> score {score:.2f} (review band {low:g}-{high:g}): {verdict}")
    asked = {c.defect_class for c in query.conditions}
    others = [
        f
        for f in findings
        if f.defect_class not in asked
        and not f.matched_clauses
        and f.probability >= 0.5
        and not _implicit_absent(f, line)
    ]
    if others and None not in asked:
        counts: dict[str, int] = {}
        for f in others:
            counts[f.defect_class] = counts.get(f.defect_class, 0) + 1
        reasons.append("also found, not asked: " + ", ".join(f"{k} x{v}" for k, v in sorted(counts.items())))
    return Decision(matches_query=score >= 0.5, verdict=verdict, score=score, clauses=results, reasons=reasons)


def _implicit_absent(finding: DefectFinding, line: LineConfig) -> bool:
    """A derived offset within tolerance is a measurement, not a defect: leave it out of 'also found'."""
    spec = next((d for d in line.derived if d.name == finding.defect_class), None)
    if spec is None or spec.rule != "offset":
        return False
    return finding.measurements.get("offset_mm", 0.0) <= spec.tolerance_mm
