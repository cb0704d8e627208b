"""One-edit typos of English defect words ("crakcs", "shrots", "spater"): the edit distance, and the correction
the parser makes when asked to (`correct_typos=True`). Only defect words are corrected: a typo in a number, unit,
negation or comparison word could change what is asked, so it stays an unknown word with a suggestion."""

from __future__ import annotations

from agent.parser.lexicon import AND_NOT, ANY, BUT_NOT, CLASS, CMP, MEASURE, NOR, NOT, NUMWORD, QUANT, UNIT, Entry

# vocabulary kinds whose words must not be near a corrected word: the correction could hide a change of meaning
_MEANING_KINDS = {NOT, NOR, BUT_NOT, AND_NOT, CMP, UNIT, NUMWORD, QUANT, MEASURE}


def osa_distance(a: str, b: str) -> int:
    """Edit distance counting an insertion, a deletion, a substitution or a swap of two neighbours as one edit
    (optimal string alignment): crakcs -> cracks = 1, spater -> spatter = 1."""
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        cur = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                cur[j] = min(cur[j], prev2[j - 2] + 1)
        prev2, prev = prev, cur
    return prev[len(b)]


def is_defect_word(entry: Entry) -> bool:
    return entry.kind == ANY or (entry.kind == CLASS and entry.get("role") == "defect")


def correction(word: str, table: dict[str, Entry]) -> tuple[str, Entry] | None:
    """The defect word `word` is one edit away from, when there is exactly one meaning at that distance and no
    meaning-changing word (negation, comparator, unit, number, measure) is as near; else None. Words shorter than
    four letters are never corrected (too many words are one edit from them)."""
    if len(word) < 4 or not word.isascii() or not word.isalpha():
        return None
    hits: dict[str, Entry] = {}
    for key, entry in table.items():
        if " " in key or abs(len(key) - len(word)) > 1 or not key.isascii():
            continue
        if entry.kind in _MEANING_KINDS and osa_distance(word, key) <= 1:
            return None
        if is_defect_word(entry) and osa_distance(word, key) == 1:
            hits[key] = entry
    meanings = {(e.kind, e.get("name")) for e in hits.values()}
    if len(meanings) != 1:
        return None
    key = min(hits, key=lambda k: (abs(len(k) - len(word)), k))
    return key, hits[key]
