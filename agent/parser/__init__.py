"""Natural-language instruction parser (Chinese and English) -> InspectionQuery.

Deterministic by default: the words come from configs/lexicon.yaml (language) and the product line's config
(defect classes, subject words); a small grammar handles counts, bounds with units, and/or/not and scope.
`agent.parser.llm.LLMParser` is an optional backend over a langchain-core chat model."""

from __future__ import annotations

from agent.parser.core import InstructionParser, ParseResult, choose_line, parse_instruction, read_instruction
from agent.parser.describe import describe_query
from agent.parser.errors import (
    AmbiguousQueryError,
    EmptyQueryError,
    QueryParseError,
    UnknownTermError,
    UnknownWord,
    UnsupportedQueryError,
)
from agent.parser.lexicon import Lexicon, known_terms
from agent.parser.logic_expr import format_logic, parse_logic_expr

__all__ = [
    "AmbiguousQueryError",
    "EmptyQueryError",
    "InstructionParser",
    "Lexicon",
    "ParseResult",
    "QueryParseError",
    "UnknownTermError",
    "UnknownWord",
    "UnsupportedQueryError",
    "choose_line",
    "describe_query",
    "format_logic",
    "known_terms",
    "parse_instruction",
    "parse_logic_expr",
    "read_instruction",
]
