"""One clause ("atom") of an instruction: the tokens between two logic words, e.g. `a short longer than 2 mm` or
`超0.3mm的偏移`. An atom names at most one defect class (or "any defect"), optional parts (region), and
quantities: a count ("at least two", 三处以上) and bounds (measure comparator number unit, in either order)."""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.parser.errors import AmbiguousQueryError, QueryParseError, UnsupportedQueryError
from agent.parser.lexicon import ABSENT, ANY, CLASS, CLASSIFIER, CMP, DET, MEASURE, QUANT, SUBJECT, UNIT, Entry
from agent.parser.normalize import Normalized
from agent.parser.tokenizer import NUM, RANGE, SCOPE, Token
from agent.parser.units import MEASURE_UNIT_KIND, convert, unitless_confidence
from agent.query import Comparator, Condition, CountConstraint, NumericConstraint
from defect_agent.config import LineConfig

_OP_WORDS = {">": "more than", ">=": "at least", "<": "fewer than", "<=": "at most", "==": "exactly"}


@dataclass
class Bound:
    """A number with its comparator, unit and measure, as written."""

    op: str
    values: tuple[float, ...]  # one value; two for a range (>= low, <= high)
    unit: Entry | None
    measure: str | None  # written measure (offset, length, width, area, size, confidence, count) or None
    is_count: bool
    position: str  # prefix | postfix (relative to the class word) | none
    text: str
    units_text: tuple[str, ...] = ()


@dataclass
class Atom:
    """One clause of the instruction as read: its defect class (or any defect), parts, bounds and count, with
    its text span."""

    start: int
    end: int
    text: str
    defect_class: str | None = None
    class_word: bool = False  # a defect class or "defect(s)" was written
    parts: list[str] = field(default_factory=list)
    bounds: list[Bound] = field(default_factory=list)
    count: Bound | None = None
    det_before_class: bool = False  # "a short ...": a determiner opens its own noun phrase
    raw_start: int = 0  # span of every token of the clause, subject words included
    raw_end: int = 0
    empty: bool = False  # nothing but scope / return words
    has_subject: bool = False  # names the inspected item itself (cells / 电芯)
    inherited_from: str | None = None

    @property
    def bare(self) -> bool:
        """Just a defect word: no number of its own."""
        return self.class_word and not self.bounds and self.count is None

    def quantities(self, position: str) -> list[Bound]:
        qs = [*self.bounds, *([self.count] if self.count else [])]
        return [q for q in qs if q.position == position]


@dataclass
class _Group:
    start: int
    end: int  # exclusive index in content
    prefix_cmps: list[Token]
    postfix_cmps: list[Token]
    num: Token | None
    unit: Token | None
    classifier: bool
    quant: Token | None = None
    range_tok: Token | None = None
    measure: str | None = None


def _fused_measure(cmps: list[Token]) -> str | None:
    for c in cmps:
        if c.get("measure"):
            return c.get("measure")
    return None


def absent_class(parts: list[str], line: LineConfig | None) -> str | None:
    """The derived `absent` defect of one of these parts (weld -> missing_weld)."""
    for d in line.derived if line is not None else []:
        if d.rule == "absent" and d.parts[0] in parts:
            return d.name
    return None


