"""Errors users see: unknown words with suggestions, ambiguity with both readings, empty and unsupported asks."""

from __future__ import annotations

import pytest

from agent.parser import (
    AmbiguousQueryError,
    EmptyQueryError,
    UnknownTermError,
    UnsupportedQueryError,
    parse_instruction,
)
from defect_agent.errors import DefectAgentError


def test_unknown_words_are_all_named_with_suggestions():
    with pytest.raises(UnknownTermError) as err:
        parse_instruction("find cells with burnn marks and cracs")
    exc = err.value
    assert isinstance(exc, DefectAgentError)
    assert exc.unknown == ["burnn", "cracs"]
    assert exc.suggestions_for("burnn")[0] == "burn" and exc.suggestions_for("cracs")[0] == "cracks"
    assert "did you mean 'burn'" in str(exc) and "'cracs'" in str(exc)


def test_unknown_chinese_fragment_is_matched_with_its_neighbour():
    with pytest.raises(UnknownTermError) as err:
        parse_instruction("找出焊渣飞贱的电芯")
    (word,) = err.value.words
    assert word.word == "飞贱" and word.context == "焊渣飞贱" and word.suggestions == ["焊渣飞溅"]
    assert "did you mean '焊渣飞溅'" in str(err.value)


def test_unknown_word_of_another_line_says_which():
    with pytest.raises(UnknownTermError) as err:
        parse_instruction("short circuits", line="battery_tab")
    assert err.value.words[0].hint.endswith("pass --line pcb")


def test_bound_after_a_bare_list_is_ambiguous_with_both_readings():
    with pytest.raises(AmbiguousQueryError) as err:
        parse_instruction("cracks or burns longer than 1 mm")
    a, b = err.value.readings
    assert "only burn" in a and "both" in b
    assert "a burn longer than 1 mm" in err.value.hint
    with pytest.raises(AmbiguousQueryError):
        parse_instruction("长度超过2毫米的短路或断路")
    # not ambiguous: the article marks "a short ..." as its own phrase; an offset bound cannot apply to spatter
    assert len(parse_instruction("an open or a short longer than 2 mm").conditions[0].constraints) == 0
    assert parse_instruction("超0.3mm的偏移和焊渣").conditions[1].constraints == []


def test_number_without_unit_is_ambiguous_between_size_and_count():
    with pytest.raises(AmbiguousQueryError) as err:
        parse_instruction("offset more than 3")
    text = " ".join(err.value.readings)
    assert "3 mm" in text and "count > 3" in text
    with pytest.raises(AmbiguousQueryError) as err:
        parse_instruction("crack length above 2")
    assert any("px" in r for r in err.value.readings)
    # a count word or a unit settles it
    assert parse_instruction("more than 3 cracks").conditions[0].count.value == 3
    assert parse_instruction("裂纹超过3处").conditions[0].count.value == 3


@pytest.mark.parametrize("text", ["", "   ", "find all cells", "today's images in folder line2", "请找出"])
def test_empty(text):
    with pytest.raises(EmptyQueryError):
        parse_instruction(text)


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("find cells with a tab weld", "part, not a defect"),
        ("spatter area above 1 mm", "mm² or px²"),
        ("missing weld longer than 1 mm", "missing_weld has no length"),
        ("cracks and", "ends with 'and'"),
        ("cracks with a length of", "has no number"),
    ],
)
def test_unsupported(text, fragment):
    with pytest.raises(UnsupportedQueryError, match=fragment):
        parse_instruction(text)


def test_offset_on_a_line_without_offset():
    with pytest.raises(UnsupportedQueryError, match="no offset"):
        parse_instruction("offset more than 0.3 mm", line="pcb")
