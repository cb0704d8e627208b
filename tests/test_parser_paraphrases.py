"""The paraphrase set (tests/data/paraphrases.yaml, issue 21): 500 instructions written the way operators, shift
supervisors and quality engineers type them, checked with the checker of tests/data/queries.yaml
(agent.parser.queryset). Per language, at most 5 % may be refused and the exact parses may not fall below what was
measured after the parser change; every refusal case must be refused as expected; typos are refused with the right
suggestion by default and read (with a note) when `correct_typos` is on.

`.venv/bin/python tests/test_parser_paraphrases.py` prints the before / after table of docs/parser.md."""

from __future__ import annotations

import sys

import pytest

from agent.parser.queryset import (
    QUERYSET_TODAY,
    CaseResult,
    LanguageRates,
    case_language,
    check_error,
    check_query,
    load_queryset,
    rates_by_language,
)
from defect_agent.paths import project_root

PATH = project_root() / "tests" / "data" / "paraphrases.yaml"
_DATA = load_queryset(PATH)

# The 500 instructions written first, parsed by the parser as it was before issue 21 (same checker, same cases).
BEFORE = {"zh": LanguageRates("zh", 288, refused=160, exact=120), "en": LanguageRates("en", 212, refused=73, exact=133)}
# The 60 written blind after the change (`batch: blind`), on their first run, before the fixes they prompted.
BLIND_FIRST_RUN = {
    "zh": LanguageRates("zh", 30, refused=4, exact=26),
    "en": LanguageRates("en", 30, refused=2, exact=28),
}
MAX_REFUSAL_RATE = 0.05
# Exact parses of the whole set measured after the change: a floor, so that no later change quietly loses one.
EXACT_FLOOR = {"zh": 316, "en": 241}
KINDS = {
    "colloquial", "suffix", "particle", "measure", "traditional", "fullwidth", "numeral", "correlative", "negation",
    "comparison", "plural", "abbreviation", "function",
}  # fmt: skip


def _id(case: dict) -> str:
    return case["q"][:60]


def _results() -> list[tuple[dict, CaseResult]]:
    return [(c, check_query(c, QUERYSET_TODAY)) for c in _DATA["queries"]]


def _pct(n: int, total: int) -> str:
    return f"{n} ({n / total:.1%})" if total else "-"


def rate_table(results: list[tuple[dict, CaseResult]]) -> str:
    """The before / after table of docs/parser.md (markdown): the 500 written first (before / after the change),
    the 60 written blind (first run / now) and the whole set now."""
    first = rates_by_language([r for c, r in results if c.get("batch") != "blind"])
    blind = rates_by_language([r for c, r in results if c.get("batch") == "blind"])
    everything = rates_by_language([r for _, r in results])
    rows = [
        "| instructions | language | n | refused before | refused after | exact before | exact after |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, before, after in (
        ("written before the change", BEFORE, first),
        ("written blind after it (before = first run)", BLIND_FIRST_RUN, blind),
        ("whole set", None, everything),
    ):
        for lang in ("zh", "en"):
            a = after[lang]
            b = before[lang] if before else None
            rows.append(
                f"| {label} | {lang} | {a.total} | {_pct(b.refused, b.total) if b else '-'} "
                f"| {_pct(a.refused, a.total)} | {_pct(b.exact, b.total) if b else '-'} | {_pct(a.exact, a.total)} |"
            )
    return "\n".join(rows)


def test_set_is_large_covers_both_lines_and_every_phrasing_kind():
    queries = _DATA["queries"]
    by_lang = {lang: [c for c in queries if case_language(c["q"]) == lang] for lang in ("zh", "en")}
    assert len(by_lang["zh"]) >= 200 and len(by_lang["en"]) >= 200
    first = [c for c in queries if c.get("batch") != "blind"]
    assert (BEFORE["zh"].total, BEFORE["en"].total) == tuple(
        sum(case_language(c["q"]) == lang for c in first) for lang in ("zh", "en")
    ), "the before rates were measured on exactly these cases"
    for lang, cases in by_lang.items():
        assert {c["line"] for c in cases} == {"battery_tab", "pcb"}, lang
    assert KINDS == {c["family"] for c in queries}
    assert len(_DATA["errors"]) >= 30 and len(_DATA["typos"]) >= 20
    everything = [(c["q"], c.get("with_line")) for c in queries + _DATA["errors"] + _DATA["typos"]]
    assert len(everything) == len(set(everything)), "duplicate instructions in the paraphrase set"
    existing = load_queryset()
    assert not {q for q, _ in everything} & {c["q"] for c in existing["queries"] + existing["errors"]}, (
        "the paraphrase set must hold new instructions, not those of tests/data/queries.yaml"
    )


def test_refusal_and_exact_parse_rates_per_language(capsys):
    results = _results()
    after = rates_by_language([r for _, r in results])
    with capsys.disabled():
        print("\nparaphrase set:\n" + rate_table(results))
    failures = "\n".join(f"{r.text}: {r.problems}" for _, r in results if not r.ok)
    for lang in ("zh", "en"):
        assert after[lang].refusal_rate <= MAX_REFUSAL_RATE, f"{lang} refusals above 5 %:\n{failures}"
        assert after[lang].exact >= EXACT_FLOOR[lang], f"{lang} exact parses below the floor:\n{failures}"


@pytest.mark.parametrize("case", _DATA["errors"], ids=_id)
def test_refusal_case_is_refused_as_expected(case):
    result = check_error(case, QUERYSET_TODAY)
    assert result.ok, "\n".join(result.problems)


@pytest.mark.parametrize("case", _DATA["typos"], ids=_id)
def test_typo_is_refused_by_default_with_the_right_suggestion(case):
    result = check_error({**case, "error": "UnknownTermError"}, QUERYSET_TODAY)
    assert result.ok, "\n".join(result.problems)


@pytest.mark.parametrize("case", [c for c in _DATA["typos"] if not c.get("refused")], ids=_id)
def test_defect_word_typo_is_read_with_correct_typos(case):
    result = check_query({**case, "family": "typo"}, QUERYSET_TODAY, correct_typos=True)
    assert result.ok, "\n".join(result.problems)


@pytest.mark.parametrize("case", [c for c in _DATA["typos"] if c.get("refused")], ids=_id)
def test_typo_in_a_unit_negation_or_comparator_is_refused_even_with_correct_typos(case):
    result = check_error({**case, "error": "UnknownTermError"}, QUERYSET_TODAY, correct_typos=True)
    assert result.ok, "\n".join(result.problems)


def main() -> int:
    """Print the before / after table (the command docs/parser.md quotes)."""
    results = _results()
    sys.stdout.write(rate_table(results) + "\n")
    for _, r in results:
        if not r.ok:
            sys.stdout.write(f"  not exact: {r.text}: {r.problems}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
