"""The deterministic parser: tokens -> scope -> clauses -> InspectionQuery, and the choice of product line."""

from __future__ import annotations

import datetime as dt
import difflib
import logging
import re

from agent.parser.errors import (
    AmbiguousQueryError,
    EmptyQueryError,
    QueryParseError,
    UnknownTermError,
    UnknownWord,
    UnsupportedQueryError,
)
from agent.parser.grammar import parse_clauses
from agent.parser.lexicon import CLASS, FILLER, PUNCT, SEP, SUBJECT, Vocabulary, vocabulary_for
from agent.parser.normalize import Normalized, has_cjk, is_cjk
from agent.parser.scope import extract_scope
from agent.parser.tokenizer import UNKNOWN, Token, Tokenizer
from agent.query import InspectionQuery
from defect_agent.config import available_lines, load_app_config

log = logging.getLogger(__name__)

_DECIMAL_COMMA = re.compile(r"\d,\d")  # "2,5 mm": a European decimal or a thousands separator, never a list


class InstructionParser:
    """Parses instructions for one product line."""

    def __init__(self, line: str, today: dt.date | None = None) -> None:
        self.vocab: Vocabulary = vocabulary_for(line)
        self.line = self.vocab.line
        self.tokenizer = Tokenizer(self.vocab)
        self.today = today

    def tokens(self, text: str) -> list[Token]:
        return self.tokenizer.tokenize(text)[1]

    def parse(self, text: str) -> InspectionQuery:
        if text is None or not text.strip():
            raise EmptyQueryError(
                "the instruction is empty: say what to look for, e.g. "
                "'find cells with weld spatter' / '找出有焊渣飞溅的电芯'",
                text or "",
            )
        norm, tokens = self.tokenizer.tokenize(text)
        m = _DECIMAL_COMMA.search(norm.text)
        if m:
            raise UnsupportedQueryError(
                f"'{norm.span(m.start(), m.end())}': write decimals with a point (2.5) and numbers without thousands "
                "separators; put a space after a comma that separates items",
                text,
            )
        unknown = [t for t in tokens if t.kind == UNKNOWN]
        if unknown:
            raise UnknownTermError([self._explain_unknown(t, tokens, norm) for t in unknown], text, self.line.name)
        if all(t.kind in (FILLER, PUNCT, SEP, SUBJECT) for t in tokens):
            raise EmptyQueryError(
                f"the instruction asks for nothing: name a defect, e.g. {', '.join(self.line.defect_names[:3])}", text
            )
        today = self.today or dt.date.today()
        scope, want = extract_scope(tokens, norm, today, text)
        parsed = parse_clauses(tokens, norm, self.line, text)
        return InspectionQuery(
            instruction=text,
            language="zh" if has_cjk(text) else "en",
            line=self.line.name,
            conditions=parsed.conditions,
            logic=parsed.logic,
            min_confidence=parsed.min_confidence,
            scope=scope,
            want=want,
        )

    # -- unknown words --------------------------------------------------------------------------------------------
    def _explain_unknown(self, tok: Token, tokens: list[Token], norm: Normalized) -> UnknownWord:
        word = norm.span(tok.start, tok.end)
        candidates = [(tok.surface, word)]
        k = tokens.index(tok)
        prev = tokens[k - 1] if k > 0 and tokens[k - 1].end == tok.start else None
        nxt = tokens[k + 1] if k + 1 < len(tokens) and tokens[k + 1].start == tok.end else None
        # 焊渣飞贱: only 飞贱 is unknown, but the operator meant the whole word 焊渣飞溅
        if is_cjk(tok.surface[0]) or prev is not None and prev.kind == CLASS:
            if prev is not None and prev.kind not in (PUNCT, SEP):
                candidates.append((prev.surface + tok.surface, norm.span(prev.start, tok.end)))
            if nxt is not None and nxt.kind not in (PUNCT, SEP):
                candidates.append((tok.surface + nxt.surface, norm.span(tok.start, nxt.end)))
            if prev is not None and nxt is not None and prev.kind not in (PUNCT, SEP) and nxt.kind not in (PUNCT, SEP):
                candidates.append((prev.surface + tok.surface + nxt.surface, norm.span(prev.start, nxt.end)))
        suggestions, context = self._suggest(candidates)
        return UnknownWord(word=word, suggestions=suggestions, context=context, hint=self._other_line_hint(tok.surface))

    def _suggest(self, candidates: list[tuple[str, str]]) -> tuple[list[str], str]:
        terms = self.vocab.suggestion_terms()
        is_class = {k for k, e in self.vocab.table.items() if e.kind == CLASS}
        best: list[tuple[float, int, int, str, str]] = []
        for probe, context in candidates:
            # one wrong character in a two-character Chinese word (裂文 for 裂纹) is a ratio of 0.5
            cutoff = 0.5 if has_cjk(probe) else 0.6
            for key in difflib.get_close_matches(probe, list(terms), n=8, cutoff=cutoff):
                ratio = difflib.SequenceMatcher(None, probe, key).ratio()
                same_place = sum(a == b for a, b in zip(probe, key))
                best.append((ratio, same_place, 1 if key in is_class else 0, terms[key], context))
        if not best:
            return [], ""
        best.sort(key=lambda r: (-r[0], -r[1], -r[2]))
        top_ratio, _, _, _, context = best[0]
        out: list[str] = []
        for ratio, _, _, display, ctx in best:
            if ratio >= top_ratio - 0.05 and display not in out and ctx == context:
                out.append(display)
        return out[:3], context

    def _other_line_hint(self, surface: str) -> str:
        for other in available_lines():
            if other == self.line.name:
                continue
            entry = vocabulary_for(other).lookup(surface)
            if entry is not None and entry.kind == CLASS:
                return f"'{surface}' is a defect of line {other!r}: pass --line {other}"
        return ""


