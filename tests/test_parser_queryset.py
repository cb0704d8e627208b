"""The hand-written instruction set (tests/data/queries.yaml): every instruction parses exactly as expected and
every error case raises the expected error with its suggestions / readings."""

from __future__ import annotations

import pytest

from agent.parser.queryset import QUERYSET_TODAY, check_error, check_query, evaluate_queryset, load_queryset

_DATA = load_queryset()


def _id(case: dict) -> str:
    return case["q"][:60] or "<empty>"


def test_queryset_is_large_and_covers_every_family():
    queries, errors = _DATA["queries"], _DATA["errors"]
    assert len(queries) >= 150
    families = {q["family"] for q in queries}
    assert {"seed", "class", "count", "size", "offset", "logic", "scope", "confidence", "returns", "line"} <= families
    langs = {"zh" if any("\u4e00" <= ch <= "\u9fff" for ch in q["q"]) else "en" for q in queries}
    assert langs == {"zh", "en"}
    assert {q["line"] for q in queries} == {"battery_tab", "pcb"}
    assert {e["error"] for e in errors} >= {
        "UnknownTermError",
        "AmbiguousQueryError",
        "EmptyQueryError",
        "UnsupportedQueryError",
    }
    keys = [(c["q"], c.get("with_line")) for c in queries + errors]
    assert len(keys) == len(set(keys)), "duplicate instructions in the query set"


@pytest.mark.parametrize("case", _DATA["queries"], ids=_id)
def test_query_parses_as_expected(case):
    result = check_query(case, QUERYSET_TODAY)
    assert result.ok, "\n".join(result.problems)


@pytest.mark.parametrize("case", _DATA["errors"], ids=_id)
def test_error_case_raises_as_expected(case):
    result = check_error(case, QUERYSET_TODAY)
    assert result.ok, "\n".join(result.problems)


def test_queryset_accuracy(capsys):
    report = evaluate_queryset()
    with capsys.disabled():
        print("\n" + report.summary())
    assert report.accuracy >= 0.98, "\n".join(f"{f.text}: {f.problems}" for f in report.failures())
