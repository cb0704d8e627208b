"""Evaluating an InspectionQuery on one image's findings: a probability per clause, per image, and the decision.

Each finding carries a fused probability p_i that it is real; a measurement bound holds with probability
Phi((m - v) / sigma) (sigma from the finding's ±, agent.uncertainty, else the fixed margin). A bound inside
m ± uncertainty is not decided by the machine: when taking it as met or as not met changes the answer, the clause
and the instruction are marked uncertain (review) with that reason. The number of findings meeting a clause is then a
Poisson-binomial variable, so count clauses ("at least two") get an exact probability; AND / OR / NOT combine
clause probabilities as independent events. The image score answers the instruction (`matches_query`, uncertain
inside the review band); the part's own verdict comes from the line's acceptance rules (`agent.acceptance`) in the
same decision, never from the instruction."""

from __future__ import annotations

import itertools
import math
from typing import Literal

from pydantic import BaseModel

from agent.acceptance import judge_part
from agent.messages import class_label, measurement_text, measurements_text, pick_lang, say
from agent.query import MEASUREMENT_KEYS, Comparator, Condition, InspectionQuery, Logic, NumericConstraint
from agent.verdict import ClauseResult, DefectFinding
from defect_agent.config import DerivedDefect, FusionConfig, LineConfig


class Decision(BaseModel):
    """Both answers for one image: the part's verdict under the line's rules and the instruction's answer."""

    verdict: Literal["pass", "fail", "review"]  # the part, under the line's acceptance rules
    verdict_reasons: list[str]
    matches_query: bool  # the instruction's answer
    match_uncertain: bool  # the instruction's score lies in the review band
    score: float  # probability that the image satisfies the instruction
    clauses: list[ClauseResult]
    query_reasons: list[str]  # clause by clause, then the logic


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


# a stored ± is the 90th percentile of the absolute error (agent.uncertainty): 1.645 sigma of a normal error
PLUS_MINUS_Z = 1.645


def measurement_band(finding: DefectFinding, key: str, measured: float, margin_mm: float) -> tuple[float, float]:
    """(half-width, sigma) of a measurement: a bound within `measured ± half-width` is not decided by the machine.
    The finding's own ± where known, floored at the fixed margin; else the fixed margin (areas: scaled by the
    size, as a margin in mm moves every side)."""
    default = margin_mm if key != "area_mm2" else margin_mm * max(math.sqrt(max(measured, 0.0)), 0.1) * 2
    known = finding.uncertainty.get(key)
    if known is None:
        return default, default
    half = max(known, default)
    return half, half / PLUS_MINUS_Z


class FindingTerms(BaseModel):
    """A finding against one clause: its probability, and the same with every bound that lies inside a
    measurement's band taken as met (`high`) or as not met (`low`); `near` says which bounds, for the reasons."""

    p: float
    high: float
    low: float
    near: list[tuple[str, float]]  # (measurement key, bound) inside the band


def finding_terms(
    finding: DefectFinding, cond: Condition, query: InspectionQuery, line: LineConfig, margin_mm: float
) -> FindingTerms:
    """Probability that this finding is real and meets the clause's class and bounds, with its measurement band."""
    zero = FindingTerms(p=0.0, high=0.0, low=0.0, near=[])
    if cond.defect_class is not None and finding.defect_class != cond.defect_class:
        return zero
    if query.min_confidence is not None and finding.probability < query.min_confidence:
        return zero
    p = high = low = finding.probability
    near: list[tuple[str, float]] = []
    for c in [*cond.constraints, *_implicit_constraints(cond, finding, line)]:
        if c.measure == "confidence":
            factor = 1.0 if c.op.holds(finding.probability, c.value) else 0.0
            p, high, low = p * factor, high * factor, low * factor
            continue
        key = MEASUREMENT_KEYS[c.measure]
        measured = finding.measurements.get(key)
        if measured is None:
            return zero
        half, sigma = measurement_band(finding, key, measured, margin_mm)
        factor = bound_probability(measured, c.op, c.value, sigma)
        p *= factor
        if half > 0 and abs(measured - c.value) <= half:
            low = 0.0
            near.append((key, c.value))
        else:
            crisp = 1.0 if c.op.holds(measured, c.value) else 0.0
            high, low = high * crisp, low * crisp
    return FindingTerms(p=p, high=high, low=low, near=near)


def finding_probability(
    finding: DefectFinding, cond: Condition, query: InspectionQuery, line: LineConfig, sigma_mm: float
) -> float:
    """Probability that this finding is real and meets the clause's class and bounds."""
    return finding_terms(finding, cond, query, line, sigma_mm).p


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


