"""Chinese word segmentation (jieba) for what the lexicon cannot read, and the part of speech of a word.

The lexicon's longest match reads every word it knows; where it leaves characters unread, jieba cuts the Chinese
run into words, so that an unread word is reported (or skipped) whole ("重点", not "重" + the classifier "点"). Its
user dictionary is built at run time from the lexicon and every line's class and subject words (nothing is written
into the package), so its word boundaries agree with the lexicon's. jieba's dictionary load costs about a second:
it is imported and loaded on the first instruction that needs it, never when `agent.parser` is imported, and
cached for the process. The part-of-speech table (another ~0.8 s) is loaded only when an unread word must be
classified as a function word or not."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

log = logging.getLogger(__name__)

# Frequency given to the lexicon's words: well above any word of jieba's own dictionary that could overlap one, so
# that 焊渣飞溅 stays one word and is never cut as 焊 + 渣飞 + 溅.
_USER_FREQ = 2_000_000

# jieba tags of function words: adverbs, conjunctions, prepositions, pronouns, particles, interjections,
# onomatopoeia, and jieba's "zg" (mostly sentence particles such as 啊, 哦). Nouns, verbs, adjectives, numerals,
# measure words, time and place words are never skipped: they can carry what the operator asks for.
FUNCTION_TAGS = {
    "d": "adverb",
    "dg": "adverb",
    "c": "conjunction",
    "p": "preposition",
    "r": "pronoun",
    "rr": "pronoun",
    "rz": "pronoun",
    "rg": "pronoun",
    "u": "particle",
    "ud": "particle",
    "ug": "particle",
    "uj": "particle",
    "ul": "particle",
    "uv": "particle",
    "uz": "particle",
    "y": "particle",
    "e": "interjection",
    "o": "onomatopoeia",
    "zg": "particle",
}


@dataclass(frozen=True)
class Word:
    """One word of jieba's cut: its text and its span in the cut string."""

    text: str
    start: int
    end: int


class Segmenter:
    """jieba's tokenizer with the lexicon's words in its dictionary, plus a lazily loaded part-of-speech table."""

    def __init__(self, user_words: Iterable[str]) -> None:
        import jieba  # lazy: ~1 s of dictionary load, only for instructions the lexicon cannot read alone

        logging.getLogger("jieba").setLevel(logging.WARNING)  # it logs its dictionary load to stderr at DEBUG
        tokenizer = jieba.Tokenizer()
        tokenizer.initialize()
        for w in sorted(set(user_words)):
            if len(w) >= 2:  # single characters are in jieba's dictionary already, with their real frequency
                tokenizer.add_word(w, _USER_FREQ)
        self._tokenizer = tokenizer
        self._tags: dict[str, str] | None = None
        self._lock = threading.Lock()

    def cut(self, text: str) -> list[Word]:
        """jieba's words of a run of Chinese characters (HMM on, so that unknown characters form words)."""
        return [Word(w, s, e) for w, s, e in self._tokenizer.tokenize(text, HMM=True)]

    def tag(self, word: str) -> str | None:
        """The part of speech jieba's dictionary gives `word` (None when it is not a dictionary word)."""
        with self._lock:
            if self._tags is None:
                import jieba.posseg

                self._tags = jieba.posseg.POSTokenizer(self._tokenizer).word_tag_tab
        return self._tags.get(word)


_segmenter: Segmenter | None = None
_segmenter_lock = threading.Lock()


def segmenter(user_words: Callable[[], Iterable[str]]) -> Segmenter:
    """The process's Segmenter, built on first use with the words `user_words()` gives (the tokenizer passes the
    lexicon's and every configured line's Chinese words; this module imports nothing of the parser)."""
    global _segmenter
    with _segmenter_lock:
        if _segmenter is None:
            _segmenter = Segmenter(user_words())
            log.debug("jieba segmenter loaded with the lexicon's words")
        return _segmenter


def reset() -> None:
    """Forget the segmenter (after editing a config in a long-running process)."""
    global _segmenter
    with _segmenter_lock:
        _segmenter = None
