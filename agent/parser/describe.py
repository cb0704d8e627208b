"""One-paragraph English description of a parsed query, for `defect-agent explain`, `defect-agent parse` and the
shell: the operator reads back what the parser understood before any model runs."""

from __future__ import annotations

from agent.query import Comparator, Condition, InspectionQuery, Logic, NumericConstraint
from defect_agent.config import ClassSpec, DerivedDefect, LineConfig, load_line
from defect_agent.errors import ConfigError

_OP = {
    Comparator.gt: "more than",
    Comparator.ge: "at least",
    Comparator.lt: "less than",
    Comparator.le: "at most",
    Comparator.eq: "exactly",
}
_UNIT = {"offset": "mm", "length": "mm", "width": "mm", "area": "mm²", "confidence": ""}


def _label(cls: str | None, line: LineConfig | None) -> str:
    """The class's first English synonym (an operator's word), else its name."""
    if cls is None:
        return "defect of any class"
    if line is not None:
        specs: list[ClassSpec | DerivedDefect] = [*line.classes, *line.derived]
        for spec in specs:
            if spec.name == cls and spec.synonyms.en:
                return spec.synonyms.en[0]
    return cls.replace("_", " ")


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def _constraint(c: NumericConstraint) -> str:
    if c.measure == "confidence":
        return f"confidence {_OP[c.op]} {c.value:.0%}"
    value = f"{c.value:g} {_UNIT[c.measure]}"
    if c.unit and c.unit not in ("mm", "mm2"):
        value += f" (typed {c.raw_value:g} {c.unit})"
    return f"{c.measure} {_OP[c.op]} {value}"


def describe_condition(cond: Condition, line: LineConfig | None = None) -> str:
    label = _label(cond.defect_class, line)
    count = cond.count
    if count.op == Comparator.ge and count.value == 1:
        head = f"{_article(label)} {label}"
    else:
        head = f"{_OP[count.op]} {count.value} × {label}"
    derived_parts = {p for d in (line.derived if line else []) if d.name == cond.defect_class for p in d.parts}
    if cond.region and cond.region not in derived_parts:
        head += f" on the {cond.region}"
    if cond.constraints:
        head += " with " + " and ".join(_constraint(c) for c in cond.constraints)
    return f"{head} [{cond.id}]"


def _logic(node: Logic, conds: dict[str, Condition], line: LineConfig | None, top: bool = True) -> str:
    if node.op == "cond":
        return describe_condition(conds[node.cond], line)  # type: ignore[index]
    if node.op == "not":
        inner = node.args[0]
        args = inner.args if inner.op == "or" else [inner]
        parts = []
        for a in args:
            words = _logic(a, conds, line, False)
            for art in ("a ", "an "):
                words = words.removeprefix(art)
            parts.append("no " + words)
        return " and ".join(parts) if len(parts) == 1 or top else "(" + " and ".join(parts) + ")"
    joined = f" {node.op.upper()} ".join(_logic(a, conds, line, False) for a in node.args)
    return joined if top else f"({joined})"


def describe_query(q: InspectionQuery) -> str:
    try:
        line = load_line(q.line)
    except ConfigError:
        line = None
    conds = {c.id: c for c in q.conditions}
    text = f"On line {q.line}, an image matches when it has {_logic(q.logic, conds, line)}."
    scope = []
    if q.scope.date:
        scope.append(f"dated {q.scope.date.isoformat()}")
    if q.scope.folder:
        scope.append(f"in a folder named '{q.scope.folder}'")
    if q.scope.lot:
        scope.append(f"with lot '{q.scope.lot}' in the file name")
    if scope:
        text += " Only images " + ", ".join(scope) + " are inspected."
    if q.min_confidence is not None:
        text += f" Findings below {q.min_confidence:.0%} confidence are ignored."
    if q.want.similar_cases:
        text += f" Each finding lists its {q.want.similar_cases} most similar past cases."
    if q.want.overlays:
        text += " Annotated overlay images are written."
    return text
