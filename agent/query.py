"""InspectionQuery: the structured form of an operator's instruction. Produced by the parser (or an LLM backend),
consumed by the pipeline and by fusion. Clause ids (c1, c2, ...) are what verdict reasons cite."""

from __future__ import annotations

import datetime as dt
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

    measure: Literal["offset", "length", "width", "area", "confidence"]
    op: Comparator
    value: float  # canonical unit: mm for offset/length/width, mm² for area, 0..1 for confidence
    raw_value: float  # as typed
    unit: str  # as typed, normalised spelling: mm, um, px, mm2, %, (none)
    text: str = ""  # the words it came from


class CountConstraint(BaseModel):
    op: Comparator = Comparator.ge
    value: int = 1


class Condition(BaseModel):
    """One clause: how many defects of a class (with constraints) an image must have."""

    id: str
    defect_class: str | None  # canonical class name of the line; None = any defect
    constraints: list[NumericConstraint] = Field(default_factory=list)
    count: CountConstraint = Field(default_factory=CountConstraint)
    region: str | None = None
    text: str = ""


class Logic(BaseModel):
    """Boolean combination of conditions. `op == "cond"` is a leaf naming a condition id."""

    op: Literal["cond", "and", "or", "not"]
    cond: str | None = None
    args: list[Logic] = Field(default_factory=list)

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

    date: dt.date | None = None  # "today's images" -> file modification date
    folder: str | None = None
    lot: str | None = None  # lot id that must appear in the file name


class ReturnSpec(BaseModel):
    similar_cases: int | None = None  # k; None = config default
    overlays: bool = False


class InspectionQuery(BaseModel):
    schema_version: str = QUERY_SCHEMA_VERSION
    instruction: str
    language: Literal["en", "zh"]
    line: str
    conditions: list[Condition]
    logic: Logic
    min_confidence: float | None = None
    scope: Scope = Field(default_factory=Scope)
    want: ReturnSpec = Field(default_factory=ReturnSpec)

    @model_validator(mode="after")
    def _logic_names_known_conditions(self) -> InspectionQuery:
        known = {c.id for c in self.conditions}
        missing = [cid for cid in self.logic.condition_ids() if cid not in known]
        if missing:
            raise ValueError(f"logic names unknown conditions: {missing}")
        return self

    def condition(self, cid: str) -> Condition:
        for c in self.conditions:
            if c.id == cid:
                return c
        raise KeyError(cid)
