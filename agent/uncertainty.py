"""Measurement uncertainty: how far a finding's size in mm may lie from the true size.

Two parts, combined in quadrature per measurement:
- localisation: the box is not the defect's outline. Estimated per measurement key (and per class with enough
  samples) as a robust spread of measured minus annotated sizes over findings matched to ground truth
  (`defect-agent calibrate --line L --measurement`), stored in models/measure/<line>.json and pinned in
  models/MANIFEST.json;
- calibration: the line's `calibration.mm_per_px_uncertainty` (relative), which scales lengths once and areas
  twice.

A size bound of an instruction or an acceptance limit inside value ± uncertainty is not decided by the machine:
the image goes to review (agent.clauses, agent.acceptance)."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field

from defect_agent.config import LineConfig
from defect_agent.paths import models_dir

log = logging.getLogger(__name__)

# the measurements an operator reads and a query can bound (agent.query.MEASUREMENT_KEYS values)
UNCERTAIN_KEYS = ("length_mm", "width_mm", "area_mm2", "offset_mm")


class KeySpread(BaseModel):
    """The error of one measurement key over matched findings: the robust half-width used, and the bias seen."""

    spread: float = Field(description="The `quantile` of |measured - annotated| (mm, or mm² for areas).")
    bias: float = Field(description="Median of measured - annotated (informational; sizes are not corrected).")
    samples: int = Field(description="Matched findings the figures come from.")


class MeasurementUncertainty(BaseModel):
    """A line's localisation error per measurement key (models/measure/<line>.json), overall and per class where a
    class had at least `min_class_samples` matched findings."""

    line: str
    quantile: float = 0.9
    keys: dict[str, KeySpread] = Field(default_factory=dict)
    per_class: dict[str, dict[str, KeySpread]] = Field(default_factory=dict)
    min_class_samples: int = 30
    fitted_on: str = ""

    def spread(self, defect_class: str, key: str) -> float | None:
        """The class's own spread where it had enough samples, else the line's, else None."""
        own = self.per_class.get(defect_class, {}).get(key)
        if own is not None:
            return own.spread
        overall = self.keys.get(key)
        return overall.spread if overall is not None else None


def measurement_path(line: str) -> Path:
    return models_dir() / "measure" / f"{line}.json"


def load_measurement_uncertainty(line: str) -> MeasurementUncertainty | None:
    """The stored estimate, checked against models/MANIFEST.json; None when the line has none yet."""
    from defect_agent.files import verify_model_file

    path = measurement_path(line)
    if not path.is_file():
        return None
    verify_model_file(path)
    return MeasurementUncertainty.model_validate_json(path.read_text(encoding="utf-8"))


def save_measurement_uncertainty(estimate: MeasurementUncertainty) -> Path:
    """Write models/measure/<line>.json atomically and record its digest in the manifest."""
    from defect_agent.files import atomic_write, record_model

    path = measurement_path(estimate.line)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, (estimate.model_dump_json(indent=2) + "\n").encode("utf-8"))
    record_model(path)
    return path


def finding_uncertainty(
    defect_class: str,
    measurements: dict[str, float],
    line: LineConfig,
    stored: MeasurementUncertainty | None,
) -> dict[str, float]:
    """± per measurement key of one finding: localisation spread and relative calibration error in quadrature.
    Keys with neither part known are left out (the fixed margin then applies)."""
    rel = line.calibration.mm_per_px_uncertainty
    out: dict[str, float] = {}
    for key in UNCERTAIN_KEYS:
        value = measurements.get(key)
        if value is None:
            continue
        loc = stored.spread(defect_class, key) if stored is not None else None
        # mm per px enters a length once and an area twice
        cal = rel * abs(value) * (2.0 if key.endswith("mm2") else 1.0)
        if loc is None and cal <= 0:
            continue
        out[key] = round(math.hypot(loc or 0.0, cal), 4)
    return out


# ------------------------------------------------------------------------------------------------- estimation

ErrorSample = tuple[str, str, float]  # (class, measurement key, measured - annotated)


def _spread(errors: list[float], quantile: float) -> KeySpread:
    arr = np.asarray(errors, dtype=np.float64)
    return KeySpread(
        spread=round(float(np.quantile(np.abs(arr), quantile)), 4),
        bias=round(float(np.median(arr)), 4),
        samples=len(errors),
    )


def estimate_uncertainty(
    samples: Iterable[ErrorSample],
    line: str,
    quantile: float = 0.9,
    min_class_samples: int = 30,
    fitted_on: str = "",
) -> MeasurementUncertainty:
    """The robust spread (a quantile of the absolute error, 90 % by default) per key, and per class for classes
    with at least `min_class_samples` errors of a key: a few samples give a noisy quantile, the line's is safer."""
    by_key: dict[str, list[float]] = {}
    by_class: dict[str, dict[str, list[float]]] = {}
    for cls, key, err in samples:
        by_key.setdefault(key, []).append(err)
        by_class.setdefault(cls, {}).setdefault(key, []).append(err)
    if not by_key:
        raise ValueError("no matched findings: nothing to estimate the measurement uncertainty from")
    per_class = {
        cls: {k: _spread(v, quantile) for k, v in sorted(keys.items()) if len(v) >= min_class_samples}
        for cls, keys in sorted(by_class.items())
    }
    return MeasurementUncertainty(
        line=line,
        quantile=quantile,
        keys={k: _spread(v, quantile) for k, v in sorted(by_key.items())},
        per_class={cls: keys for cls, keys in per_class.items() if keys},
        min_class_samples=min_class_samples,
        fitted_on=fitted_on,
    )
