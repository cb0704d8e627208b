"""The deterministic parser: tokens -> scope -> clauses -> InspectionQuery, and the choice of product line."""

from __future__ import annotations

import datetime as dt
import difflib
import logging
import re
from dataclasses import dataclass, field

from agent.parser.errors import (
    AmbiguousQueryError,
    EmptyQueryError,
    QueryParseError,
    UnknownTermError,
    UnknownWord,
    UnsupportedQueryError,
)
from agent.parser.grammar import parse_clauses
from agent.parser.lexicon import (
    ANY,
    CLASS,
    DET,
    EXCEPT,
    EXCEPT_END,
    FILLER,
    OTHERS,
    PUNCT,
    SEP,
    SUBJECT,
    Vocabulary,
    line_names,
    vocabulary_for,
)
from agent.parser.normalize import Normalized, has_cjk, is_cjk, normalize
from agent.parser.scope import extract_scope
from agent.parser.tokenizer import UNKNOWN, Token, Tokenizer
from agent.parser.typos import correction, osa_distance
from agent.query import InspectionQuery
from defect_agent.config import load_app_config

log = logging.getLogger(__name__)

_DECIMAL_COMMA = re.compile(r"\d,\d")  # "2,5 mm": a European decimal or a thousands separator, never a list


@dataclass(frozen=True)
class ParseResult:
    """A parsed instruction and the parser's notes on how it read it: words it skipped (赶紧, 哪个), words it read
    in another form (渣子 as 焊渣), typos it corrected. InspectionQuery has no field for notes (agent/query.py), so
    they travel beside it."""

    query: InspectionQuery
    notes: list[str] = field(default_factory=list)


class InstructionParser:
    """Parses instructions for one product line. `correct_typos`: read an English defect word one letter off
    ("crakcs") as the word, with a note, instead of refusing it with a suggestion."""

    def __init__(self, line: str, today: dt.date | None = None, correct_typos: bool = False) -> None:
        self.vocab: Vocabulary = vocabulary_for(line)
        self.line = self.vocab.line
        self.tokenizer = Tokenizer.of(self.vocab)
        self.today = today
        self.correct_typos = correct_typos

    def tokens(self, text: str) -> list[Token]:
        return self.tokenizer.tokenize(text)[1]

    def reads_every_word(self, text: str) -> bool:
        """Whether this line's words cover the instruction (no unknown word), without parsing it: a cheap test
        before trying another line, where a refusal's suggestions would be computed for nothing."""
        tokens = self.tokens(text)
        if self.correct_typos:
            self._correct_typos(tokens, normalize(text))
        _check_exceptions(tokens)
        return not any(t.kind == UNKNOWN for t in tokens)

    def parse(self, text: str) -> InspectionQuery:
        return self.read(text).query

    def read(self, text: str) -> ParseResult:
        """Parse `text` and say what was skipped or read in another form."""
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
        if self.correct_typos:
            self._correct_typos(tokens, norm)
        _check_exceptions(tokens)
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
        query = InspectionQuery(
            instruction=text,
            language="zh" if has_cjk(text) else "en",
            line=self.line.name,
            conditions=parsed.conditions,
            logic=parsed.logic,
            min_confidence=parsed.min_confidence,
            scope=scope,
            want=want,
        )
        notes = [str(t.extra["note"]) for t in tokens if t.extra.get("note")]
        for note in notes:
            log.info("%s", note)
        return ParseResult(query, notes)

    def _correct_typos(self, tokens: list[Token], norm: Normalized) -> None:
        for tok in tokens:
            if tok.kind != UNKNOWN:
                continue
            fix = correction(tok.surface, self.vocab.table)
            if fix is not None:
                key, entry = fix
                tok.kind, tok.entry = entry.kind, entry
                tok.extra["note"] = f"read '{norm.span(tok.start, tok.end)}' as '{key}' (one letter off)"

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
        # a word of the lexicon used where it cannot be read ("cracks except burns") is no typo of itself
        suggestions = [s for s in suggestions if normalize(s).text != tok.surface]
        hint = str(tok.extra.get("hint", "")) or self._other_line_hint(tok.surface)
        return UnknownWord(word=word, suggestions=suggestions, context=context, hint=hint)

    def _suggest(self, candidates: list[tuple[str, str]]) -> tuple[list[str], str]:
        # the same unknown words come back (a typo an operator keeps making): remember the answer per vocabulary
        cache: dict[tuple[tuple[str, str], ...], tuple[list[str], str]] = self.vocab.memo.setdefault("suggested", {})
        key = tuple(candidates)
        hit = cache.get(key)  # read once: another thread may clear the cache (the server parses concurrently)
        if hit is None:
            hit = self._suggest_uncached(candidates)
            if len(cache) >= 4096:
                cache.clear()
            cache[key] = hit
        words, context = hit
        return list(words), context

    def _suggest_uncached(self, candidates: list[tuple[str, str]]) -> tuple[list[str], str]:
        index = _SuggestionIndex.of(self.vocab)
        best: list[tuple[tuple[float, ...], int, float, str, str]] = []
        for probe, context in candidates:
            # one wrong character in a two-character Chinese word (裂文 for 裂纹) is a ratio of 0.5
            cutoff = 0.5 if has_cjk(probe) else 0.6
            for key in difflib.get_close_matches(probe, index.pool(probe), n=8, cutoff=cutoff):
                ratio = difflib.SequenceMatcher(None, probe, key).ratio()
                same_place = sum(a == b for a, b in zip(probe, key))
                cls = 1 if key in index.classes else 0
                order = index.order[key]  # on a tie the word listed first in the configs wins (烧伤 for 烧商)
                if has_cjk(probe):
                    # a Chinese typo is a wrong character of the same length (裂文 for 裂纹, not the word 裂)
                    edits = 3 + abs(len(probe) - len(key))
                    rank: tuple[float, ...] = (edits, -ratio, -same_place, -cls, order)
                else:
                    # an English typo is one or two keystrokes off: rank by edit distance first, then prefer a
                    # defect word ("shrots" is one swap from "shorts" and one deletion from "shots")
                    edits = min(osa_distance(probe, key), 3)
                    rank = (edits, -cls, -ratio, -same_place, order)
                    if edits > 2:
                        rank = (3, -ratio, -same_place, -cls, order)
                best.append((rank, edits, ratio, index.terms[key], context))
        if not best:
            return [], ""
        best.sort(key=lambda r: r[0])
        _, top_edits, top_ratio, _, context = best[0]
        out: list[str] = []
        for _, edits, ratio, display, ctx in best:
            close = edits == top_edits and (top_edits <= 2 or ratio >= top_ratio - 0.05)
            if close and display not in out and ctx == context:
                out.append(display)
        return out[:3], context

    def _other_line_hint(self, surface: str) -> str:
        for other in line_names():
            if other == self.line.name:
                continue
            entry = vocabulary_for(other).lookup(surface)
            if entry is not None and entry.kind == CLASS:
                return f"'{surface}' is a defect of line {other!r}: pass --line {other}"
        return ""


