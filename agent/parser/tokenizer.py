"""Instruction -> tokens. Chinese has no spaces, so every position is matched longest-first against the line's
vocabulary; English words must also end on a word boundary ("or" never matches inside "order"). Numbers are
digits (after NFKC: ０.３ -> 0.3), English number words or Chinese numerals (两, 十二, 零点三, 一千二 = 1200). A
class or subject word with a noun suffix reads as the word (板子 = 板, 焊渣子 = 焊渣), and so does the last
character of one class's word with the suffix (渣子 = 焊渣). Where Chinese is left unread, jieba cuts it into words
(agent.parser.segment): a function word that cannot change the query (赶紧, 哪个) is skipped with a note, any other
word stays UNKNOWN; the parser reports those all at once with suggestions."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from agent.parser import segment
from agent.parser.lexicon import (
    ANY,
    BETWEEN,
    CLASS,
    CLASSIFIER,
    CMP,
    DE,
    DET,
    FILLER,
    FOLDER,
    LOT,
    MEASURE,
    QUANT,
    RANGE_END,
    RANGE_TO,
    SUBJECT,
    UNIT,
    Entry,
    Vocabulary,
    line_names,
    vocabulary_for,
)
from agent.parser.normalize import Normalized, is_ascii_alnum, is_ascii_letter, is_cjk, normalize

NUM, UNKNOWN, SCOPE, RANGE = "num", "unknown", "scope", "range"

_DIGITS = re.compile(r"\d+(?:\.\d+)?|\.\d+")
_ASCII_WORD = re.compile(r"[a-z0-9_]+(?:[./\\\-][a-z0-9_]+)*")
_LETTERS = re.compile(r"[a-z]+")
# ids after "folder" / "lot": a quoted string or a path-like run
_CAPTURE_SKIP = re.compile(r"[\s:#=]*")
_CAPTURE_SKIP_LOT = re.compile(r"[\s:#=.]*")
_FOLDER_ID = re.compile(r'"([^"]+)"|([A-Za-z0-9_.\-~/\\:]*[A-Za-z0-9_])')
_LOT_ID = re.compile(r'"([^"]+)"|([A-Za-z0-9_\-]*[0-9][A-Za-z0-9_\-]*)')
_LOT_NUMBER_WORD = re.compile(r"(?:no\.?|nr\.?|number|id)(?=[\s#:.]|\d)")
# plural / possessive fallbacks only for these kinds ("images", "cracks'")
_PLURAL_KINDS = {CLASS, FILLER, ANY, MEASURE, CLASSIFIER, SUBJECT}
# words that take a noun suffix (板子, 焊渣子, 针眼儿)
_SUFFIX_KINDS = {CLASS, SUBJECT, ANY}
# an unread word next to one of these may bound a number ("大约2mm", "3处左右"): never skipped
_NUMERIC_KINDS = {"num", UNIT, CMP, QUANT, BETWEEN, RANGE_TO, RANGE_END, CLASSIFIER}


def _skip_end(skip: re.Pattern[str], s: str, pos: int) -> int:
    """End of the run of `skip` (one of the `_CAPTURE_SKIP*` patterns) at `pos`."""
    m = skip.match(s, pos)
    assert m is not None  # a `[...]*` pattern matches the empty string at any position
    return m.end()


@dataclass
class Token:
    """One token of the normalised instruction: its kind and span, the vocabulary entry it matched, and the
    number or folder / lot id it carries."""

    kind: str
    start: int  # positions in the normalised text
    end: int
    surface: str  # normalised text
    entry: Entry | None = None
    value: float | None = None  # numbers
    is_word: bool = False  # number written as a word (three, 三): a count, never a length
    capture: str | None = None  # folder / lot id
    extra: dict[str, Any] = field(default_factory=dict)

    def get(self, key: str, default: Any = None) -> Any:
        if key in self.extra:
            return self.extra[key]
        return self.entry.get(key, default) if self.entry is not None else default

    def __repr__(self) -> str:  # compact, for debugging and test messages
        bits = [self.kind, repr(self.surface)]
        if self.value is not None:
            bits.append(f"={self.value:g}")
        if self.capture:
            bits.append(f"id={self.capture}")
        return "<" + " ".join(bits) + ">"


def _class_stems(vocab: Vocabulary) -> dict[str, Entry]:
    """Character -> class entry, for the last character of Chinese class words when it ends words of that class
    only and is no word by itself (渣 -> 焊渣 for 渣子; not 路, which ends 断路 and 短路)."""
    found: dict[str, set[str]] = {}
    entries: dict[str, Entry] = {}
    for key, entry in vocab.table.items():
        if entry.kind == CLASS and entry.get("role") == "defect" and len(key) >= 2 and all(is_cjk(c) for c in key):
            found.setdefault(key[-1], set()).add(entry.get("name"))
            entries.setdefault(key[-1], entry)
    return {c: entries[c] for c, names in found.items() if len(names) == 1 and c not in vocab.table}


def _user_words() -> list[str]:
    """jieba's user dictionary: every Chinese word of the lexicon and of every configured line."""
    words: set[str] = set()
    for line in line_names():
        words.update(k for k in vocabulary_for(line).table if k and all(is_cjk(c) for c in k))
    return sorted(words)