def parse_atom(tokens: list[Token], norm: Normalized, text: str, line: LineConfig | None = None) -> Atom:
    # 一个电芯上, 一片板子上: a number counting the inspected item itself, not defects
    item_count = {
        k + d
        for k in range(len(tokens) - 2)
        if tokens[k].kind == NUM and tokens[k + 1].kind == CLASSIFIER and tokens[k + 2].kind == SUBJECT
        for d in (0, 1)
    }
    content = [t for k, t in enumerate(tokens) if k not in item_count and t.kind not in (SCOPE, "de", SUBJECT)]
    if not tokens:
        raise QueryParseError("internal: empty atom", text)
    atom = Atom(
        start=tokens[0].start,
        end=tokens[-1].end,
        text=norm.span(tokens[0].start, tokens[-1].end),
        raw_start=tokens[0].start,
        raw_end=tokens[-1].end,
    )
    if content:
        atom.start, atom.end = content[0].start, content[-1].end
        atom.text = norm.span(atom.start, atom.end)
    atom.has_subject = any(t.kind == SUBJECT for t in tokens)
    if not [t for t in content if t.kind != DET]:
        atom.empty = True
        return atom

    _offset_word_as_class(content, line)
    defects = [t for t in content if t.kind == CLASS and t.get("role") == "defect"]
    names = list(dict.fromkeys(t.get("name") for t in defects))
    if len(names) > 1:
        a, b = defects[0], next(t for t in defects if t.get("name") != names[0])
        raise AmbiguousQueryError(
            norm.span(a.start, b.end),
            [f"{names[0]} AND {names[1]}", f"{names[0]} OR {names[1]}"],
            "Join two defects with 'and' / 'or' (和 / 或).",
            text,
        )
    absent = [t for t in content if t.kind == ABSENT]
    if absent and not defects:
        # "the weld is missing" / 焊点缺失: the line's `absent` defect of that part
        parts = [t for t in content if t.kind == CLASS and t.get("role") == "part"]
        target = absent_class([p.get("name") for p in parts], line)
        if target is None:
            word = norm.span(absent[0].start, absent[0].end)
            raise UnsupportedQueryError(
                f"'{atom.text}': '{word}' needs a part whose absence the line detects"
                + (
                    f" ({', '.join(f'{d.parts[0]} -> {d.name}' for d in line.derived if d.rule == 'absent')})"
                    if line is not None
                    else ""
                ),
                text,
            )
        defects = [absent[0]]
        absent[0].extra.update(name=target, role="defect")
        names = [target]
    anys = [t for t in content if t.kind == ANY]
    class_tok = defects[0] if defects else (anys[0] if anys else None)
    atom.defect_class = names[0] if names else None
    atom.class_word = class_tok is not None
    atom.parts = list(dict.fromkeys(t.get("name") for t in content if t.kind == CLASS and t.get("role") == "part"))
    class_idx = content.index(class_tok) if class_tok is not None else None
    if class_idx is not None:
        atom.det_before_class = any(t.kind == DET for t in content[:class_idx])

    groups = _groups(content, norm, text)
    _assign_measures(groups, content, norm, text)
    for g in groups:
        bound = _interpret(g, content, class_idx, atom, norm, text, line)
        if bound.is_count:
            if atom.count is not None:
                raise UnsupportedQueryError(
                    f"'{atom.text}' gives two counts ('{atom.count.text}' and '{bound.text}'); give one", text
                )
            atom.count = bound
        else:
            atom.bounds.append(bound)
    return atom


def _offset_word_as_class(content: list[Token], line: LineConfig | None) -> None:
    """ "the weld is off center", 焊点偏心: an offset word with no number and no defect word names the line's offset
    defect (as "offset" itself does)."""
    if line is None or any(t.kind in (NUM, RANGE, QUANT, ANY) for t in content):
        return
    if any(t.kind == CLASS and t.get("role") == "defect" for t in content):
        return
    words = [t for t in content if t.kind == MEASURE and t.get("measure") == "offset"]
    cls = offset_class(line) if words else None
    if cls is not None:
        words[0].kind = CLASS
        words[0].extra.update(name=cls, role="defect")


def _groups(content: list[Token], norm: Normalized, text: str) -> list[_Group]:
    """Cut the clause's quantities out: [comparator] number [unit | counting word] [postfix comparator]."""
    groups: list[_Group] = []
    used: set[int] = set()
    i = 0
    n = len(content)
    while i < n:
        t = content[i]
        if t.kind == RANGE:
            groups.append(_Group(i, i + 1, [], [], None, None, False, range_tok=t))
            used.add(i)
            i += 1
            continue
        if t.kind == QUANT:
            groups.append(_Group(i, i + 1, [], [], None, None, True, quant=t))
            used.add(i)
            i += 1
            continue
        starts = (
            t.kind == NUM or (t.kind == CMP and t.get("position") == "prefix") or (t.kind == UNIT and t.get("prefix"))
        )
        if not starts:
            i += 1
            continue
        start = i
        prefix: list[Token] = []
        while i < n and content[i].kind == CMP and content[i].get("position") == "prefix":
            prefix.append(content[i])
            i += 1
        unit = None
        if i < n and content[i].kind == UNIT and content[i].get("prefix"):
            unit = content[i]
            i += 1
        if i >= n or content[i].kind != NUM:
            # "more than" followed by a range ("over between..."): not supported; anything else needs a number
            words = norm.span(content[start].start, content[i - 1].end)
            raise UnsupportedQueryError(f"'{words}' needs a number after it (e.g. 'more than 0.3 mm')", text)
        num = content[i]
        i += 1
        classifier = False
        postfix: list[Token] = []
        # "2 mm or more", "2 or more places", "3处以上": units, counting words and postfix comparators in any order
        while i < n:
            t = content[i]
            if t.kind in (UNIT, CLASSIFIER) and not t.get("prefix"):
                if t.kind == CLASSIFIER:
                    classifier = True
                elif unit is None:
                    unit = t
            elif t.kind == CMP and t.get("position") == "postfix":
                postfix.append(t)
            else:
                break
            i += 1
        groups.append(_Group(start, i, prefix, postfix, num, unit, classifier))
        used.update(range(start, i))
    # a postfix comparator separated from its number by the defect word: "two cracks or more"
    for k, t in enumerate(content):
        if k in used or t.kind != CMP:
            continue
        before = [g for g in groups if g.end <= k]
        if t.get("position") == "postfix" and before and not before[-1].prefix_cmps and not before[-1].postfix_cmps:
            before[-1].postfix_cmps.append(t)
            used.add(k)
            continue
        raise UnsupportedQueryError(f"'{norm.span(t.start, t.end)}' has no number to compare", text)
    return groups


