"""Errors of the instruction parser. Each names what it could not read and what to type instead; the CLI prints
the message without a traceback (they are DefectAgentError)."""

from __future__ import annotations

from dataclasses import dataclass, field

from defect_agent.errors import DefectAgentError


class QueryParseError(DefectAgentError):
    """The instruction cannot be turned into an InspectionQuery."""

    def __init__(self, message: str, text: str = "") -> None:
        self.text = text
        super().__init__(message)


class EmptyQueryError(QueryParseError):
    """The instruction is empty or asks for nothing (no defect, count or measurement)."""


@dataclass(frozen=True)
class UnknownWord:
    """A word of the instruction the parser could not read, with the nearest known terms to suggest."""

    word: str  # as written in the instruction
    suggestions: list[str] = field(default_factory=list)  # nearest known terms, best first
    context: str = ""  # the longer span the suggestion was computed for (e.g. 焊渣飞贱 for the unknown 飞贱)
    hint: str = ""  # e.g. "'short' is a defect of line pcb"


class UnknownTermError(QueryParseError):
    """Words the parser could not read, each with the nearest known terms."""

    def __init__(self, words: list[UnknownWord], text: str = "", line: str | None = None) -> None:
        self.words = list(words)
        self.line = line
        parts = []
        for w in self.words:
            shown = f"'{w.word}'" + (f" (in '{w.context}')" if w.context and w.context != w.word else "")
            notes = []
            if w.suggestions:
                notes.append("did you mean " + " or ".join(f"'{s}'" for s in w.suggestions) + "?")
            if w.hint:
                notes.append(w.hint)
            if not notes:
                notes.append("no similar known word")
            parts.append(f"{shown}: {'; '.join(notes)}")
        where = f" for line {line!r}" if line else ""
        super().__init__(
            f"could not read {len(self.words)} word{'s' if len(self.words) != 1 else ''}{where} — "
            + " | ".join(parts)
            + " (`defect-agent parse --help` shows how to phrase an instruction)",
            text,
        )

    @property
    def unknown(self) -> list[str]:
        return [w.word for w in self.words]

    def suggestions_for(self, word: str) -> list[str]:
        for w in self.words:
            if w.word == word:
                return w.suggestions
        raise KeyError(word)


class AmbiguousQueryError(QueryParseError):
    """The instruction has more than one reasonable reading; names each and how to say the intended one."""

    def __init__(self, phrase: str, readings: list[str], hint: str = "", text: str = "") -> None:
        self.phrase = phrase
        self.readings = list(readings)
        self.hint = hint
        listed = "; ".join(f"({chr(ord('a') + i)}) {r}" for i, r in enumerate(self.readings))
        super().__init__(f"ambiguous: '{phrase}' can mean {listed}." + (f" {hint}" if hint else ""), text)


class UnsupportedQueryError(QueryParseError):
    """The words are known but do not make a query this line can answer (a part without a defect, a measure
    the class does not have, a unit that does not fit the measure, ...)."""
