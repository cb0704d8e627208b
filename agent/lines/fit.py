"""Fitting a line's anomaly model from a folder of normal images: three quarters fitted, the held-back quarter
calibrates the thresholds at the false-alarm target, and the rate is measured two-fold on that quarter (threshold
from one half, rate on the other); examples scored and boxed without a drawn box."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from agent.images import collect_images, read_image
from agent.lines.card import ExampleFigures, LineCard, relative_path, write_card
from defect_agent.errors import ConfigError, EmptyInput
from vision.detection import Box

MIN_NORMAL = 8  # fewer normal images cannot both fit a bank and calibrate a threshold on held-back ones
MODEL_STEM = "anomaly"


def _split(paths: list[str], holdout: float) -> tuple[list[str], list[str]]:
    """Every n-th image held back (spread over the capture order), at least 4, the rest fitted."""
    n_held = min(max(4, round(len(paths) * holdout)), len(paths) - 4)
    step = len(paths) / n_held
    held_idx = {int(i * step) for i in range(n_held)}
    return [p for i, p in enumerate(paths) if i not in held_idx], [p for i, p in enumerate(paths) if i in held_idx]


def _two_fold_false_alarm(scores: list[float], max_false_alarm: float) -> float:
    from vision.embedder.texture import calibrate_threshold

    a, b = scores[0::2], scores[1::2]
    rates = []
    for cal, test in ((a, b), (b, a)):
        if cal and test:
            t = calibrate_threshold(cal, max_false_alarm)
            rates.append(sum(s > t for s in test) / len(test))
    return float(np.mean(rates)) if rates else float("nan")


def fit_anomaly(
    name: str,
    normal: Path,
    folder: Path,
    max_false_alarm: float = 0.01,
    image_size: int = 256,
    stages: tuple[int, ...] = (2, 4),
    holdout: float = 0.25,
    progress: bool = True,
    margin: int = 0,
) -> tuple[Any, LineCard]:
    """Fit a normal-only anomaly model on `normal`'s images minus a held-back share, calibrate its thresholds on
    the held-back ones, measure the false-alarm rate two-fold, save model + card into `folder`."""
    from vision.anomaly import AnomalyConfig, AnomalyModel

    normals = collect_images([normal])
    if len(normals) < MIN_NORMAL:
        raise EmptyInput(f"{normal} holds {len(normals)} images; a line needs at least {MIN_NORMAL} normal images")
    fit_paths, held_paths = _split(normals, holdout)

    def load(paths: list[str]) -> list[np.ndarray]:
        return [read_image(p) for p in paths]  # the house reader: size and pixel limits, never a FIFO

    try:
        config = AnomalyConfig(image_size=image_size, stages=stages, margin=margin)
    except ValueError as exc:
        raise ConfigError(f"anomaly model settings: {exc}") from exc
    model = AnomalyModel(config)
    t0 = time.perf_counter()
    model.fit(load(fit_paths), progress=progress)
    fit_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    held = model.score_batch(load(held_paths))
    ms_per_image = (time.perf_counter() - t0) * 1000.0 / len(held)
    scores = [r.score for r in held]
    measured_fa = _two_fold_false_alarm(scores, max_false_alarm)
    threshold = model.calibrate(scores, max_false_alarm, normal_map_peaks=[r.peak for r in held])
    folder.mkdir(parents=True, exist_ok=True)
    bank = model.save(folder / MODEL_STEM)
    card = LineCard(
        line=name,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        normal_source=str(normal),
        fit_images=len(fit_paths),
        held_back_images=len(held_paths),
        max_false_alarm=max_false_alarm,
        threshold=threshold,
        map_threshold=float(model.map_threshold or 0.0),  # set by calibrate with normal_map_peaks
        false_alarm_held_back=measured_fa,
        fit_seconds=round(fit_seconds, 2),
        ms_per_image=round(ms_per_image, 1),
        image_size=image_size,
        stages=list(stages),
        model=relative_path(bank),
        model_version=model.version,
    )
    write_card(card, folder)
    return model, card


@dataclass(frozen=True)
class ExampleReading:
    """One example image, scored once: whether the calibrated threshold flags it, and its defect's box."""

    path: str
    flagged: bool
    box: Box | None


def read_examples(model, paths: list[str], mm_per_px: float) -> list[ExampleReading]:
    """Score each example once (one at a time: an anomaly map per image is the size of the image)."""
    out = []
    for path in paths:
        result = model.score(read_image(path))
        out.append(
            ExampleReading(path=path, flagged=model.is_anomalous(result), box=region_box(model, result, mm_per_px))
        )
    return out


def example_figures(readings: list[ExampleReading]) -> ExampleFigures:
    return ExampleFigures(images=len(readings), flagged=sum(r.flagged for r in readings))


def region_box(model, result, mm_per_px: float) -> Box | None:
    """The example's defect without a drawn box: the strongest region of its anomaly map at the calibrated map
    threshold, else (a defect the model ranks as normal, or a false alarm below it) the compact region around the
    map's peak (above 90 % of it). Region-sized, like the regions inspection compares it with: a whole-image crop
    would be compared with region crops and match nothing, or everything."""
    threshold = model.map_threshold if result.peak > model.map_threshold else 0.9 * result.peak
    regions = model.regions(result, mm_per_px=mm_per_px, threshold=threshold)
    return regions[0].box if regions else None