def _assign_measures(groups: list[_Group], content: list[Token], norm: Normalized, text: str) -> None:
    free = {k for k, t in enumerate(content) if t.kind == MEASURE}
    for g in groups:
        fused = _fused_measure(g.prefix_cmps + g.postfix_cmps)
        if fused:
            g.measure = fused
            continue
        for k in (g.start - 1, g.end):  # "length more than 2 mm", "2 mm long"
            if k in free:
                g.measure = content[k].get("measure")
                free.discard(k)
                break
    missing = [g for g in groups if g.measure is None and g.quant is None]
    if len(free) == 1 and len(missing) == 1:  # "size of the spatter above 1 mm²"
        k = free.pop()
        missing[0].measure = content[k].get("measure")
    if free:
        t = content[min(free)]
        word = norm.span(t.start, t.end)
        raise UnsupportedQueryError(
            f"'{word}' has no number: say how much, e.g. '{word} more than 0.5 mm' / '{word}超过0.5mm'", text
        )


def _op_of(g: _Group, norm: Normalized, text: str) -> str | None:
    cmps = g.prefix_cmps + g.postfix_cmps
    ops = [c.get("op") for c in cmps]
    pre, post = {c.get("op") for c in g.prefix_cmps}, {c.get("op") for c in g.postfix_cmps}
    if len(pre) == 1 and post and any(pre | post <= side for side in ({">", ">="}, {"<", "<="})):
        # 超过0.3毫米以上, 不超过3处以下: a pleonasm; the word before the number is the precise one
        return pre.pop()
    if len(set(ops)) > 1:
        first, last = min(c.start for c in cmps), max(c.end for c in cmps)
        raise UnsupportedQueryError(f"'{norm.span(first, last)}' has two different comparators; use one", text)
    return ops[0] if ops else None


def _interpret(
    g: _Group,
    content: list[Token],
    class_idx: int | None,
    atom: Atom,
    norm: Normalized,
    text: str,
    line: LineConfig | None,
) -> Bound:
    """What one quantity means: a count or a bound (measure still open when no word names it)."""
    span = norm.span(content[g.start].start, content[g.end - 1].end)
    position = "none" if class_idx is None else ("prefix" if g.start < class_idx else "postfix")
    if g.quant is not None:
        return Bound(g.quant.get("op"), (float(g.quant.get("value")),), None, "count", True, position, span)
    if g.range_tok is not None:
        r = g.range_tok
        lo, hi = r.extra["low"], r.extra["high"]
        if r.extra["classifier"] or g.measure == "count":
            raise UnsupportedQueryError(
                f"'{span}': a count range is not supported; give one bound (e.g. 'at least 2 cracks')", text
            )
        unit = r.extra["unit"]
        if unit is None and g.measure != "confidence":
            raise _missing_unit(span, g.measure, atom, lo.value, text)
        return Bound(
            "range",
            (lo.value, hi.value),
            unit,
            g.measure,
            False,
            position,
            span,
            tuple(u for u in (r.extra["unit_text"],) if u),
        )
    num = g.num
    assert num is not None
    assert num.value is not None  # the tokenizer gives every NUM token its value
    op = _op_of(g, norm, text)
    if g.classifier or g.measure == "count":
        return Bound(op or ">=", (num.value,), None, "count", True, position, span)
    if g.unit is not None:
        if op is None:
            raise AmbiguousQueryError(
                span,
                [f"at least {span}", f"exactly {span}", f"more than {span}"],
                "Say which: e.g. 'longer than 2 mm', 'at least 2 mm', '2mm以上'.",
                text,
            )
        return Bound(
            op, (num.value,), g.unit.entry, g.measure, False, position, span, (norm.span(g.unit.start, g.unit.end),)
        )
    if g.measure == "confidence":
        return Bound(op or ">=", (num.value,), None, "confidence", False, position, span)
    if g.measure is not None:
        raise _missing_unit(span, g.measure, atom, num.value, text)
    if num.is_word or (position == "prefix"):
        return Bound(op or ">=", (num.value,), None, "count", True, position, span)
    # "offset more than 3", "cracks over 2": a size without unit, or a count?
    cls = atom.defect_class or "any defect"
    shown_op = op or ">="
    measure = (natural_measure(atom.defect_class, line) if line is not None else None) or "size"
    raise AmbiguousQueryError(
        f"{atom.text}",
        [
            f"{cls} with {measure} {shown_op} {num.value:g} mm",
            f"{_OP_WORDS[shown_op]} {num.value:g} {cls} findings (count {shown_op} {num.value:g})",
        ],
        "Add a unit for a size (mm, µm, px: 'more than 3 mm') or a counting word for a count "
        "('more than 3 cracks', 超过3处).",
        text,
    )


