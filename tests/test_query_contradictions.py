"""Contradictory instructions are refused with the reason, never answered silently with `pass` (issue 22, 5)."""

from __future__ import annotations

import pytest

from agent.parser import parse_instruction
from agent.parser.errors import QueryParseError


@pytest.mark.parametrize(
    "instruction",
    [
        "find cells whose weld offset is more than 0.5 mm and less than 0.2 mm",
        "find cells with spatter but without spatter",
    ],
)
def test_contradictions_are_refused_with_the_reason(instruction):
    with pytest.raises(QueryParseError, match="can never hold|cannot both hold"):
        parse_instruction(instruction)


@pytest.mark.parametrize(
    "instruction",
    [
        "find cells with spatter and no crack",
        "find boards with a short longer than 2 mm and a short shorter than 1 mm",  # two different shorts
        "find cells whose weld offset is more than 0.2 mm and less than 0.5 mm",
    ],
)
def test_satisfiable_instructions_still_parse(instruction):
    assert parse_instruction(instruction).contradictions() == []