def subject_lines(text: str, line: str) -> list[str]:
    """Product lines named by subject words (cells / 电芯, boards / 电路板) in the instruction."""
    tokens = Tokenizer(vocabulary_for(line)).tokenize(text)[1]
    return list(dict.fromkeys(t.get("line") for t in tokens if t.kind == SUBJECT))


def choose_line(text: str, line: str | None = None) -> str:
    """--line wins; else the subject words; else the configured default line."""
    if line:
        return line
    default = load_app_config().default_line
    named = subject_lines(text, default)
    if len(named) > 1:
        raise AmbiguousQueryError(text, [f"line {n}" for n in named], "Pass --line to choose the product line.", text)
    return named[0] if named else default


def parse_instruction(text: str, line: str | None = None, today: dt.date | None = None) -> InspectionQuery:
    """Parse an operator's instruction (Chinese or English) into an InspectionQuery.

    Line: `line` when given; else the line whose subject words appear (cells / 电芯 -> battery_tab, boards / 板 ->
    pcb); else the configured default line, or, when its words do not cover the instruction, the one other line
    whose words cover it completely ("shorts longer than 2 mm" -> pcb). Raises EmptyQueryError, UnknownTermError
    (with suggestions), AmbiguousQueryError (naming the readings) or UnsupportedQueryError."""
    if text is None or not str(text).strip():
        raise EmptyQueryError(
            "the instruction is empty: say what to look for, e.g. "
            "'find cells with weld spatter' / '找出有焊渣飞溅的电芯'",
            text or "",
        )
    if line:
        named = subject_lines(text, line)
        if named and line not in named:
            log.warning("instruction names %s but --line %s was given; using %s", ", ".join(named), line, line)
        return InstructionParser(line, today).parse(text)
    chosen = choose_line(text)
    default = load_app_config().default_line
    if chosen != default:
        return InstructionParser(chosen, today).parse(text)
    try:
        return InstructionParser(default, today).parse(text)
    except UnknownTermError as first:
        for other in available_lines():
            if other == default:
                continue
            try:
                query = InstructionParser(other, today).parse(text)
            except UnknownTermError:
                continue
            except QueryParseError as exc:
                # every word is known on that line, so its complaint is the useful one
                raise exc from first
            log.info("instruction words belong to line %s (not the default %s)", other, default)
            return query
        raise first