def _evidence(finding: DefectFinding, line: LineConfig, lang: str) -> str:
    shown = measurements_text(finding.measurements, finding.uncertainty, lang)
    name = class_label(finding.defect_class, line, lang)
    return f"{name} p={finding.probability:.2f}" + (f" ({shown})" if shown else "")


def decide(
    query: InspectionQuery,
    findings: list[DefectFinding],
    line: LineConfig,
    fusion: FusionConfig,
    lang: str | None = None,
) -> Decision:
    """Evaluate every clause (marking which findings matched which clause) for `matches_query`, and judge the part
    by the line's acceptance rules for `verdict`. Reasons are in `lang` (default: the instruction's language)."""
    lang = pick_lang(lang or query.language)
    low, high = fusion.review_band
    margin = fusion.measurement_margin_mm
    clause_p: dict[str, float] = {}
    results: list[ClauseResult] = []
    reasons: list[str] = []
    swing: dict[str, tuple[float, float]] = {}  # clauses a measurement's band can flip: (p if not met, p if met)
    for cond in query.conditions:
        terms = [finding_terms(f, cond, query, line, margin) for f in findings]
        per = [t.p for t in terms]
        p = clause_probability(per, cond)
        clause_p[cond.id] = p
        banded = [(t, f) for t, f in zip(terms, findings) if t.near]
        if banded:
            p_low = clause_probability([t.low for t in terms], cond)
            p_high = clause_probability([t.high for t in terms], cond)
            if (p_low >= 0.5) != (p_high >= 0.5):
                swing[cond.id] = (p_low, p_high)
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
                uncertain=low <= p < high or cond.id in swing,
            )
        )
        near = sorted(zip(per, findings), key=lambda t: -t[0])[:3]
        what = class_label(cond.defect_class, line, lang) if cond.defect_class else say("any_defect", lang)
        detail = "; ".join(_evidence(f, line, lang) for q, f in near if q > 0.01) or say("none_found", lang, what=what)
        state = say("met" if p >= high else ("uncertain" if p >= low else "not_met"), lang)
        label = cond.text if (lang == "zh" and cond.text) else clause_label(cond)
        if cond.id in swing:
            state = say("uncertain", lang)
            detail = "; ".join(_band_reason(f, t.near, lang) for t, f in banded)
        reasons.append(say("clause", lang, id=cond.id, label=label, state=state, p=p, detail=detail))
    score = logic_probability(query.logic, clause_p)
    matches = score >= 0.5
    # a measurement whose band holds a bound sends the image to review when it can change the answer
    uncertain = low <= score < high or _band_flips(query.logic, clause_p, swing, matches)
    answer = say("yes" if matches else "no", lang) + (say("uncertain_suffix", lang) if uncertain else "")
    reasons.append(
        say("query_result", lang, logic=query.logic.describe(), score=score, low=low, high=high, answer=answer)
    )
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
            name = class_label(f.defect_class, line, lang)
            counts[name] = counts.get(name, 0) + 1
        reasons.append(say("also_found", lang, items=", ".join(f"{k} x{v}" for k, v in sorted(counts.items()))))
    acceptance = judge_part(findings, line, fusion, lang)
    for finding, outcome in zip(findings, acceptance.finding_verdicts):
        finding.verdict = outcome
    return Decision(
        verdict=acceptance.verdict,
        verdict_reasons=acceptance.reasons,
        matches_query=matches,
        match_uncertain=uncertain,
        score=score,
        clauses=results,
        query_reasons=reasons,
    )


def _band_flips(logic: Logic, clause_p: dict[str, float], swing: dict[str, tuple[float, float]], matches: bool) -> bool:
    """Whether some outcome of the clauses a measurement's band can flip changes the instruction's answer (every
    combination; past a handful of such clauses, assume it can)."""
    if not swing:
        return False
    if len(swing) > 6:
        return True
    ids = sorted(swing)
    for combo in itertools.product(*(swing[i] for i in ids)):
        if (logic_probability(logic, {**clause_p, **dict(zip(ids, combo))}) >= 0.5) != matches:
            return True
    return False


def _band_reason(finding: DefectFinding, near: list[tuple[str, float]], lang: str) -> str:
    unit = {"area_mm2": "mm²"}
    return "; ".join(
        say(
            "bound_uncertain",
            lang,
            what=measurement_text(key, finding.measurements[key], lang, finding.uncertainty.get(key)),
            bound=f"{bound:g} {unit.get(key, 'mm')}",
        )
        for key, bound in near
    )


def _implicit_absent(finding: DefectFinding, line: LineConfig) -> bool:
    """A derived offset within tolerance is a measurement, not a defect: leave it out of 'also found'."""
    spec = next((d for d in line.derived if d.name == finding.defect_class), None)
    if spec is None or spec.rule != "offset":
        return False
    return finding.measurements.get("offset_mm", 0.0) <= spec.tolerance_mm
