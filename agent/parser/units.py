"""Numbers with units -> canonical values: mm for lengths and offsets, mm² for areas, 0..1 for confidence.
Pixel values use the line's calibration (mm per px) and keep what was typed in raw_value / unit."""

from __future__ import annotations

from agent.parser.errors import QueryParseError
from agent.parser.lexicon import Entry
from defect_agent.config import LineConfig

# measure -> the kind of unit it takes
MEASURE_UNIT_KIND = {
    "offset": "length",
    "length": "length",
    "width": "length",
    "area": "area",
    "confidence": "fraction",
}


def convert(raw_value: float, unit: Entry, line: LineConfig) -> float:
    """Value in the canonical unit of the unit's kind."""
    if unit.get("calibration"):
        mm_per_px = line.calibration.mm_per_px
        factor = mm_per_px if unit.get("kind") == "length" else mm_per_px**2
    else:
        factor = float(unit.get("factor", 1.0))
    return round(raw_value * factor, 10)


def unitless_confidence(raw_value: float, text: str) -> tuple[float, str]:
    """A confidence typed without a unit: 0.8 is a fraction; 80 (above 1, up to 100) can only be a percentage."""
    if 0 <= raw_value <= 1:
        return raw_value, ""
    if raw_value <= 100:
        return round(raw_value / 100.0, 10), "%"
    raise QueryParseError(f"'{text}': a confidence is between 0 and 1 (or 0% and 100%)")