def _weak(tok: Token) -> bool:
    """A known token that may belong to a longer unknown word around it: a classifier, filler, 的 or article, or a
    one-character measure / subject / class word (点 in 重点, 长 in 班长, 裂 in 裂文)."""
    if tok.kind in (CLASSIFIER, FILLER, DE, DET):
        return True
    return tok.kind in (MEASURE, SUBJECT, CLASS) and len(tok.surface) == 1


def _cjk_runs(text: str, inside: set[int]) -> list[tuple[int, int]]:
    """Maximal runs of Chinese characters that hold a position of `inside`."""
    runs = []
    i = 0
    while i < len(text):
        if is_cjk(text[i]):
            j = i
            while j < len(text) and is_cjk(text[j]):
                j += 1
            if any(p in inside for p in range(i, j)):
                runs.append((i, j))
            i = j
        else:
            i += 1
    return runs


def _runs(positions: list[int]) -> list[tuple[int, int]]:
    """Sorted positions -> [start, end) runs of consecutive ones."""
    out: list[tuple[int, int]] = []
    for p in positions:
        if out and out[-1][1] == p:
            out[-1] = (out[-1][0], p + 1)
        else:
            out.append((p, p + 1))
    return out


def _zh_numeral_pattern(digits: dict[str, int], mult: dict[str, int], point: str) -> re.Pattern[str]:
    head = "".join(re.escape(c) for c in [*digits, *mult])
    tail = "".join(re.escape(c) for c in digits)
    return re.compile(f"[{head}]+(?:{re.escape(point)}[{tail}]+)?")


def parse_zh_numeral(text: str, digits: dict[str, int], mult: dict[str, int], point: str) -> float | None:
    """十二 -> 12, 二十五 -> 25, 一百零五 -> 105, 两 -> 2, 零点三 -> 0.3, 一千二百 -> 1200; spoken short forms
    一千二 -> 1200, 三百五 -> 350 (a last digit right after 百 / 千 counts the next unit down); None when
    malformed."""
    whole, _, frac = text.partition(point)
    total, current = 0, 0
    if whole and all(c in digits for c in whole) and len(whole) > 1:
        value = float("".join(str(digits[c]) for c in whole))  # 三五 read digit by digit
    else:
        for c in whole:
            if c in digits:
                current = digits[c]
            elif c in mult:
                total += (current or 1) * mult[c]
                current = 0
            else:
                return None
        if current and len(whole) >= 2 and mult.get(whole[-2], 0) >= 100:
            current *= mult[whole[-2]] // 10
        value = float(total + current)
    if frac:
        value += float("0." + "".join(str(digits[c]) for c in frac))
    return value


