"""Text normalisation shared by the lexicon and the tokenizer, keeping a map back to the original characters so
that error messages and clause texts quote what the operator typed: traditional Chinese -> simplified (OpenCC),
full-width -> half-width (NFKC), lower case, single spaces."""

from __future__ import annotations

import logging
import unicodedata
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Any

log = logging.getLogger(__name__)

# Characters NFKC leaves alone but operators type interchangeably with ASCII ones.
_EXTRA = {
    "\u2019": "'",
    "\u2018": "'",
    "\u201c": '"',
    "\u201d": '"',
    "\u300c": '"',
    "\u300d": '"',
    "\u300e": '"',
    "\u300f": '"',
    "\u2013": "-",
    "\u2014": "-",
    "\u2212": "-",
    "\u301c": "~",
    "\u3002": ".",
    "\uff61": ".",
    "\u00d7": "x",
}


# Variant characters OpenCC's t2s keeps (they are also valid simplified text) but operators in Taiwan and Hong Kong
# write for the simplified one: 銲 = 焊 (漏銲, 銲點).
_VARIANTS = {"銲": "焊", "鍚": "锡"}


@cache
def _t2s() -> Any:
    """OpenCC's traditional -> simplified converter, or None when opencc cannot be imported (traditional words then
    stay unknown words with suggestions)."""
    try:
        import opencc

        return opencc.OpenCC("t2s")
    except Exception as exc:  # any import or data problem: the parser still reads simplified text
        log.warning("opencc unavailable (%s): traditional Chinese is read as typed", exc)
        return None


def to_simplified(text: str) -> str:
    """Traditional Chinese characters -> simplified, one character for one (裂紋長度 -> 裂纹长度), so that positions
    in the result are positions in `text`."""
    if not any(0x3400 <= ord(c) for c in text):
        return text
    cc = _t2s()
    out = cc.convert(text) if cc is not None else text
    if len(out) != len(text):  # a phrase conversion changed the length: convert character by character instead
        out = "".join(o if len(o := cc.convert(c)) == 1 else c for c in text)
    return "".join(_VARIANTS.get(c, c) for c in out)


def is_cjk(ch: str) -> bool:
    o = ord(ch)
    return 0x4E00 <= o <= 0x9FFF or 0x3400 <= o <= 0x4DBF or 0xF900 <= o <= 0xFAFF or 0x20000 <= o <= 0x2FFFF


def is_ascii_letter(ch: str) -> bool:
    return "a" <= ch <= "z" or "A" <= ch <= "Z"


def is_ascii_alnum(ch: str) -> bool:
    return is_ascii_letter(ch) or "0" <= ch <= "9"


@dataclass(frozen=True)
class Normalized:
    """`text`: NFKC, lower-cased, single spaces, hyphens between letters as spaces. `cased`: the same characters
    before lower-casing (ids such as lot L123 keep their case). `origin[i]`: index in the original of text[i]."""

    original: str
    text: str
    cased: str
    origin: tuple[int, ...]

    def span(self, start: int, end: int) -> str:
        """The original characters behind normalised positions [start, end)."""
        if start >= end:
            return ""
        return self.original[self.origin[start] : self.origin[end - 1] + 1].strip()


@lru_cache(maxsize=4096)
def normalize(original: str) -> Normalized:
    """`original` normalised (see Normalized); cached, as one instruction is normalised once per line tried."""
    text: list[str] = []
    cased: list[str] = []
    origin: list[int] = []
    for i, ch in enumerate(to_simplified(original)):
        n = unicodedata.normalize("NFKC", _EXTRA.get(ch, ch))
        n = "".join(_EXTRA.get(c, c) for c in n)
        if not n:
            continue
        if n.isspace():
            if text and text[-1] != " ":
                text.append(" ")
                cased.append(" ")
                origin.append(i)
            continue
        low = n.lower()
        if len(low) != len(n):  # e.g. 'İ': keep length so both strings stay aligned
            low = n
        for c_low, c_cased in zip(low, n):
            text.append(c_low)
            cased.append(c_cased)
            origin.append(i)
    while text and text[-1] == " ":
        text.pop(), cased.pop(), origin.pop()
    # "pin-hole", "off-centre": a hyphen between letters is a space (a hyphen between digits is a range)
    for j in range(1, len(text) - 1):
        if text[j] == "-" and is_ascii_letter(text[j - 1]) and is_ascii_letter(text[j + 1]):
            text[j] = " "
            cased[j] = " "
    return Normalized(original, "".join(text), "".join(cased), tuple(origin))


def normalize_term(term: str) -> str:
    """A lexicon word in the form the tokenizer matches (same rules as instructions)."""
    return normalize(term).text


def has_cjk(text: str) -> bool:
    return any(is_cjk(c) for c in text)
