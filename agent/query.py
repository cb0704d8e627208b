"""InspectionQuery: the structured form of an operator's instruction. Produced by the parser (or an LLM backend),
consumed by the pipeline and by fusion. Clause ids (c1, c2, ...) are what verdict reasons cite."""

from __future__ import annotations

import datetime as dt
import math
from enum import Enum
from typing import Literal

from pydantic import BaseModel, Field, model_validator

QUERY_SCHEMA_VERSION = "1.0"

# measure name in a query -> measurement key on a finding (all lengths in mm, areas in mm²)
MEASUREMENT_KEYS: dict[str, str] = {
    "offset": "offset_mm",
    "length": "length_mm",
    "width": "width_mm",
    "area": "area_mm2",
}


class Comparator(str, Enum):
    """A comparison in a bound or a count."""

    gt = ">"
    ge = ">="
    lt = "<"
    le = "<="
    eq = "=="

    def holds(self, left: float, right: float) -> bool:
        return {
            Comparator.gt: left > right,
            Comparator.ge: left >= right,
            Comparator.lt: left < right,
            Comparator.le: left <= right,
            Comparator.eq: abs(left - right) < 1e-9,
        }[self]


class NumericConstraint(BaseModel):
    """A size / offset / confidence bound on each defect a condition counts."""

    measure: Literal["offset", "length", "width", "area", "confidence"] = Field(description="What is bounded.")
    op: Comparator = Field(description="Comparison: >, >=, <, <=, ==.")
    value: float = Field(description="Bound in the canonical unit: mm (offset, length, width), mm² (area), 0..1.")
    raw_value: float = Field(description="The bound as typed.")
    unit: str = Field(description="The unit as typed, normalised spelling: mm, um, px, mm2, %, or empty.")
    text: str = Field("", description="The words the bound came from.")


class CountConstraint(BaseModel):
    """How many matching defects a condition needs (default: at least one)."""

    op: Comparator = Field(Comparator.ge, description="Comparison of the number of matching defects.")
    value: int = Field(1, description="The number compared with.")


class Condition(BaseModel):
    """One clause: how many defects of a class (with constraints) an image must have."""

    id: str = Field(description="Clause id (c1, c2, ...), cited by reasons and by each finding's matched_clauses.")
    defect_class: str | None = Field(description="Canonical class name of the line; null = any defect.")
    constraints: list[NumericConstraint] = Field(default_factory=list, description="Bounds each counted defect meets.")
    count: CountConstraint = Field(default_factory=CountConstraint, description="How many such defects are needed.")
    region: str | None = Field(None, description="Part region the clause is limited to, if any.")
    text: str = Field("", description="The clause as the operator wrote it.")


class Logic(BaseModel):
    """Boolean combination of conditions. `op == "cond"` is a leaf naming a condition id."""

    op: Literal["cond", "and", "or", "not"] = Field(description="A leaf (`cond`) or an operator.")
    cond: str | None = Field(None, description="The condition id of a leaf.")
    args: list[Logic] = Field(default_factory=list, description="Operands of and / or / not.")

    @model_validator(mode="after")
    def _shape(self) -> Logic:
        if self.op == "cond" and (self.cond is None or self.args):
            raise ValueError("a 'cond' node names one condition and has no args")
        if self.op == "not" and len(self.args) != 1:
            raise ValueError("'not' takes exactly one argument")
        if self.op in ("and", "or") and len(self.args) < 2:
            raise ValueError(f"'{self.op}' takes at least two arguments")
        return self

    def condition_ids(self) -> list[str]:
        if self.op == "cond":
            return [self.cond]  # type: ignore[list-item]
        return [cid for arg in self.args for cid in arg.condition_ids()]

    def deciding(self, truth: dict[str, bool]) -> str | None:
        """The condition id whose value decided this node's value (the first false one of a false AND, the first
        true one of a true OR, ...): what the summary table shows as the reason of a row."""
        if self.op == "cond":
            return self.cond
        if self.op == "not":
            return self.args[0].deciding(truth)
        value = self.evaluate(truth)  # AND / OR: the first argument that has the node's own value decided it
        return next(arg.deciding(truth) for arg in self.args if arg.evaluate(truth) == value)

    def evaluate(self, truth: dict[str, bool]) -> bool:
        if self.op == "cond":
            return truth[self.cond]  # type: ignore[index]
        if self.op == "not":
            return not self.args[0].evaluate(truth)
        values = [a.evaluate(truth) for a in self.args]
        return all(values) if self.op == "and" else any(values)

    def describe(self) -> str:
        if self.op == "cond":
            return str(self.cond)
        if self.op == "not":
            return f"NOT {self.args[0].describe()}"
        return "(" + f" {self.op.upper()} ".join(a.describe() for a in self.args) + ")"