class Tokenizer:
    """Cuts an instruction into tokens against one line's vocabulary: longest match first, numbers, unknown
    words."""

    @classmethod
    def of(cls, vocab: Vocabulary) -> Tokenizer:
        """The vocabulary's tokenizer, made once (it keeps no state between instructions)."""
        if "tokenizer" not in vocab.memo:
            vocab.memo["tokenizer"] = cls(vocab)
        tokenizer: Tokenizer = vocab.memo["tokenizer"]
        return tokenizer

    def __init__(self, vocab: Vocabulary) -> None:
        self.vocab = vocab
        c = vocab.lexicon.counts
        self._zh = (c.zh_digits, c.zh_multipliers, c.zh_decimal_point)
        self._zh_re = _zh_numeral_pattern(*self._zh)
        self._suffixes = set(vocab.lexicon.suffixes.zh)
        self._meaning_chars = set("".join(vocab.lexicon.meaning_chars.zh))
        if "stems" not in vocab.memo:
            vocab.memo["stems"] = _class_stems(vocab)
        self._stems: dict[str, Entry] = vocab.memo["stems"]

    # -- matching -------------------------------------------------------------------------------------------------
    def _match(self, text: str, i: int) -> tuple[int, Entry] | None:
        n = len(text)
        left_ok = i == 0 or not is_ascii_letter(text[i - 1])
        for length in range(min(self.vocab.max_len, n - i), 0, -1):
            surface = text[i : i + length]
            entry = self.vocab.table.get(surface)
            if entry is None:
                continue
            if is_ascii_alnum(surface[0]) and not left_ok:
                continue
            j = i + length
            if is_ascii_alnum(surface[-1]) and j < n and is_ascii_alnum(text[j]):
                continue
            if entry.kind == CMP and entry.get("position") == "postfix" and text.startswith(" than", j):
                continue  # "or wider than 0.2 mm" is "or" + "wider than", not "or wider" + "than"
            return length, entry
        return None

    def _plural_fallback(self, text: str, i: int) -> tuple[int, Entry] | None:
        if i > 0 and is_ascii_letter(text[i - 1]):
            return None
        m = _LETTERS.match(text, i)
        if not m:
            return None
        word = m.group(0)
        if m.end() < len(text) and is_ascii_alnum(text[m.end()]):
            return None
        stems = []
        if word.endswith("ies"):
            stems.append(word[:-3] + "y")
        if word.endswith("es"):
            stems.append(word[:-2])
        if word.endswith("s"):
            stems.append(word[:-1])
        for stem in stems:
            entry = self.vocab.table.get(stem)
            if entry is not None and entry.kind in _PLURAL_KINDS:
                return len(word), entry
        return None

    # -- main -----------------------------------------------------------------------------------------------------
    def tokenize(self, instruction: str | Normalized) -> tuple[Normalized, list[Token]]:
        norm = instruction if isinstance(instruction, Normalized) else normalize(instruction)
        text = norm.text
        n = len(text)
        tokens: list[Token] = []
        i = 0
        while i < n:
            ch = text[i]
            if ch == " ":
                i += 1
                continue
            if ch == "+" and tokens and tokens[-1].kind == NUM and tokens[-1].end == i:
                # "3+ cracks": at least three
                tokens.append(Token(CMP, i, i + 1, "+", extra={"op": ">=", "position": "postfix", "measure": None}))
                i += 1
                continue
            if ch.isdigit() or (ch == "." and i + 1 < n and text[i + 1].isdigit()):
                m = _DIGITS.match(text, i)
                if m and (i == 0 or not is_ascii_letter(text[i - 1])):
                    tokens.append(Token(NUM, i, m.end(), m.group(0), value=float(m.group(0))))
                    i = m.end()
                    continue
            hit = self._match(text, i)
            zh = self._zh_re.match(text, i) if is_cjk(ch) else None
            if zh and (hit is None or len(zh.group(0)) > hit[0]):
                value = parse_zh_numeral(zh.group(0), *self._zh)
                if value is not None:
                    tokens.append(Token(NUM, i, zh.end(), zh.group(0), value=value, is_word=True))
                    i = zh.end()
                    continue
            if hit is None:
                hit = self._plural_fallback(text, i) or self._stem_form(text, i)
            if hit is not None:
                length, entry = hit
                length = self._with_suffix(text, i, length, entry)
                tok = Token(entry.kind, i, i + length, text[i : i + length], entry=entry)
                if entry.kind == CLASS and tok.surface != normalize(entry.display).text:
                    if is_cjk(tok.surface[0]) and tok.surface[-1] in self._suffixes:
                        tok.extra["note"] = (
                            f"read '{norm.span(i, i + length)}' as '{entry.display}' ({entry.get('name')})"
                        )
                if entry.kind == "numword":
                    tok = Token(
                        NUM, i, i + length, tok.surface, entry=entry, value=float(entry.get("value")), is_word=True
                    )
                tokens.append(tok)
                i += length
                if entry.kind in (FOLDER, LOT):
                    i = self._capture_after(norm, tok, i)
                continue
            # unknown
            if is_ascii_alnum(ch) or ch == "_":
                m = _ASCII_WORD.match(text, i)
                end = m.end() if m else i + 1
                tokens.append(Token(UNKNOWN, i, end, text[i:end]))
                i = end
            elif is_cjk(ch):
                prev = tokens[-1] if tokens else None
                if prev is not None and prev.kind == UNKNOWN and prev.end == i and is_cjk(prev.surface[-1]):
                    prev.end, prev.surface = i + 1, prev.surface + ch
                else:
                    tokens.append(Token(UNKNOWN, i, i + 1, ch))
                i += 1
            else:
                tokens.append(Token(UNKNOWN, i, i + 1, ch))
                i += 1
        self._capture_before(norm, tokens)
        if any(t.kind == UNKNOWN and is_cjk(t.surface[0]) for t in tokens):
            tokens[:] = self._resegment(norm, tokens)
        return norm, tokens

    # -- spoken Chinese -------------------------------------------------------------------------------------------
    def _with_suffix(self, text: str, i: int, length: int, entry: Entry) -> int:
        """板子, 焊渣子, 针眼儿: a noun suffix right after a class / subject word belongs to it."""
        j = i + length
        if (
            entry.kind in _SUFFIX_KINDS
            and j < len(text)
            and text[j] in self._suffixes
            and is_cjk(text[j - 1])
            and self._match(text, j) is None
        ):
            return length + 1
        return length

    def _stem_form(self, text: str, i: int) -> tuple[int, Entry] | None:
        """渣子 (焊渣), 缝子 (裂缝), 口子 (缺口): the last character of one class's words + a noun suffix."""
        entry = self._stems.get(text[i])
        if entry is not None and i + 1 < len(text) and text[i + 1] in self._suffixes:
            return 1, entry
        return None

    def _resegment(self, norm: Normalized, tokens: list[Token]) -> list[Token]:
        """Cut the Chinese the lexicon left unread into jieba's words: skip function words (with a note), keep the
        others UNKNOWN, whole (重点, not 重 + the classifier 点)."""
        text = norm.text
        seg = segment.segmenter(_user_words)
        unknown = {p for t in tokens if t.kind == UNKNOWN and is_cjk(t.surface[0]) for p in range(t.start, t.end)}
        owner = {p: k for k, t in enumerate(tokens) for p in range(t.start, t.end)}
        words: list[tuple[int, int]] = []
        for start, end in _cjk_runs(text, unknown):
            words.extend((start + w.start, start + w.end) for w in seg.cut(text[start:end]))
        # a known word of no weight inside a jieba word that has unread characters is part of that word
        absorbed: set[int] = set()
        for s, e in words:
            if any(p in unknown for p in range(s, e)):
                for k in {owner[p] for p in range(s, e) if p in owner}:
                    t = tokens[k]
                    if t.kind != UNKNOWN and s <= t.start and t.end <= e and _weak(t):
                        absorbed.add(k)
                        unknown.update(range(t.start, t.end))
        kept = [t for k, t in enumerate(tokens) if k not in absorbed and not (t.kind == UNKNOWN and t.start in unknown)]
        pieces: list[Token] = []
        for s, e in words:
            run: list[int] = [p for p in range(s, e) if p in unknown]
            if not run:
                continue
            for a, b in _runs(run):
                whole = (a, b) == (s, e)
                piece = Token(UNKNOWN, a, b, text[a:b])
                if whole:
                    note = self._skip_note(piece, kept, seg)
                    if note:
                        piece.kind, piece.extra["note"] = FILLER, note
                pieces.append(piece)
        # unread words side by side stay one word, as before jieba (飞贱 in 焊渣飞贱, whatever jieba's cut)
        merged: list[Token] = []
        for piece in sorted(pieces, key=lambda t: t.start):
            last = merged[-1] if merged else None
            if last is not None and piece.kind == last.kind == UNKNOWN and last.end == piece.start:
                last.end, last.surface = piece.end, last.surface + piece.surface
            else:
                merged.append(piece)
        return sorted(kept + merged, key=lambda t: t.start)

    def _skip_note(self, piece: Token, kept: list[Token], seg: segment.Segmenter) -> str:
        """Why an unread word may be skipped ("" when it may not): a function word of jieba's dictionary, with no
        character that can change the query, next to no number, unit or comparator, and no word of another line."""
        word = piece.surface
        tag = seg.tag(word)
        if tag not in segment.FUNCTION_TAGS or any(c in self._meaning_chars for c in word):
            return ""
        for t in kept:
            if (t.end == piece.start or t.start == piece.end) and t.kind in _NUMERIC_KINDS:
                return ""
        for line in line_names():
            if vocabulary_for(line).lookup(word) is not None:
                return ""
        return f"skipped '{word}' ({segment.FUNCTION_TAGS[tag]}): it does not change what is asked"

    def _capture_after(self, norm: Normalized, tok: Token, i: int) -> int:
        """`folder line2/day1`, `lot L123`, `lot no. L123`, `批次L123`: the id right after the word."""
        skip = _CAPTURE_SKIP_LOT if tok.kind == LOT else _CAPTURE_SKIP
        j = _skip_end(skip, norm.cased, i)
        if tok.kind == LOT:  # "lot no. L123", "batch number 7"
            m = _LOT_NUMBER_WORD.match(norm.text, j)
            if m:
                j = _skip_end(skip, norm.cased, m.end())
        pattern = _FOLDER_ID if tok.kind == FOLDER else _LOT_ID
        m = pattern.match(norm.cased, j)
        if not m:
            return i
        if m.group(2) is not None:
            # an ordinary word is no id ("in the folder with cracks", "lot 3 cracks" keeps "3" as the id)
            hit = self._match(norm.text, j)
            if hit is not None and hit[0] >= m.end() - j:
                return i
        tok.capture = next(g for g in m.groups() if g is not None)
        tok.end = m.end()
        return m.end()

    @staticmethod
    def _capture_before(norm: Normalized, tokens: list[Token]) -> None:
        """`line2 folder`, `L123批次`: the id right before the word, when it is not a known word."""
        for k, tok in enumerate(tokens):
            if tok.kind in (FOLDER, LOT) and tok.capture is None and k > 0:
                prev = tokens[k - 1]
                if prev.kind == UNKNOWN and is_ascii_alnum(prev.surface[0]) or (prev.kind == NUM and not prev.is_word):
                    if tok.kind == LOT and not any(c.isdigit() for c in prev.surface):
                        continue
                    tok.capture = norm.cased[prev.start : prev.end]
                    tok.start = prev.start
                    prev.kind = "captured"
        tokens[:] = [t for t in tokens if t.kind != "captured"]
