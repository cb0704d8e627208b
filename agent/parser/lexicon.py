"""The parser's words: the language words of `configs/lexicon.yaml` plus, per product line, the class and subject
words of `configs/lines/<line>.yaml`, compiled into one table `surface form -> Entry` that the tokenizer matches
longest-first."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.parser import segment
from agent.parser.normalize import normalize_term
from defect_agent.config import LineConfig, available_lines, load_line
from defect_agent.errors import ConfigError
from defect_agent.paths import configs_dir

OpName = Literal[">", ">=", "<", "<=", "=="]
MeasureName = Literal["offset", "length", "width", "area", "confidence", "size", "count"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Words(_Strict):
    """English (`en`) and Chinese (`zh`) spellings of one meaning in configs/lexicon.yaml."""

    en: list[str] = Field(default_factory=list)
    zh: list[str] = Field(default_factory=list)

    def all(self) -> list[str]:
        return [*self.en, *self.zh]


class ComparatorSpec(Words):
    """Comparator words (more than, 以上): the operator, whether they stand before or after the number, and the
    measure they may also name (longer than = length)."""

    op: OpName
    position: Literal["prefix", "postfix"] = "prefix"
    measure: MeasureName | None = None


class UnitSpec(Words):
    """Unit words of a number: the canonical unit, its kind, the factor to it, and whether it needs the line's
    mm_per_px (pixels)."""

    unit: str
    kind: Literal["length", "area", "fraction"]
    factor: float = 1.0
    calibration: bool = False  # multiply by the line's mm_per_px (squared for areas)
    prefix: bool = False  # written before the number (百分之九十)


class QuantifierSpec(Words):
    """Words that are a count bound by themselves (multiple, 多处 = at least two)."""

    op: OpName
    value: int


class CountsSpec(_Strict):
    """Number words (English, Chinese digits and multipliers), classifiers counted after a number (3 spots,
    三处) and quantifiers."""

    en: dict[str, int]
    zh_digits: dict[str, int]
    zh_multipliers: dict[str, int]
    zh_decimal_point: str = "点"
    classifiers: Words
    quantifiers: list[QuantifierSpec] = Field(default_factory=list)


class RangesSpec(_Strict):
    """Range words: `between`, the word between the two numbers (to, -, 到) and the closing word (之间)."""

    between: Words
    to: Words
    end: Words


class LogicSpec(_Strict):
    """Logic words: and / or / not at noun and clause level, list markers, negations, positive words and
    separators."""

    and_: Words = Field(alias="and")
    and_clause: Words
    or_: Words = Field(alias="or")
    list_any: Words
    list_all: Words
    not_: Words = Field(alias="not")
    but_not: Words
    nor: Words
    and_not: Words
    not_after: Words
    none_after: Words = Field(default_factory=Words)
    absent: Words
    together: Words
    positive: Words
    separators: list[str]
    except_: Words = Field(default_factory=Words, alias="except")
    except_end: Words = Field(default_factory=Words)
    others: Words = Field(default_factory=Words)


class CorrelativeSpec(_Strict):
    """A pair of words whose first one reads differently alone: 不是A就是B = A or B (`op`), 不是A = not A (`alone`)."""

    first: Words
    then: Words
    op: Literal["and", "or"]
    alone: Literal["not", "none"] = "none"


class ScopeSpec(_Strict):
    """Words that choose the images: today's, yesterday's, a folder, a lot."""

    today: Words
    yesterday: Words
    folder: Words
    lot: Words


class ReturnsSpec(_Strict):
    """Words that ask for more than the verdict: similar past cases, overlay images."""

    similar_cases: Words
    overlays: Words


class Lexicon(_Strict):
    """configs/lexicon.yaml, validated."""

    version: int
    comparators: list[ComparatorSpec]
    ranges: RangesSpec
    units: list[UnitSpec]
    measures: dict[MeasureName, Words]
    counts: CountsSpec
    logic: LogicSpec
    any_defect: Words
    scope: ScopeSpec
    returns: ReturnsSpec
    determiners: Words
    attributive: Words
    punctuation: list[str]
    fillers: Words
    correlatives: list[CorrelativeSpec] = Field(default_factory=list)
    suffixes: Words = Field(default_factory=Words)
    meaning_chars: Words = Field(default_factory=Words)

    @classmethod
    def load(cls, path: str | Path | None = None) -> Lexicon:
        return _load_lexicon(str(path) if path else str(configs_dir() / "lexicon.yaml"))


@cache
def _load_lexicon(path: str) -> Lexicon:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"lexicon not found: {p} (the parser's words; restore configs/lexicon.yaml)")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        return Lexicon.model_validate(data)
    except (yaml.YAMLError, ValidationError) as exc:
        raise ConfigError(f"{p}: {exc}") from exc


# ---- compiled vocabulary -------------------------------------------------------------------------------------------

# Entry kinds
CLASS, SUBJECT, ANY, MEASURE, CMP, UNIT, CLASSIFIER, QUANT, NUMWORD = (
    "class",
    "subject",
    "any",
    "measure",
    "cmp",
    "unit",
    "classifier",
    "quant",
    "numword",
)
AND, AND_CLAUSE, OR, NOT, BUT_NOT, NOR, POSITIVE, SEP = (
    "and",
    "and_clause",
    "or",
    "not",
    "but_not",
    "nor",
    "positive",
    "sep",
)
NOT_AFTER, ABSENT, AND_NOT, NONE_AFTER = "not_after", "absent", "and_not", "none_after"
LIST_ANY, LIST_ALL = "list_any", "list_all"
BETWEEN, RANGE_TO, RANGE_END = "between", "range_to", "range_end"
TODAY, FOLDER, LOT, SIMILAR, OVERLAY = "date", "folder", "lot", "similar", "overlay"
DET, DE, FILLER, PUNCT = "det", "de", "filler", "punct"
EXCEPT, EXCEPT_END, OTHERS, CORR_FIRST, CORR_THEN = "except", "except_end", "others", "corr_first", "corr_then"

# On an identical spelling the line's words win over the language words ("offset" is weld_offset on battery_tab,
# a measure on a line without that class).
_PRIORITY = {CLASS: 0, SUBJECT: 1, ANY: 2}


@dataclass(frozen=True)
class Entry:
    """What one vocabulary spelling means: an entry kind (class, cmp, unit, ...) and its data (class name, op,
    unit, ...)."""

    kind: str
    data: tuple[tuple[str, Any], ...] = ()
    display: str = ""  # the spelling as written in the config, for suggestions and messages

    def get(self, key: str, default: Any = None) -> Any:
        return dict(self.data).get(key, default)


def _entry(entry_kind: str, display: str, **data: Any) -> Entry:
    return Entry(entry_kind, tuple(sorted(data.items())), display)


def _plural(word: str) -> list[str]:
    """Regular English plural of the last word of a term."""
    head, _, last = word.rpartition(" ")
    if not last.isascii() or not last.isalpha() or len(last) < 3:
        return []
    if last.endswith(("s", "sh", "ch", "x", "z")):
        forms = [last + "es"]
    elif last.endswith("y") and last[-2] not in "aeiou":
        forms = [last[:-1] + "ies"]
    else:
        forms = [last + "s"]
    return [f"{head} {f}" if head else f for f in forms]


@dataclass
class Vocabulary:
    """All spellings the tokenizer knows for one line: normalised surface -> Entry."""

    line: LineConfig
    lexicon: Lexicon
    table: dict[str, Entry] = field(default_factory=dict)
    max_len: int = 1
    # tables derived from `table` once it is built (suggestion terms, class stems): computed on first use
    memo: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def add(self, surface: str, entry: Entry, generated: bool = False) -> None:
        key = normalize_term(surface)
        if not key:
            return
        self.memo.clear()
        old = self.table.get(key)
        if old is not None and old != entry:
            p_old, p_new = _PRIORITY.get(old.kind, 9), _PRIORITY.get(entry.kind, 9)
            if p_new < p_old:
                self.table[key] = entry
            elif p_new == p_old and not generated and (old.kind, old.data) != (entry.kind, entry.data):
                if old.kind == entry.kind == CLASS:
                    raise ConfigError(
                        f"line {self.line.name!r}: the word {surface!r} names two classes "
                        f"({old.get('name')} and {entry.get('name')}); keep it in one class's synonyms"
                    )
                raise ConfigError(
                    f"the word {surface!r} is listed twice with different meanings "
                    f"({old.kind} {dict(old.data)} and {entry.kind} {dict(entry.data)})"
                )
            return
        self.table[key] = entry
        self.max_len = max(self.max_len, len(key))

    def lookup(self, surface: str) -> Entry | None:
        return self.table.get(surface)

    def suggestion_terms(self) -> dict[str, str]:
        """normalised -> display spelling of every term worth suggesting (no punctuation, no generated plurals)."""
        if "suggestions" not in self.memo:
            self.memo["suggestions"] = self._suggestion_terms()
        return self.memo["suggestions"]  # shared: callers read it, never change it

    def _suggestion_terms(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for key, entry in self.table.items():
            if entry.kind in (PUNCT, SEP) or not any(c.isalnum() for c in key) or not entry.display:
                continue
            if normalize_term(entry.display) != key:
                continue
            out[key] = entry.display
        return out


def _add_words(vocab: Vocabulary, words: Words | list[str], entry_kind: str, **data: Any) -> None:
    for w in words.all() if isinstance(words, Words) else words:
        vocab.add(w, _entry(entry_kind, w, **data))


def build_vocabulary(line: LineConfig, lexicon: Lexicon, subjects: dict[str, list[str]]) -> Vocabulary:
    vocab = Vocabulary(line=line, lexicon=lexicon)
    lx = lexicon
    # language words first, then the line's words (which win on equal spelling)
    for c in lx.comparators:
        _add_words(vocab, c, CMP, op=c.op, position=c.position, measure=c.measure)
    _add_words(vocab, lx.ranges.between, BETWEEN)
    _add_words(vocab, lx.ranges.to, RANGE_TO)
    _add_words(vocab, lx.ranges.end, RANGE_END)
    for u in lx.units:
        _add_words(
            vocab, u, UNIT, unit=u.unit, kind=u.kind, factor=u.factor, calibration=u.calibration, prefix=u.prefix
        )
    for measure, words in lx.measures.items():
        _add_words(vocab, words, MEASURE, measure=measure)
    for word, value in lx.counts.en.items():
        vocab.add(word, _entry(NUMWORD, word, value=value))
    _add_words(vocab, lx.counts.classifiers, CLASSIFIER)
    for q in lx.counts.quantifiers:
        _add_words(vocab, q, QUANT, op=q.op, value=q.value)
    lg = lx.logic
    _add_words(vocab, lg.and_, AND)
    _add_words(vocab, lg.and_clause, AND_CLAUSE)
    _add_words(vocab, lg.or_, OR)
    _add_words(vocab, lg.list_any, LIST_ANY)
    _add_words(vocab, lg.list_all, LIST_ALL)
    _add_words(vocab, lg.not_, NOT)
    _add_words(vocab, lg.but_not, BUT_NOT)
    _add_words(vocab, lg.nor, NOR)
    _add_words(vocab, lg.and_not, AND_NOT)
    _add_words(vocab, lg.not_after, NOT_AFTER)
    _add_words(vocab, lg.none_after, NONE_AFTER)
    _add_words(vocab, lg.absent, ABSENT)
    _add_words(vocab, lg.together, AND_CLAUSE, closing=True)
    _add_words(vocab, lg.positive, POSITIVE)
    _add_words(vocab, lg.separators, SEP)
    _add_words(vocab, lg.except_, EXCEPT)
    _add_words(vocab, lg.except_end, EXCEPT_END)
    _add_words(vocab, lg.others, OTHERS)
    for pair, corr in enumerate(lx.correlatives):
        _add_words(vocab, corr.first, CORR_FIRST, pair=pair, op=corr.op, alone=corr.alone)
        _add_words(vocab, corr.then, CORR_THEN, pair=pair, op=corr.op)
    _add_words(vocab, lx.any_defect, ANY)
    _add_words(vocab, lx.scope.today, TODAY, days=0)
    _add_words(vocab, lx.scope.yesterday, TODAY, days=-1)
    _add_words(vocab, lx.scope.folder, FOLDER)
    _add_words(vocab, lx.scope.lot, LOT)
    _add_words(vocab, lx.returns.similar_cases, SIMILAR)
    _add_words(vocab, lx.returns.overlays, OVERLAY)
    _add_words(vocab, lx.determiners, DET)
    _add_words(vocab, lx.attributive, DE)
    _add_words(vocab, lx.punctuation, PUNCT)
    _add_words(vocab, lx.fillers, FILLER)
    # every line's subject words, so that "boards" picks the pcb line even while parsing for another
    # a word several lines share ("cell" for two kinds of cell) names this line when it is one of them, else no line
    owners: dict[str, list[str]] = {}
    for line_name, subject_words in subjects.items():
        for w in subject_words:
            owners.setdefault(normalize_term(w), []).append(line_name)
    for line_name, subject_words in subjects.items():
        for w in subject_words:
            named = owners[normalize_term(w)]
            owner = line_name if len(named) == 1 else (line.name if line.name in named else None)
            if owner == line_name or (owner is None and line_name == named[0]):
                vocab.add(w, _entry(SUBJECT, w, line=owner))
    # the line's classes: canonical names, synonyms, regular plurals and spellings without spaces
    specs = [(c.name, c.role, c.synonyms) for c in line.classes] + [
        (d.name, "defect", d.synonyms) for d in line.derived
    ]
    for name, role, syn in specs:
        explicit = [name, name.replace("_", " "), *syn.en, *syn.zh]
        for w in explicit:
            vocab.add(w, _entry(CLASS, w, name=name, role=role))
    for name, role, syn in specs:
        for w in [name.replace("_", " "), *syn.en]:
            variants = _plural(w)
            if " " in w:
                variants += [w.replace(" ", ""), *(v.replace(" ", "") for v in _plural(w))]
            for v in variants:
                vocab.add(v, _entry(CLASS, w, name=name, role=role), generated=True)
    return vocab


@cache
def _subjects() -> tuple[tuple[str, tuple[str, ...]], ...]:
    out = []
    for name in available_lines():
        cfg = load_line(name)
        out.append((name, tuple(cfg.subject.en + cfg.subject.zh)))
    return tuple(out)


def line_names() -> tuple[str, ...]:
    """The configured product lines, read once per process like the vocabularies (clear_caches forgets them)."""
    return tuple(name for name, _ in _subjects())


@cache
def vocabulary_for(line: str, lexicon_path: str | None = None) -> Vocabulary:
    lexicon = Lexicon.load(lexicon_path)
    subjects = {name: list(words) for name, words in _subjects()}
    return build_vocabulary(load_line(line), lexicon, subjects)


def known_terms(line: str) -> list[str]:
    """Defect words of a line (canonical names and zh/en synonyms) and the measure and unit words, sorted: what the
    interactive shell offers for tab completion."""
    cfg = load_line(line)
    lexicon = Lexicon.load()
    words: set[str] = set()
    for c in cfg.classes:
        words.update([c.name, *c.synonyms.en, *c.synonyms.zh])
    for d in cfg.derived:
        words.update([d.name, *d.synonyms.en, *d.synonyms.zh])
    for m in lexicon.measures.values():
        words.update(m.all())
    for u in lexicon.units:
        words.update(w for w in u.all() if any(ch.isalpha() for ch in w))
    return sorted(words, key=lambda w: (w.lower(), w))


def clear_caches() -> None:
    """Forget compiled vocabularies (after editing a config in a long-running process)."""
    _load_lexicon.cache_clear()
    _subjects.cache_clear()
    vocabulary_for.cache_clear()
    segment.reset()