def _missing_unit(span: str, measure: str | None, atom: Atom, value: float, text: str) -> AmbiguousQueryError:
    m = measure or "size"
    unit = "mm²" if m == "area" else "mm"
    pix = "px²" if m == "area" else "px"
    return AmbiguousQueryError(
        span, [f"{m} {value:g} {unit}", f"{m} {value:g} {pix} (pixels)"], f"Give the unit: e.g. '{span} {unit}'.", text
    )


# ---- atom -> Condition ---------------------------------------------------------------------------------------------


def natural_measure(cls: str | None, line: LineConfig) -> str | None:
    """What a bare length-unit number bounds for a class: the offset for an offset-derived defect, None for an
    'absent' one (it has no size), the length otherwise."""
    for d in line.derived:
        if d.name == cls:
            return "offset" if d.rule == "offset" else None
    return "length"


def allowed_measures(cls: str | None, line: LineConfig) -> set[str]:
    for d in line.derived:
        if d.name == cls:
            return {"offset", "confidence"} if d.rule == "offset" else {"confidence"}
    return {"length", "width", "area", "confidence"}


def offset_class(line: LineConfig) -> str | None:
    names = [d.name for d in line.derived if d.rule == "offset"]
    return names[0] if len(names) == 1 else None


def finalize(atom: Atom, cid: str, line: LineConfig, text: str) -> Condition:
    """Resolve measures and units against the atom's class and the line; build the Condition."""
    cls = atom.defect_class
    if any(b.measure == "offset" for b in atom.bounds) and cls is None:
        cls = offset_class(line)
        if cls is None:
            raise UnsupportedQueryError(
                f"'{atom.text}': line {line.name!r} measures no offset (its defects: {', '.join(line.defect_names)})",
                text,
            )
    constraints: list[NumericConstraint] = []
    for b in atom.bounds:
        kind = b.unit.get("kind") if b.unit is not None else ("fraction" if b.measure == "confidence" else None)
        measure = b.measure
        if measure == "size":
            measure = {"length": "length", "area": "area"}.get(kind or "")
        if measure is None:
            measure = {"area": "area", "fraction": "confidence"}.get(kind or "") or natural_measure(cls, line)
        if measure is None:
            raise UnsupportedQueryError(
                f"'{b.text}': {cls} has no size to compare (it is a missing part); ask for it without a number", text
            )
        if MEASURE_UNIT_KIND[measure] != kind:
            want = {"length": "mm, µm or px", "area": "mm² or px²", "fraction": "a fraction 0..1 or %"}[
                MEASURE_UNIT_KIND[measure]
            ]
            raise UnsupportedQueryError(
                f"'{b.text}': {measure} is given in {want}, not {b.units_text[0] if b.units_text else 'this unit'}",
                text,
            )
        if measure not in allowed_measures(cls, line):
            has = ", ".join(sorted(allowed_measures(cls, line)))
            raise UnsupportedQueryError(f"'{atom.text}': {cls or 'any defect'} has no {measure} (it has: {has})", text)
        unit_name = b.unit.get("unit") if b.unit is not None else ""
        pairs = [(b.op, b.values[0])] if b.op != "range" else [(">=", b.values[0]), ("<=", b.values[1])]
        for op, raw in pairs:
            if b.unit is not None:
                value = convert(raw, b.unit, line)
            else:
                value, unit_name = unitless_confidence(raw, b.text)
            if measure == "confidence" and not 0.0 <= value <= 1.0:
                raise UnsupportedQueryError(f"'{b.text}': a confidence is between 0 and 1 (0% to 100%)", text)
            constraints.append(
                NumericConstraint(
                    measure=measure, op=Comparator(op), value=value, raw_value=raw, unit=unit_name, text=b.text
                )
            )
    count = CountConstraint()
    if atom.count is not None:
        c = atom.count
        value = c.values[0]
        if not float(value).is_integer() or value < 0:
            raise UnsupportedQueryError(f"'{c.text}': a count is a whole number", text)
        count = CountConstraint(op=Comparator(c.op), value=int(value))
    region = atom.parts[0] if atom.parts else None
    return Condition(id=cid, defect_class=cls, constraints=constraints, count=count, region=region, text=atom.text)
