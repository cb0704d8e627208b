"""The instruction query set (tests/data/queries.yaml): hand-written operator instructions with the parse each must
give, and errors each must raise. Used by tests/test_parser_queryset.py and `defect-agent eval queries`."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from agent.parser import errors as parser_errors
from agent.parser.core import parse_instruction
from agent.parser.logic_expr import format_logic
from agent.query import InspectionQuery
from defect_agent.errors import ConfigError
from defect_agent.paths import project_root

# fixed "today" so that scope dates are reproducible
QUERYSET_TODAY = dt.date(2025, 3, 14)
_BOUND = re.compile(r"^(offset|length|width|area|confidence)(>=|<=|==|>|<)(-?[\d.]+)$")
_COUNT = re.compile(r"^#(>=|<=|==|>|<)(\d+)$")
_RAW = re.compile(r"^([\d.]+)([a-zA-Z%µμ0-9]+)$")


def default_queryset_path() -> Path:
    return project_root() / "tests" / "data" / "queries.yaml"


@dataclass
class CaseResult:
    """Outcome of one query-set case: whether the parse (or the raised error) was the expected one, and the
    differences."""

    text: str
    kind: str  # query | error
    family: str
    ok: bool
    problems: list[str] = field(default_factory=list)
    refused: bool = False  # the parser raised a QueryParseError (for a query case: it was refused)


@dataclass
class QuerySetReport:
    """Results of every case of the query set, with pass counts per family."""

    results: list[CaseResult]

    @property
    def total(self) -> int:
        return len(self.results)

    @property
    def passed(self) -> int:
        return sum(r.ok for r in self.results)

    @property
    def accuracy(self) -> float:
        return self.passed / self.total if self.total else 0.0

    def by_family(self) -> dict[str, tuple[int, int]]:
        out: dict[str, list[int]] = {}
        for r in self.results:
            cell = out.setdefault(r.family, [0, 0])
            cell[0] += r.ok
            cell[1] += 1
        return {k: (v[0], v[1]) for k, v in sorted(out.items())}

    def failures(self) -> list[CaseResult]:
        return [r for r in self.results if not r.ok]

    def summary(self) -> str:
        fams = ", ".join(f"{k} {p}/{t}" for k, p, t in ((k, *v) for k, v in self.by_family().items()))
        return f"query set: {self.passed}/{self.total} = {self.accuracy:.1%} ({fams})"


def load_queryset(path: str | Path | None = None) -> dict[str, list[dict[str, Any]]]:
    """The `queries` and `errors` of a query-set file (and its `typos`, [] when it has none)."""
    p = Path(path) if path else default_queryset_path()
    if not p.is_file():
        raise ConfigError(f"query set not found: {p}")
    data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    return {"queries": data.get("queries", []), "errors": data.get("errors", []), "typos": data.get("typos", [])}


def parse_condition_spec(spec: str) -> dict[str, Any]:
    """`crack #>=2 length>1 @tab raw:40px` -> {class, count, bounds, region, raw}."""
    words = spec.split()
    out: dict[str, Any] = {
        "class": None if words[0] == "any" else words[0],
        "count": (">=", 1),
        "bounds": [],
        "region": None,
        "raw": None,
    }
    for w in words[1:]:
        if m := _COUNT.match(w):
            out["count"] = (m.group(1), int(m.group(2)))
        elif m := _BOUND.match(w):
            out["bounds"].append((m.group(1), m.group(2), float(m.group(3))))
        elif w.startswith("@"):
            out["region"] = w[1:]
        elif w.startswith("raw:"):
            out["raw"] = []
            for item in w[4:].split(","):
                m = _RAW.match(item)
                if not m:
                    raise ValueError(f"bad raw spec {item!r} in {spec!r}")
                out["raw"].append((float(m.group(1)), m.group(2)))
        else:
            raise ValueError(f"cannot read {w!r} in condition spec {spec!r}")
    return out


def compare(query: InspectionQuery, case: dict[str, Any], today: dt.date = QUERYSET_TODAY) -> list[str]:
    """Differences between a parse and the expected one ([] = exact match)."""
    problems: list[str] = []
    if query.line != case["line"]:
        problems.append(f"line {query.line} != {case['line']}")
    specs = [parse_condition_spec(s) for s in case["c"]]
    if len(query.conditions) != len(specs):
        problems.append(
            f"{len(query.conditions)} conditions != {len(specs)}: {[c.defect_class for c in query.conditions]}"
        )
    for cond, spec in zip(query.conditions, specs):
        if cond.defect_class != spec["class"]:
            problems.append(f"{cond.id} class {cond.defect_class} != {spec['class']}")
        got_count = (cond.count.op.value, cond.count.value)
        if got_count != spec["count"]:
            problems.append(f"{cond.id} count {got_count} != {spec['count']}")
        got = [(k.measure, k.op.value, k.value) for k in cond.constraints]
        want = spec["bounds"]
        if len(got) != len(want) or any(g[:2] != w[:2] or abs(g[2] - w[2]) > 1e-6 for g, w in zip(got, want)):
            problems.append(f"{cond.id} bounds {got} != {want}")
        if spec["region"] is not None and cond.region != spec["region"]:
            problems.append(f"{cond.id} region {cond.region} != {spec['region']}")
        if spec["raw"] is not None:
            got_raw = [(k.raw_value, k.unit) for k in cond.constraints]
            if [(v, u) for v, u in got_raw] != [(v, u) for v, u in spec["raw"]]:
                problems.append(f"{cond.id} raw {got_raw} != {spec['raw']}")
    logic = format_logic(query.logic)
    if logic != str(case["logic"]):
        problems.append(f"logic {logic} != {case['logic']}")
    want_conf = case.get("min_conf")
    if (query.min_confidence is None) != (want_conf is None) or (
        want_conf is not None and abs(query.min_confidence - want_conf) > 1e-9
    ):
        problems.append(f"min_confidence {query.min_confidence} != {want_conf}")
    scope = case.get("scope") or {}
    want_date = {"today": today, "yesterday": today - dt.timedelta(days=1), None: None}[scope.get("date")]
    if query.scope.date != want_date:
        problems.append(f"scope date {query.scope.date} != {want_date}")
    for key in ("folder", "lot"):
        want = scope.get(key)
        if getattr(query.scope, key) != (str(want) if want is not None else None):
            problems.append(f"scope {key} {getattr(query.scope, key)!r} != {want!r}")
    if query.want.similar_cases != case.get("similar"):
        problems.append(f"similar_cases {query.want.similar_cases} != {case.get('similar')}")
    if query.want.overlays != bool(case.get("overlays", False)):
        problems.append(f"overlays {query.want.overlays} != {case.get('overlays', False)}")
    return problems


def check_query(case: dict[str, Any], today: dt.date = QUERYSET_TODAY, correct_typos: bool = False) -> CaseResult:
    try:
        query = parse_instruction(case["q"], line=case.get("with_line"), today=today, correct_typos=correct_typos)
    except parser_errors.QueryParseError as exc:
        return CaseResult(
            case["q"], "query", case.get("family", "?"), False, [f"{type(exc).__name__}: {exc}"], refused=True
        )
    problems = compare(query, case, today)
    return CaseResult(case["q"], "query", case.get("family", "?"), not problems, problems)


def check_error(case: dict[str, Any], today: dt.date = QUERYSET_TODAY, correct_typos: bool = False) -> CaseResult:
    family = "errors"
    want = getattr(parser_errors, case["error"])
    try:
        query = parse_instruction(case["q"], line=case.get("with_line"), today=today, correct_typos=correct_typos)
    except parser_errors.QueryParseError as exc:
        problems = []
        if not isinstance(exc, want):
            problems.append(f"raised {type(exc).__name__} ({exc}), expected {case['error']}")
        elif isinstance(exc, parser_errors.UnknownTermError):
            reported = {w.word for w in exc.words}
            for word in case.get("unknown", []):
                if word not in reported:
                    problems.append(f"'{word}' not reported as unknown (reported: {sorted(reported)})")
            for word, suggestion in (case.get("suggest") or {}).items():
                if word in reported and suggestion not in exc.suggestions_for(word):
                    problems.append(f"no suggestion '{suggestion}' for '{word}': {exc.suggestions_for(word)}")
        elif isinstance(exc, parser_errors.AmbiguousQueryError):
            if len(exc.readings) < int(case.get("readings", 2)):
                problems.append(f"only {len(exc.readings)} readings named: {exc.readings}")
        return CaseResult(case["q"], "error", family, not problems, problems)
    return CaseResult(
        case["q"],
        "error",
        family,
        False,
        [
            f"parsed without error: {format_logic(query.logic)} "
            f"{[c.defect_class for c in query.conditions]}, expected {case['error']}"
        ],
    )


def evaluate_queryset(path: str | Path | None = None, today: dt.date = QUERYSET_TODAY) -> QuerySetReport:
    data = load_queryset(path)
    results = [check_query(c, today) for c in data["queries"]] + [check_error(c, today) for c in data["errors"]]
    return QuerySetReport(results)


def case_language(text: str) -> str:
    """zh when the instruction has a CJK character, else en (as InspectionQuery.language)."""
    return "zh" if any("\u4e00" <= ch <= "\u9fff" for ch in text) else "en"


@dataclass
class LanguageRates:
    """Refusal and exact-parse rates of a set of query cases in one language."""

    language: str
    total: int
    refused: int
    exact: int

    @property
    def refusal_rate(self) -> float:
        return self.refused / self.total if self.total else 0.0

    @property
    def exact_rate(self) -> float:
        return self.exact / self.total if self.total else 0.0


def rates_by_language(results: list[CaseResult]) -> dict[str, LanguageRates]:
    """Per language (zh, en): how many query cases were refused and how many parsed exactly as expected."""
    out: dict[str, LanguageRates] = {}
    for r in results:
        lang = case_language(r.text)
        cell = out.setdefault(lang, LanguageRates(lang, 0, 0, 0))
        cell.total += 1
        cell.refused += r.refused
        cell.exact += r.ok
    return dict(sorted(out.items(), key=lambda kv: kv[0] != "zh"))
