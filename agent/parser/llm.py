"""Optional LLM backend: a langchain-core chat model fills a structured draft of the query (tool calling through
`with_structured_output`), and the draft is checked exactly like the deterministic parser's output: class words
must be the line's (UnknownTermError with suggestions otherwise), units are converted with the same table, the
logic must name the conditions. The deterministic parser stays the default; this is for phrasings it rejects."""

from __future__ import annotations

import datetime as dt
import difflib
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from agent.parser.atoms import allowed_measures
from agent.parser.core import choose_line
from agent.parser.errors import (
    EmptyQueryError,
    QueryParseError,
    UnknownTermError,
    UnknownWord,
    UnsupportedQueryError,
)
from agent.parser.lexicon import CLASS, UNIT, vocabulary_for
from agent.parser.logic_expr import parse_logic_expr
from agent.parser.normalize import has_cjk, normalize_term
from agent.parser.units import MEASURE_UNIT_KIND, convert, unitless_confidence
from agent.query import (
    Comparator,
    Condition,
    CountConstraint,
    InspectionQuery,
    NumericConstraint,
    ReturnSpec,
    Scope,
)
from defect_agent.config import ClassSpec, DerivedDefect, LineConfig, load_line

Op = Literal[">", ">=", "<", "<=", "=="]


# A numeric bound of a draft condition: measure, comparator, and the number and unit as written.
# (No docstring on the two draft parts: pydantic would add it to the JSON schema the chat model is sent.)
class DraftConstraint(BaseModel):  # noqa: D101
    measure: Literal["offset", "length", "width", "area", "confidence"]
    op: Op
    value: float = Field(description="the number as written in the instruction")
    unit: str = Field("", description="the unit as written: mm, um, px, mm2, px2, % (empty for a 0..1 confidence)")


# One condition of the LLM's draft: a defect class (or any), its bounds and how many such defects an image needs.
class DraftCondition(BaseModel):  # noqa: D101
    id: str = Field(description="c1, c2, ... in the order the clauses are written")
    defect_class: str | None = Field(description="a class name of the line, or null for a defect of any class")
    constraints: list[DraftConstraint] = Field(default_factory=list)
    count_op: Op = ">="
    count_value: int = Field(1, description="how many such defects an image needs")


class InspectionQueryDraft(BaseModel):
    """Structured form of an operator's defect-inspection instruction."""

    conditions: list[DraftCondition]
    logic: str = Field(description="boolean combination of condition ids: c1, and(c1,c2), or(c1,not(c2))")
    min_confidence: float | None = Field(None, description="ignore findings below this confidence (0..1)")
    today_only: bool = Field(False, description="only images taken today")
    folder: str | None = None
    lot: str | None = None
    similar_cases: int | None = Field(None, description="how many similar past cases to show per finding")
    overlays: bool = False


def build_prompt(text: str, line: LineConfig) -> list[tuple[str, str]]:
    classes = []
    specs: list[ClassSpec | DerivedDefect] = [*line.classes, *line.derived]
    for spec in specs:
        role = getattr(spec, "role", "defect")
        if role != "defect":
            continue
        words = ", ".join(spec.synonyms.en + spec.synonyms.zh)
        classes.append(f"- {spec.name}: {words}")
    system = (
        f"You turn an operator's inspection instruction (Chinese or English) into a structured query for the "
        f"product line '{line.name}'. Its defect classes (name: words operators use):\n" + "\n".join(classes) + "\n"
        "Measures: offset, length, width (mm, um or px), area (mm2 or px2), confidence (0..1 or %). Keep each "
        "number and unit as written. Counts go to count_op / count_value. Logic uses the condition ids: "
        "and(...), or(...), not(...). Use only the class names above; null means any defect."
    )
    return [("system", system), ("human", text)]


