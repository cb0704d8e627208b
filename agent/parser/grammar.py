"""Clauses and logic. The token stream is cut at logic words into atoms (agent.parser.atoms); the logic words
between two atoms form a connector group (", and", "but no", 且伴随). Rules, in order:

1. A comma / 、 takes the meaning of the next and/or ("cracks, burns or spatter" = any of the three) or of a list
   marker ("any of: ...", 任一). A list of defects with no and/or at all ("开路、短路、鼠咬") is ambiguous (all,
   or any?); a separator before a bound, a negation or a positive word means AND ("spatter, confidence at
   least 0.8", "无裂纹、无烧伤").
2. "with" / "has" / 有 joins two defects ("spatter with a crack"); before a number it belongs to its clause
   ("cracks with a length of more than 2 mm").
3. A clause without a defect word continues the previous one: after AND it adds bounds to the same defect
   ("cracks longer than 1 mm and wider than 0.1 mm"); after OR it is the same defect with other bounds. A clause
   that only bounds the confidence from below ("..., confidence at least 0.8") sets the query's min_confidence.
   A part alone is no defect, except as the line's `absent` defect ("without a weld" = missing_weld).
4. NOT binds tightest, then AND, then OR. Clause words (but, but no, 且, 并且, as well as, "with" between two
   defects) join whole clauses and bind loosest: "cracks or burns, but no spatter" = (crack OR burn) AND NOT
   spatter; so does a comma before an and/or that differs from the list before it ("missing weld or cracks,
   and no burns"). A negation covers the list of bare defect words right after it ("without cracks or burns" =
   none of them) until a positive word, a clause word or a determiner ("without cracks or a burn ...") starts a
   new clause.
5. A number written after the last item of a bare list ("cracks or burns longer than 1 mm") or before the first
   (长度超过2毫米的短路或断路) may bound one item or all: AmbiguousQueryError, unless an article / count marks
   the item as its own phrase ("an open circuit or a short longer than 2 mm") or the bound cannot mean the same
   quantity for the other items (超0.3mm的偏移和焊渣: an offset for 偏移, a length for 焊渣).
6. Two clauses that each name the inspected item ("cells with cracks and cells with burns") are ambiguous
   (items with both, or both groups of items?).
7. Negations in one connector group cancel in pairs: "not crack-free", 不是没有裂纹 = cracks. A correlative pair reads
   as its joiner (不是A就是B = A or B); its first word alone has its own meaning (不是A = not A).
8. 除了X以外的缺陷 / "any defect except X": every defect of the line but X, i.e. the OR of the others (a negation
   before it covers them all); 除了X还有Y (besides X, also Y) is X and Y.
9. A part alone before a negated defect belongs to it: 焊点没有偏移, "tabs w/o burns" = the defect not on that part."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from agent.parser.atoms import Atom, Bound, absent_class, allowed_measures, finalize, natural_measure, parse_atom
from agent.parser.errors import AmbiguousQueryError, EmptyQueryError, UnsupportedQueryError
from agent.parser.lexicon import (
    AND,
    AND_CLAUSE,
    AND_NOT,
    ANY,
    BETWEEN,
    BUT_NOT,
    CLASS,
    CLASSIFIER,
    CMP,
    CORR_FIRST,
    CORR_THEN,
    DE,
    DET,
    EXCEPT,
    EXCEPT_END,
    FILLER,
    LIST_ALL,
    LIST_ANY,
    MEASURE,
    NONE_AFTER,
    NOR,
    NOT,
    NOT_AFTER,
    OR,
    OTHERS,
    POSITIVE,
    PUNCT,
    QUANT,
    RANGE_END,
    RANGE_TO,
    SEP,
    UNIT,
    Entry,
)
from agent.parser.normalize import Normalized
from agent.parser.tokenizer import NUM, RANGE, SCOPE, Token
from agent.parser.units import convert, unitless_confidence
from agent.query import Condition, Logic
from defect_agent.config import LineConfig

CONNECTORS = {AND, AND_CLAUSE, AND_NOT, OR, NOT, BUT_NOT, NOR, SEP}
_DROP = {FILLER, PUNCT}  # subject words stay: an atom notes whether it names its own item ("... cells and cells ...")
_INVERT = {">": "<=", ">=": "<", "<": ">=", "<=": ">"}


@dataclass
class Group:
    """The logic words between two atoms (", and", "but no", 且伴随) and how they join them: and / or, negation,
    noun or clause level."""

    tokens: list[Token] = field(default_factory=list)
    binop: str | None = None  # and | or
    neg: bool = False
    positive: bool = False
    clause: bool = False  # clause-level word (且, as well as, but no): never part of a noun list
    sep: bool = False
    explicit: bool = False  # the and/or was written in this group (not taken over by a separator)
    defaulted: bool = False  # a bare separator with no and/or anywhere after it

    def words(self, norm: Normalized) -> str:
        return " ".join(norm.span(t.start, t.end) for t in self.tokens)


@dataclass
class Parsed:
    """What `parse_clauses` returns: the conditions, their boolean logic and the min_confidence set by a
    confidence-only clause."""

    conditions: list[Condition]
    logic: Logic
    min_confidence: float | None


# ---- pre-passes ----------------------------------------------------------------------------------------------------


def _invert_negated_comparators(tokens: list[Token]) -> list[Token]:
    """`偏移没有超过0.3mm`, `offset not over 0.3 mm`: a negation between a defect / measure word and a comparator
    negates the comparator (offset <= 0.3). At the start of a clause (没有超过0.3mm的偏移) it negates the clause."""
    out: list[Token] = []
    i = 0
    while i < len(tokens):
        t = tokens[i]
        nxt = tokens[i + 1] if i + 1 < len(tokens) else None
        if (
            t.kind == NOT
            and nxt is not None
            and nxt.kind == CMP
            and nxt.get("position") == "prefix"
            and nxt.get("op") in _INVERT
            and out
            and out[-1].kind in (CLASS, MEASURE, ANY)
        ):
            nxt.extra["op"] = _INVERT[nxt.get("op")]
            i += 1
            continue
        out.append(t)
        i += 1
    return out


def _collapse_ranges(tokens: list[Token], norm: Normalized, text: str) -> list[Token]:
    """`between 0.3 and 0.5 mm`, `0.3-0.5mm`, `介于0.3和0.5毫米之间`, `0.3到0.5mm` -> one RANGE token."""
    out: list[Token] = []
    i = 0
    n = len(tokens)

    def unit_at(k: int) -> Token | None:
        return tokens[k] if k < n and tokens[k].kind in (UNIT, CLASSIFIER) and not tokens[k].get("prefix") else None

    while i < n:
        t = tokens[i]
        between = t.kind == BETWEEN
        j = i + 1 if between else i
        if j < n and tokens[j].kind == NUM:
            lo = tokens[j]
            k = j + 1
            lo_unit = unit_at(k)
            k += 1 if lo_unit else 0
            seps = (RANGE_TO, AND) if between else (RANGE_TO,)
            if k + 1 < n and tokens[k].kind in seps and tokens[k + 1].kind == NUM:
                hi = tokens[k + 1]
                m = k + 2
                hi_unit = unit_at(m)
                m += 1 if hi_unit else 0
                if m < n and tokens[m].kind == RANGE_END:
                    m += 1
                unit_tok = hi_unit or lo_unit
                classifier = unit_tok is not None and unit_tok.kind == CLASSIFIER
                if lo.value is not None and hi.value is not None and lo.value > hi.value:
                    raise UnsupportedQueryError(
                        f"'{norm.span(t.start, tokens[m - 1].end)}': the first number of a range is the smaller", text
                    )
                out.append(
                    Token(
                        RANGE,
                        t.start,
                        tokens[m - 1].end,
                        norm.text[t.start : tokens[m - 1].end],
                        extra={
                            "low": lo,
                            "high": hi,
                            "classifier": classifier,
                            "unit": unit_tok.entry if unit_tok is not None and not classifier else None,
                            "unit_text": norm.span(unit_tok.start, unit_tok.end) if unit_tok is not None else "",
                        },
                    )
                )
                i = m
                continue
        if between:
            raise UnsupportedQueryError(
                f"'{norm.span(t.start, t.end)}' needs two numbers: e.g. 'between 0.3 and 0.5 mm' / 介于0.3和0.5毫米之间",
                text,
            )
        if t.kind not in (RANGE_TO, RANGE_END):  # a lone "to" / 之间 carries nothing
            out.append(t)
        i += 1
    return out


def _resolve_correlatives(tokens: list[Token]) -> list[Token]:
    """不是A就是B: the first word of a pair opens the list and the second joins (OR); the first word alone reads as
    its `alone` meaning (不是A = not A), the second alone as nothing."""
    out: list[Token] = []
    paired: set[int] = set()
    for k, t in enumerate(tokens):
        if t.kind == CORR_FIRST:
            partner = next(
                (
                    j
                    for j in range(k + 1, len(tokens))
                    if tokens[j].kind == CORR_THEN and j not in paired and tokens[j].get("pair") == t.get("pair")
                ),
                None,
            )
            if partner is not None:
                paired.add(partner)
            elif t.get("alone") == "not":
                out.append(Token(NOT, t.start, t.end, t.surface))
        elif t.kind == CORR_THEN:
            if k in paired:
                out.append(Token(OR if t.get("op") == "or" else AND, t.start, t.end, t.surface))
        else:
            out.append(t)
    return out


def _rewrite_exceptions(tokens: list[Token], norm: Normalized, line: LineConfig, text: str) -> list[Token]:
    """除了X以外的缺陷 / 除了X，其他缺陷 / "any defect except X" -> the line's other defects joined by OR, with the
    span of the whole phrase; 除了X还有Y -> X and Y."""
    k = next((i for i, t in enumerate(tokens) if t.kind == EXCEPT), None)
    if k is None:
        return tokens
    t = tokens[k]
    english = not any("\u4e00" <= c <= "\u9fff" for c in t.surface)
    # the named defects: class words, joined by and / or / separators
    j = k + 1
    named: list[Token] = []
    while j < len(tokens) and (
        tokens[j].kind in (AND, OR, SEP, DET) or (tokens[j].kind == CLASS and tokens[j].get("role") == "defect")
    ):
        if tokens[j].kind == CLASS:
            named.append(tokens[j])
        j += 1
    while named and j > k + 1 and tokens[j - 1].kind != CLASS:  # a trailing ", and" belongs to what follows
        j -= 1
    if not named:
        raise UnsupportedQueryError(f"'{norm.span(t.start, t.end)}' must name the defects it leaves out", text)
    start = k
    if english:
        # _check_exceptions (core) made sure a word for any defect comes before, maybe after an article
        start = k - 1
        while start > 0 and tokens[start].kind != ANY:
            start -= 1
        while start > 0 and tokens[start - 1].kind == DET:
            start -= 1
        end = j
    else:
        end = j
        while end < len(tokens) and tokens[end].kind == EXCEPT_END:
            end += 1
        nxt = end
        while nxt < len(tokens) and tokens[nxt].kind in (DE, SEP):
            nxt += 1
        follow = tokens[nxt] if nxt < len(tokens) else None
        if follow is not None and follow.kind in (AND_CLAUSE, AND, POSITIVE):
            # 除了裂纹还有烧伤: besides cracks, also burns
            kept = [u for i, u in enumerate(tokens) if i != k and not (j <= i < end)]
            return _rewrite_exceptions(kept, norm, line, text)
        if follow is not None and follow.kind not in (OTHERS, ANY, SCOPE, CLASS):
            raise UnsupportedQueryError(
                f"'{norm.span(t.start, follow.end)}': a bound after an exception is not supported; name the defects "
                "you want instead",
                text,
            )
        if follow is not None and follow.kind == CLASS:
            names = ", ".join(dict.fromkeys(n.get("name") for n in named))
            raise AmbiguousQueryError(
                norm.span(t.start, follow.end),
                [f"every defect except {names}", f"{names} and what follows"],
                "说「除了X以外的缺陷」(X以外的任一缺陷) 或「除了X还有Y」(X和Y都有)。",
                text,
            )
        end = nxt
        while end < len(tokens) and tokens[end].kind in (OTHERS, DE, ANY):
            end += 1
    rest = end
    while rest < len(tokens) and tokens[rest].kind not in (AND, AND_CLAUSE, OR, SEP, NOT, BUT_NOT, NOR, AND_NOT):
        if tokens[rest].kind in (NUM, RANGE, CMP, QUANT, MEASURE, UNIT, CLASS, ANY):
            raise UnsupportedQueryError(
                f"'{norm.span(tokens[start].start, tokens[rest].end)}': a bound or defect after an exception is not "
                "supported; name the defects you want instead",
                text,
            )
        rest += 1
    left_out = {n.get("name") for n in named}
    others = [name for name in line.defect_names if name not in left_out]
    if not others:
        raise UnsupportedQueryError(f"'{norm.span(tokens[start].start, tokens[end - 1].end)}' leaves no defect", text)
    a, b = tokens[start].start, tokens[end - 1].end
    phrase: list[Token] = []
    for idx, name in enumerate(others):
        if idx:
            phrase.append(Token(OR, a, a, ""))
        entry = Entry(CLASS, (("name", name), ("role", "defect")), name)
        phrase.append(Token(CLASS, a, b, norm.text[a:b], entry=entry))
    return _rewrite_exceptions([*tokens[:start], *phrase, *tokens[end:]], norm, line, text)


# ---- split ---------------------------------------------------------------------------------------------------------


def _has_defect(tokens: list[Token]) -> bool:
    return any(t.kind == ANY or (t.kind == CLASS and t.get("role") == "defect") for t in tokens)


def _split(tokens: list[Token], text: str) -> tuple[list[Group], list[list[Token]], Group]:
    """Cut at logic words: (groups before each atom, atoms, trailing group)."""
    groups = [Group()]
    atoms: list[list[Token]] = []
    cur: list[Token] = []
    for idx, t in enumerate(tokens):
        if t.kind in CONNECTORS:
            if cur:
                atoms.append(cur)
                groups.append(Group())
                cur = []
            groups[-1].tokens.append(t)
        elif t.kind == NOT_AFTER:
            if not _has_defect(cur):
                raise UnsupportedQueryError(f"'{t.surface}' must follow a defect word ('crack-free')", text)
            # "crack-free cells": negate the clause being read
            groups[-1].tokens.append(Token(NOT, t.start, t.end, t.surface))
        elif t.kind == NONE_AFTER:
            if not _has_defect(cur):
                raise UnsupportedQueryError(f"'{t.surface}' must follow defect words (毛刺和残铜都没有)", text)
            # 毛刺和残铜都没有: negate the list joined by and / or that ends here (a comma ends it: 有焊渣，裂纹和
            # 烧伤都没有 = spatter and none of crack, burn); rule 4 then spreads the negation over the list
            k = len(groups) - 1
            while k > 0 and groups[k].tokens and all(u.kind in (AND, OR) for u in groups[k].tokens):
                k -= 1
            groups[k].tokens.append(Token(NOT, t.start, t.end, t.surface))
        elif t.kind == POSITIVE:
            if not cur:
                groups[-1].tokens.append(t)
                continue
            rest: list[Token] = []
            for u in tokens[idx + 1 :]:
                if u.kind in CONNECTORS:
                    break
                rest.append(u)
            if _has_defect(cur) and _has_defect(rest):
                atoms.append(cur)
                groups.append(Group(tokens=[t]))
                cur = []
            # otherwise "with" introduces the clause's own numbers ("cracks with a length of ...")
        else:
            cur.append(t)
    if cur:
        atoms.append(cur)
        groups.append(Group())
    return groups[:-1], atoms, groups[-1]


def _reduce(group: Group, norm: Normalized, text: str) -> Group:
    def set_op(op: str) -> None:
        if group.binop is not None and group.binop != op:
            words = group.words(norm)
            raise AmbiguousQueryError(words, ["AND", "OR"], "Use one of 'and' / 'or' between two clauses.", text)
        group.binop = op
        group.explicit = True

    # negations toggle: two in one group cancel ("not crack-free", 不是没有, "not without")
    for t in group.tokens:
        if t.kind == AND:
            set_op("and")
        elif t.kind == AND_NOT:
            set_op("and")
            group.neg = not group.neg
        elif t.kind == AND_CLAUSE:
            set_op("and")
            group.clause = True
        elif t.kind == OR:
            set_op("or")
        elif t.kind == NOT:
            group.neg = not group.neg
        elif t.kind == BUT_NOT:
            set_op("and")
            group.clause = True
            group.neg = not group.neg
        elif t.kind == NOR:
            set_op("and")
            group.clause = True
            group.neg = not group.neg
        elif t.kind == POSITIVE:
            group.positive = True
        elif t.kind == SEP:
            group.sep = True
    return group


# ---- helpers on atoms ----------------------------------------------------------------------------------------------


def _bound_measure(b: Bound, cls: str | None, line: LineConfig) -> str | None:
    kind = b.unit.get("kind") if b.unit is not None else ("fraction" if b.measure == "confidence" else None)
    m = b.measure
    if m == "size":
        m = {"length": "length", "area": "area"}.get(kind or "")
    if m is None:
        m = {"area": "area", "fraction": "confidence"}.get(kind or "") or natural_measure(cls, line)
    return m


def _applies(q: Bound, cls: str | None, own: str | None, line: LineConfig) -> bool:
    """Could a bound written for `own` also bound `cls`? Only if it names the same quantity for both ("超0.3mm的偏移和
    焊渣": an offset for 偏移 would be a length for 焊渣, so it cannot be meant for both)."""
    if q.is_count:
        return True
    m = _bound_measure(q, cls, line)
    return m is not None and m == _bound_measure(q, own, line) and m in allowed_measures(cls, line)


def _is_confidence_only(atom: Atom) -> bool:
    return (
        not atom.class_word
        and not atom.parts
        and atom.count is None
        and bool(atom.bounds)
        and all(
            (b.measure == "confidence" or (b.unit is not None and b.unit.get("kind") == "fraction"))
            and b.op in (">", ">=")
            for b in atom.bounds
        )
    )


def _confidence_value(b: Bound, line: LineConfig) -> float:
    if b.unit is not None:
        return convert(b.values[0], b.unit, line)
    return unitless_confidence(b.values[0], b.text)[0]


def _spread_error(
    bound_atom: Atom, other: Atom, joiner: str, quantities: list[Bound], zh: bool, text: str
) -> AmbiguousQueryError:
    q = " ".join(b.text for b in quantities)
    a, b = other.defect_class or "any defect", bound_atom.defect_class or "any defect"
    op = joiner.upper()
    hint = (
        "把数量条件写在它所限定的缺陷后面，或对每个缺陷分别写出，例如「裂纹长度超过1mm或烧伤长度超过1mm」。"
        if zh
        else "Repeat the bound for each defect it applies to ('cracks longer than 1 mm or burns longer than 1 mm'), "
        "or mark the defect it belongs to with an article ('cracks or a burn longer than 1 mm')."
    )
    phrase = (
        f"{other.text} … {bound_atom.text}" if other.start < bound_atom.start else f"{bound_atom.text} … {other.text}"
    )
    return AmbiguousQueryError(
        phrase,
        [f"'{q}' bounds only {b}: {a} {op} ({b} {q})", f"'{q}' bounds both: ({a} {q}) {op} ({b} {q})"],
        hint,
        text,
    )


# ---- main ----------------------------------------------------------------------------------------------------------


def parse_clauses(tokens: list[Token], norm: Normalized, line: LineConfig, text: str) -> Parsed:
    zh = any("\u4e00" <= c <= "\u9fff" for c in norm.text)
    toks = [t for t in tokens if t.kind not in _DROP]
    # "any of: crack, burn, spatter" / "all of ...": how a list without and/or combines
    markers = {t.kind for t in toks if t.kind in (LIST_ANY, LIST_ALL)}
    if len(markers) > 1:
        raise AmbiguousQueryError(
            text, ["any of them (OR)", "all of them (AND)"], "Say either 'any of' or 'all of'.", text
        )
    list_op = {LIST_ANY: "or", LIST_ALL: "and"}[markers.pop()] if markers else None
    toks = [t for t in toks if t.kind not in (LIST_ANY, LIST_ALL)]
    toks = _resolve_correlatives(toks)
    toks = _rewrite_exceptions(toks, norm, line, text)
    toks = _invert_negated_comparators(toks)
    toks = _collapse_ranges(toks, norm, text)
    groups, raw_atoms, trailing = _split(toks, text)
    if not raw_atoms:
        raise EmptyQueryError(
            "the instruction names no defect: say what to look for, e.g. 'find cells with weld spatter' / "
            "'找出有焊渣飞溅的电芯'",
            text,
        )
    if any(t.kind not in (SEP, POSITIVE) and not t.get("closing") for t in trailing.tokens):
        raise UnsupportedQueryError(f"the instruction ends with '{trailing.words(norm)}': say what follows it", text)
    groups = [_reduce(g, norm, text) for g in groups]
    atoms = [parse_atom(a, norm, text, line) for a in raw_atoms]

    pairs: list[list[Any]] = []
    for k, (g, a) in enumerate(zip(groups, atoms)):
        if a.empty:
            if k > 0 and g.neg:
                raise UnsupportedQueryError(f"'{g.words(norm)} {a.text}': a negated scope is not supported", text)
            continue
        pairs.append([g, a])
    if not pairs:
        raise EmptyQueryError(
            "the instruction names no defect, only which images: say what to look for, e.g. "
            "'cracks in today's images' / '今天的电芯中有裂纹的'",
            text,
        )
    pairs = _attach_parts_to_negated(pairs, norm, text)
    pairs[0][0].binop = None  # "either", "both" before the first clause join nothing

    # rule 1: a separator takes the next explicit and/or
    for k in range(1, len(pairs)):
        g = pairs[k][0]
        if g.binop is None:
            if g.sep and not g.neg and not g.positive:
                adopted = next((p[0].binop for p in pairs[k + 1 :] if p[0].binop is not None), None) or list_op
                g.binop = adopted or "and"
                g.defaulted = adopted is None
            else:
                g.binop = "and"
                g.clause = g.clause or g.positive

    # rule 3: clauses without a defect word
    min_confidence: float | None = None
    kept: list[list] = []
    for k, (g, a) in enumerate(pairs):
        if a.class_word:
            kept.append([g, a])
            continue
        if a.parts and not a.bounds and a.count is None:
            part = a.parts[0]
            missing = absent_class(a.parts, line)
            nxt = pairs[k + 1] if k + 1 < len(pairs) else None
            if g.neg and missing and (nxt is None or not _absorbable(nxt[0], nxt[1])):
                # "cells without a weld" / 没有焊点: the weld is missing
                g.neg = False
                a.defect_class, a.class_word = missing, True
                kept.append([g, a])
                continue
            uses = [d.name for d in line.derived if part in d.parts]
            raise UnsupportedQueryError(
                f"'{a.text}': {part} is a part, not a defect; ask for a defect"
                + (f" of it ({', '.join(uses)})" if uses else "")
                + f" or one of: {', '.join(n for n in line.defect_names if n not in uses)}",
                text,
            )
        if _is_confidence_only(a) and len(pairs) > 1 and not g.neg and (k == 0 or g.binop == "and"):
            value = max(_confidence_value(b, line) for b in a.bounds)
            if not 0.0 <= value <= 1.0:
                raise UnsupportedQueryError(f"'{a.text}': a confidence is between 0 and 1 (0% to 100%)", text)
            min_confidence = value if min_confidence is None else max(min_confidence, value)
            if k == 0 and k + 1 < len(pairs):
                pairs[k + 1][0].binop = None
            continue
        prev = kept[-1][1] if kept else None
        if (
            prev is not None
            and (prev.class_word or prev.inherited_from)
            and not any(b.measure == "offset" for b in a.bounds)
        ):
            if g.binop == "and" and not g.neg:
                if a.count is not None and prev.count is not None:
                    raise UnsupportedQueryError(f"'{prev.text} … {a.text}' gives two counts; give one", text)
                prev.bounds.extend(a.bounds)
                prev.count = prev.count or a.count
                prev.end = a.end
                continue
            a.defect_class = prev.defect_class
            a.inherited_from = prev.text
        kept.append([g, a])
    if not kept:
        raise EmptyQueryError("the instruction bounds the confidence but names no defect", text)
    kept[0][0].binop = None

    # a comma before an and/or that differs from the list before it closes a clause: "A or B, and C" = (A or B) and C
    noun_op: str | None = None
    for g, _ in kept[1:]:
        if g.clause:
            noun_op = None
            continue
        if g.sep and g.explicit and noun_op is not None and g.binop != noun_op:
            g.clause = True
            noun_op = None
            continue
        noun_op = g.binop

    # a list of defects with no and/or at all ("开路、短路、鼠咬", "spatter, cracks"): all of them, or any?
    for k in range(1, len(kept)):
        g, cur = kept[k]
        prev = kept[k - 1][1]
        if g.defaulted and cur.class_word and prev.class_word:
            raise AmbiguousQueryError(
                norm.span(prev.start, cur.end),
                [
                    f"all of them: {prev.defect_class or 'any defect'} AND {cur.defect_class or 'any defect'}",
                    f"any of them: {prev.defect_class or 'any defect'} OR {cur.defect_class or 'any defect'}",
                ],
                "用「和/且」表示都要有，用「或」表示任一即可。"
                if zh
                else "Write 'and' if every one must be present, 'or' if any one is enough.",
                text,
            )

    # "cells with cracks and cells with burns" / 有裂纹的电芯和有烧伤的电芯: two sets of items (OR), or items with both?
    for k in range(1, len(kept)):
        g, cur = kept[k]
        prev = kept[k - 1][1]
        if g.binop == "and" and not g.neg and cur.has_subject and prev.has_subject:
            prev_name, cur_name = prev.defect_class or "any defect", cur.defect_class or "any defect"
            raise AmbiguousQueryError(
                norm.span(prev.raw_start, cur.raw_end),
                [
                    f"items that have both: {prev_name} AND {cur_name}",
                    f"both groups of items: {prev_name} OR {cur_name}",
                ],
                "说「有裂纹或有烧伤的电芯」(任一) 或「同时有裂纹和烧伤的电芯」(都有)。"
                if zh
                else "Say 'cells with cracks or burns' (either) or 'cells with both cracks and burns' (both).",
                text,
            )

    # rule 5: a number at either end of a bare list
    for k in range(1, len(kept)):
        g, cur = kept[k]
        prev = kept[k - 1][1]
        noun_level = g.binop in ("and", "or") and not g.clause and not g.positive and not g.neg
        if not noun_level:
            continue
        post = cur.quantities("postfix")
        if (
            post
            and cur.class_word
            and not cur.det_before_class
            and not cur.quantities("prefix")
            and prev.bare
            and all(_applies(q, prev.defect_class, cur.defect_class, line) for q in post)
        ):
            raise _spread_error(cur, prev, g.binop, post, zh, text)
        pre = prev.quantities("prefix")
        if (
            pre
            and prev.class_word
            and not prev.quantities("postfix")
            and cur.bare
            and not cur.det_before_class
            and all(_applies(q, cur.defect_class, prev.defect_class, line) for q in pre)
        ):
            raise _spread_error(prev, cur, g.binop, pre, zh, text)

    conditions = []
    for idx, (_, a) in enumerate(kept):
        conditions.append(finalize(a, f"c{idx + 1}", line, text))
    logic = _build_logic([g for g, _ in kept], [a for _, a in kept], conditions)
    return Parsed(conditions=conditions, logic=logic, min_confidence=min_confidence)


def _attach_parts_to_negated(pairs: list[list[Any]], norm: Normalized, text: str) -> list[list[Any]]:
    """焊点没有偏移, "tabs w/o burns": a part alone before a negated defect is where that defect is not."""
    out: list[list[Any]] = []
    k = 0
    while k < len(pairs):
        g, a = pairs[k]
        nxt = pairs[k + 1] if k + 1 < len(pairs) else None
        if (
            nxt is not None
            and a.parts
            and not a.class_word
            and not a.bounds
            and a.count is None
            and not g.neg
            and nxt[0].neg
            and nxt[1].class_word
            and not nxt[1].parts
        ):
            nxt[1].parts = list(a.parts)
            pairs[k + 1] = [_reduce(Group(tokens=g.tokens + nxt[0].tokens), norm, text), nxt[1]]
            k += 1
            continue
        out.append([g, a])
        k += 1
    return out


def _absorbable(g: Group, a: Atom) -> bool:
    return (
        not g.neg
        and not g.positive
        and not g.clause
        and g.binop in ("and", "or")
        and not a.det_before_class
        and not a.quantities("prefix")
    )


def _build_logic(groups: list[Group], atoms: list[Atom], conditions: list[Condition]) -> Logic:
    units: list[tuple[str | None, Logic]] = []
    k = 0
    while k < len(atoms):
        g = groups[k]
        if g.neg:
            members = [k]
            j = k + 1
            while j < len(atoms) and _absorbable(groups[j], atoms[j]):
                members.append(j)
                j += 1
            leaves = [Logic(op="cond", cond=conditions[m].id) for m in members]
            inner = leaves[0] if len(leaves) == 1 else Logic(op="or", args=leaves)
            node = Logic(op="not", args=[inner])
        else:
            node = Logic(op="cond", cond=conditions[k].id)
            j = k + 1
        units.append((g.binop if k > 0 else None, node))
        k = j
    # clause words (but, 且, as well as) split first and bind loosest; inside a clause AND binds tighter than OR
    segments: list[tuple[str | None, list[tuple[str | None, Logic]]]] = [(None, [])]
    for (binop, node), k in zip(units, _unit_starts(groups, atoms)):
        if segments[-1][1] and groups[k].clause:
            segments.append((binop, []))
            binop = None
        segments[-1][1].append((binop, node))
    result = _or_of_ands(segments[0][1])
    for op, seg in segments[1:]:
        result = _flat(op or "and", [result, _or_of_ands(seg)])
    return result


def _unit_starts(groups: list[Group], atoms: list[Atom]) -> list[int]:
    """Index of the first atom of each logic unit (a negation absorbs the bare list after it)."""
    starts = []
    k = 0
    while k < len(atoms):
        starts.append(k)
        j = k + 1
        if groups[k].neg:
            while j < len(atoms) and _absorbable(groups[j], atoms[j]):
                j += 1
        k = j
    return starts


def _flat(op: str, args: list[Logic]) -> Logic:
    flat: list[Logic] = []
    for a in args:
        flat.extend(a.args if a.op == op else [a])
    return Logic(op=op, args=flat)


def _or_of_ands(units: list[tuple[str | None, Logic]]) -> Logic:
    disjuncts: list[list[Logic]] = [[]]
    for binop, node in units:
        if binop == "or" and disjuncts[-1]:
            disjuncts.append([])
        disjuncts[-1].append(node)
    terms = [d[0] if len(d) == 1 else _flat("and", d) for d in disjuncts]
    return terms[0] if len(terms) == 1 else _flat("or", terms)