def subject_lines(text: str, line: str) -> list[str]:
    """Product lines named by subject words (cells / 电芯, boards / 电路板) in the instruction."""
    tokens = Tokenizer.of(vocabulary_for(line)).tokenize(text)[1]
    return list(dict.fromkeys(t.get("line") for t in tokens if t.kind == SUBJECT and t.get("line")))


def choose_line(text: str, line: str | None = None) -> str:
    """--line wins; else the subject words; else the configured default line."""
    if line:
        return line
    default = load_app_config().default_line
    named = subject_lines(text, default)
    if len(named) > 1:
        raise AmbiguousQueryError(text, [f"line {n}" for n in named], "Pass --line to choose the product line.", text)
    return named[0] if named else default


@dataclass
class _SuggestionIndex:
    """The terms worth suggesting for one vocabulary, indexed so that each unknown word is compared only with the
    terms that can reach difflib's cutoff (the suggestions are the same, found in a fraction of the time): Chinese
    terms sharing a character with it; Latin terms of a length within the cutoff's reach (a ratio >= 0.6 needs the
    lengths within 3/7 .. 7/3 of each other) that share enough distinct characters with it (difflib's matched
    characters M <= m * shared, m the most times one character occurs in the word, and 2M / (n + length) >= 0.6)."""

    terms: dict[str, str]
    order: dict[str, int]
    classes: set[str]
    by_char: dict[str, list[str]]
    by_length: dict[int, list[tuple[str, int]]]  # length -> (term, bit mask of its characters)
    bits: dict[str, int]

    @classmethod
    def of(cls, vocab: Vocabulary) -> _SuggestionIndex:
        if "suggestion_index" not in vocab.memo:
            terms = vocab.suggestion_terms()
            by_char: dict[str, list[str]] = {}
            by_length: dict[int, list[tuple[str, int]]] = {}
            bits: dict[str, int] = {}
            for key in terms:
                if has_cjk(key):
                    for c in dict.fromkeys(key):
                        by_char.setdefault(c, []).append(key)
                else:
                    mask = 0
                    for c in key:
                        mask |= 1 << bits.setdefault(c, len(bits))
                    by_length.setdefault(len(key), []).append((key, mask))
            classes = {k for k, e in vocab.table.items() if e.kind == CLASS}
            order = {k: i for i, k in enumerate(terms)}
            vocab.memo["suggestion_index"] = cls(terms, order, classes, by_char, by_length, bits)
        index: _SuggestionIndex = vocab.memo["suggestion_index"]
        return index

    def pool(self, probe: str) -> list[str]:
        if has_cjk(probe):
            return list(dict.fromkeys(k for c in dict.fromkeys(probe) for k in self.by_char.get(c, [])))
        n = len(probe)
        mask = 0
        for c in set(probe):
            if c in self.bits:  # a character no term has shares nothing
                mask |= 1 << self.bits[c]
        most = max((probe.count(c) for c in set(probe)), default=0)
        return [
            k
            for length in range(-(-3 * n // 7), 7 * n // 3 + 1)
            for k, term_mask in self.by_length.get(length, [])
            if 10 * most * (mask & term_mask).bit_count() >= 3 * (n + length)
        ]


def _check_exceptions(tokens: list[Token]) -> None:
    """ "any defect except X" is read only right after a word for any defect; 其他 / 以外 only after 除了. Elsewhere
    ("cracks except burns", "焊点以外") they say something a query cannot hold: unknown words, with suggestions."""
    seen_except = False
    for k, tok in enumerate(tokens):
        if tok.kind == EXCEPT:
            if is_cjk(tok.surface[0]):
                seen_except = True
                continue
            j = k - 1
            while j >= 0 and tokens[j].kind in (DET, FILLER, PUNCT):
                j -= 1
            if j >= 0 and tokens[j].kind == ANY:
                seen_except = True
            else:
                tok.kind = UNKNOWN
                tok.extra["hint"] = (
                    f"'{tok.surface}' is read only after a word for any defect ('any defect {tok.surface} cracks')"
                )
        elif tok.kind in (OTHERS, EXCEPT_END) and not seen_except:
            tok.kind = UNKNOWN
            tok.extra["hint"] = f"'{tok.surface}' is read only after 除了 (除了裂纹以外的缺陷)"


def parse_instruction(
    text: str, line: str | None = None, today: dt.date | None = None, correct_typos: bool = False
) -> InspectionQuery:
    """Parse an operator's instruction (Chinese or English) into an InspectionQuery (read_instruction also
    returns the parser's notes).

    Line: `line` when given; else the line whose subject words appear (cells / 电芯 -> battery_tab, boards / 板 ->
    pcb); else the configured default line, or, when its words do not cover the instruction, the one other line
    whose words cover it completely ("shorts longer than 2 mm" -> pcb). Raises EmptyQueryError, UnknownTermError
    (with suggestions), AmbiguousQueryError (naming the readings) or UnsupportedQueryError."""
    return read_instruction(text, line, today, correct_typos).query


def read_instruction(
    text: str, line: str | None = None, today: dt.date | None = None, correct_typos: bool = False
) -> ParseResult:
    """parse_instruction, with the parser's notes: words skipped or read in another form. An instruction no image
    could ever match ("offset > 0.5 mm and offset < 0.2 mm") is refused, never answered with a silent `no`."""
    result = _read_instruction(text, line, today, correct_typos)
    problems = result.query.contradictions()
    if problems:
        raise UnsupportedQueryError(
            "the instruction contradicts itself, so no image could ever match: " + "; ".join(problems), text
        )
    result.query.notes = list(result.notes)
    return result


def _read_instruction(
    text: str, line: str | None = None, today: dt.date | None = None, correct_typos: bool = False
) -> ParseResult:
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
        return InstructionParser(line, today, correct_typos).read(text)
    chosen = choose_line(text)
    default = load_app_config().default_line
    if chosen != default:
        return InstructionParser(chosen, today, correct_typos).read(text)
    parser = InstructionParser(default, today, correct_typos)
    if parser.reads_every_word(text):
        return parser.read(text)
    # the default line's refusal (with its suggestions, which cost a few ms a word) is made only when needed
    for other in line_names():
        if other == default:
            continue
        other_parser = InstructionParser(other, today, correct_typos)
        if not other_parser.reads_every_word(text):
            continue
        try:
            result = other_parser.read(text)
        except UnknownTermError:
            continue
        except QueryParseError as exc:
            # every word is known on that line, so its complaint is the useful one
            raise exc from _refusal(parser, text)
        log.info("instruction words belong to line %s (not the default %s)", other, default)
        return result
    return parser.read(text)  # raises the default line's refusal


def _refusal(parser: InstructionParser, text: str) -> QueryParseError | None:
    try:
        parser.read(text)
    except QueryParseError as exc:
        return exc
    return None
