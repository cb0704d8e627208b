"""What a case may say about its product line and defect class, checked against the line's config
(`configs/lines/<line>.yaml`) before it enters the knowledge base: the line must have a config; the class is the
name, or any zh / en synonym (case-insensitive), of one of the line's defect classes (detected or derived) and is
stored under its name. A word that names nothing is refused with the nearest known name as a suggestion, so that a
typo ("spater") never becomes a class of its own that no search for "spatter" finds."""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from functools import cache

from defect_agent.config import ClassSpec, DerivedDefect, available_lines, load_line
from vision.detection import Box


class UnknownName(ValueError):
    """A line or class name the line configs do not know (the message suggests the nearest known one)."""


def _did_you_mean(word: str, candidates: dict[str, str]) -> str:
    """' (did you mean 'x'?)' for the closest candidate word, mapped to the name it stands for; '' if none is close."""
    close = difflib.get_close_matches(word.strip().lower(), list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {candidates[close[0]]!r}?)" if close else ""


@dataclass(frozen=True)
class LineVocabulary:
    """A product line's defect classes and every word that names one (name, zh and en synonyms, lower-cased)."""

    line: str
    defect_names: tuple[str, ...]
    words: dict[str, str]  # lower-cased name or synonym -> class name
    part_words: dict[str, str]  # words naming the line's parts (tab, weld): located, but not defects

    @classmethod
    def of(cls, line: str) -> LineVocabulary:
        return _vocabulary(line)

    def canonical(self, word: str) -> str:
        """The class `word` names on this line; UnknownName (with a suggestion) when it names none."""
        key = word.strip().lower()
        if key in self.words:
            return self.words[key]
        known = ", ".join(self.defect_names)
        if key in self.part_words:
            raise UnknownName(
                f"{word!r} names the part {self.part_words[key]!r} of line {self.line}, not a defect class; "
                f"defect classes: {known}"
            )
        hint = _did_you_mean(word, self.words)
        raise UnknownName(f"unknown defect class {word!r} for line {self.line}{hint}; known: {known}")


@cache
def _vocabulary(line: str) -> LineVocabulary:
    cfg = load_line(line)
    words: dict[str, str] = {}
    parts: dict[str, str] = {}
    names: list[str] = []
    specs: list[ClassSpec | DerivedDefect] = [*cfg.classes, *cfg.derived]
    for spec in specs:
        is_part = getattr(spec, "role", "defect") == "part"
        target = parts if is_part else words
        if not is_part:
            names.append(spec.name)
        for w in (spec.name, *spec.synonyms.en, *spec.synonyms.zh):
            target.setdefault(w.strip().lower(), spec.name)
    return LineVocabulary(line=cfg.name, defect_names=tuple(names), words=words, part_words=parts)


def known_line(name: str) -> str | None:
    """The configured line `name` stands for (exact, else case-insensitive); None when there is no config."""
    lines = available_lines()
    if name in lines:
        return name
    folded = {n.lower(): n for n in lines}
    return folded.get(name.strip().lower())


def canonical_names(line: str, defect_class: str) -> tuple[str, str]:
    """(line, class) as the line's config names them; UnknownName for a line without config or a class the line
    does not have."""
    found = known_line(line)
    if found is None:
        lines = available_lines()
        hint = _did_you_mean(line, {n.lower(): n for n in lines})
        raise UnknownName(
            f"unknown product line {line!r}{hint}; known: {', '.join(lines) or 'none'} "
            f"(a line needs configs/lines/<line>.yaml)"
        )
    return found, LineVocabulary.of(found).canonical(defect_class)


def box_problem(box: Box, width: int, height: int) -> str | None:
    """Why `box` cannot be the region of a defect in a width x height image (non-finite, empty, or reaching
    outside it); None when it can. A box outside the image would be embedded from a clipped or empty crop, and
    measured from pixels that are not there."""
    coords = (box.x1, box.y1, box.x2, box.y2)
    text = ",".join(f"{v:g}" for v in coords)
    if not all(math.isfinite(v) for v in coords):
        return f"box {text} has a coordinate that is not a finite number"
    if box.width <= 0 or box.height <= 0:
        return f"box {text} is empty (zero width or height)"
    if box.x1 < 0 or box.y1 < 0 or box.x2 > width or box.y2 > height:
        inside = box.x2 > 0 and box.y2 > 0 and box.x1 < width and box.y1 < height
        return f"box {text} {'reaches' if inside else 'lies'} outside the {width}x{height} image"
    return None