class LLMParser:
    """`LLMParser(chat_model).parse(text, line=None) -> InspectionQuery` over any langchain-core chat model that
    supports tool calling."""

    def __init__(self, chat_model: Any, line: str | None = None, today: dt.date | None = None) -> None:
        self.chat_model = chat_model
        self.line = line
        self.today = today

    def parse(self, text: str, line: str | None = None) -> InspectionQuery:
        if text is None or not text.strip():
            raise EmptyQueryError("the instruction is empty", text or "")
        cfg = load_line(choose_line(text, line or self.line))
        runnable = self.chat_model.with_structured_output(InspectionQueryDraft)
        try:
            draft = runnable.invoke(build_prompt(text, cfg))
        except (ValidationError, ValueError) as exc:
            raise QueryParseError(f"the language model's answer is not a valid query: {exc}", text) from exc
        if draft is None:
            raise QueryParseError("the language model returned no query (no tool call)", text)
        if isinstance(draft, dict):
            try:
                draft = InspectionQueryDraft.model_validate(draft)
            except ValidationError as exc:
                raise QueryParseError(f"the language model's answer is not a valid query: {exc}", text) from exc
        return draft_to_query(draft, text, cfg, self.today)


def _resolve_class(word: str | None, line: LineConfig) -> tuple[str | None, UnknownWord | None]:
    if word is None or word.strip().lower() in ("", "any", "none", "null", "defect"):
        return None, None
    if word in line.defect_names:
        return word, None
    entry = vocabulary_for(line.name).lookup(normalize_term(word))
    if entry is not None and entry.kind == CLASS:
        if entry.get("role") != "defect":
            raise UnsupportedQueryError(f"'{word}' is a part of line {line.name!r}, not a defect")
        return entry.get("name"), None
    terms = list(line.defect_names)
    specs: list[ClassSpec | DerivedDefect] = [*line.classes, *line.derived]
    for spec in specs:
        if getattr(spec, "role", "defect") == "defect":
            terms += spec.synonyms.en + spec.synonyms.zh
    cutoff = 0.5 if has_cjk(word) else 0.6
    return None, UnknownWord(word=word, suggestions=difflib.get_close_matches(word, terms, n=3, cutoff=cutoff))


def _constraint(c: DraftConstraint, cls: str | None, line: LineConfig, text: str) -> NumericConstraint:
    unit_word = c.unit.strip()
    if unit_word:
        entry = vocabulary_for(line.name).lookup(normalize_term(unit_word))
        if entry is None or entry.kind != UNIT:
            raise UnsupportedQueryError(f"unknown unit {unit_word!r} in the language model's answer", text)
        if MEASURE_UNIT_KIND[c.measure] != entry.get("kind"):
            raise UnsupportedQueryError(f"{c.measure} cannot be given in {unit_word}", text)
        value, unit = convert(c.value, entry, line), entry.get("unit")
    elif c.measure == "confidence":
        value, unit = unitless_confidence(c.value, f"{c.value:g}")
    else:
        raise UnsupportedQueryError(f"{c.measure} {c.op} {c.value:g} has no unit", text)
    if c.measure not in allowed_measures(cls, line):
        raise UnsupportedQueryError(f"{cls or 'any defect'} has no {c.measure}", text)
    return NumericConstraint(
        measure=c.measure,
        op=Comparator(c.op),
        value=value,
        raw_value=c.value,
        unit=unit,
        text=f"{c.measure} {c.op} {c.value:g}{unit_word}",
    )


def draft_to_query(
    draft: InspectionQueryDraft, text: str, line: LineConfig, today: dt.date | None = None
) -> InspectionQuery:
    conditions: list[Condition] = []
    unknown: list[UnknownWord] = []
    for d in draft.conditions:
        cls, problem = _resolve_class(d.defect_class, line)
        if problem is not None:
            unknown.append(problem)
            continue
        conditions.append(
            Condition(
                id=d.id,
                defect_class=cls,
                constraints=[_constraint(c, cls, line, text) for c in d.constraints],
                count=CountConstraint(op=Comparator(d.count_op), value=d.count_value),
                text="",
            )
        )
    if unknown:
        raise UnknownTermError(unknown, text, line.name)
    if not conditions:
        raise EmptyQueryError("the language model found no defect in the instruction", text)
    try:
        logic = parse_logic_expr(draft.logic)
        return InspectionQuery(
            instruction=text,
            language="zh" if has_cjk(text) else "en",
            line=line.name,
            conditions=conditions,
            logic=logic,
            min_confidence=draft.min_confidence,
            scope=Scope(
                date=(today or dt.date.today()) if draft.today_only else None, folder=draft.folder, lot=draft.lot
            ),
            want=ReturnSpec(similar_cases=draft.similar_cases, overlays=draft.overlays),
        )
    except (ValueError, ValidationError) as exc:
        raise QueryParseError(f"the language model's query is inconsistent: {exc}", text) from exc