class Scope(BaseModel):
    """Which images the instruction is about, on top of the images given."""

    date: dt.date | None = Field(None, description='Only images modified that day ("today\'s images").')
    folder: str | None = Field(None, description="Only images under this folder.")
    lot: str | None = Field(None, description="Only images whose file name holds this lot id.")


class ReturnSpec(BaseModel):
    """What the operator asked to get back besides the verdicts."""

    similar_cases: int | None = Field(None, description="Similar past cases per defect; null = the config default.")
    overlays: bool = Field(False, description="Whether annotated images were asked for.")


class InspectionQuery(BaseModel):
    """The structured form of an operator's instruction: conditions, their logic, scope and what to return."""

    schema_version: str = Field(QUERY_SCHEMA_VERSION, description="Version of the query schema.")
    instruction: str = Field(description="The instruction as typed.")
    language: Literal["en", "zh"] = Field(description="Language of the instruction; reasons are written in it.")
    line: str = Field(description="Product line the instruction is about.")
    conditions: list[Condition] = Field(description="The clauses, each about one defect class.")
    logic: Logic = Field(description="How the clauses combine (AND / OR / NOT).")
    min_confidence: float | None = Field(None, description="Findings below this probability are not counted.")
    scope: Scope = Field(default_factory=Scope, description="Which of the given images the instruction is about.")
    want: ReturnSpec = Field(default_factory=ReturnSpec, description="What to return besides verdicts.")
    notes: list[str] = Field(
        default_factory=list,
        description="How the parser read the words: function words skipped, colloquial forms read as known terms.",
    )

    @model_validator(mode="after")
    def _logic_names_known_conditions(self) -> InspectionQuery:
        known = {c.id for c in self.conditions}
        missing = [cid for cid in self.logic.condition_ids() if cid not in known]
        if missing:
            raise ValueError(f"logic names unknown conditions: {missing}")
        return self

    def contradictions(self) -> list[str]:
        """Why no image could ever match, if so: a clause whose bounds exclude each other ("offset > 0.5 mm and
        offset < 0.2 mm"), or logic that asks for a clause and its negation. Empty when the query is satisfiable."""
        import itertools

        problems = []
        for cond in self.conditions:
            by_measure: dict[str, list[NumericConstraint]] = {}
            for c in cond.constraints:
                by_measure.setdefault(c.measure, []).append(c)
            for measure, bounds in by_measure.items():
                lo, lo_strict, hi, hi_strict = -math.inf, False, math.inf, False
                for b in bounds:
                    if b.op in (Comparator.gt, Comparator.ge, Comparator.eq) and (
                        b.value > lo or (b.value == lo and b.op == Comparator.gt)
                    ):
                        lo, lo_strict = b.value, b.op == Comparator.gt
                    if b.op in (Comparator.lt, Comparator.le, Comparator.eq) and (
                        b.value < hi or (b.value == hi and b.op == Comparator.lt)
                    ):
                        hi, hi_strict = b.value, b.op == Comparator.lt
                if lo > hi or (lo == hi and (lo_strict or hi_strict)):
                    shown = " and ".join(f"{measure} {b.op.value} {b.value:g}" for b in bounds)
                    problems.append(f"{cond.id}: {shown} cannot both hold")
        # the same clause asked for and negated: no truth assignment of the distinct clauses satisfies the logic
        same: dict[str, str] = {}
        signature: dict[tuple, str] = {}
        for cond in self.conditions:
            sig = (
                cond.defect_class,
                tuple(c.model_dump_json() for c in cond.constraints),
                cond.count.model_dump_json(),
            )
            same[cond.id] = signature.setdefault(sig, cond.id)
        variables = sorted(set(same.values()))
        if not problems and len(variables) <= 12:
            satisfiable = any(
                self.logic.evaluate({cid: dict(zip(variables, values))[same[cid]] for cid in same})
                for values in itertools.product((False, True), repeat=len(variables))
            )
            if not satisfiable:
                problems.append(f"{self.logic.describe()} can never hold: it asks for a clause and its negation")
        return problems

    def condition(self, cid: str) -> Condition:
        for c in self.conditions:
            if c.id == cid:
                return c
        raise KeyError(cid)
