"""Per-defect fusion: detector confidence, texture score, retrieved-case evidence and (template lines) the class
verifier's probability -> one probability.

A logistic model in logit space. Until `defect-agent calibrate` has fitted it on labelled validation findings, the
weights are the identity on the detector confidence (texture and case evidence are reported but do not move the
probability): an unfitted weight would be a guess, and a guessed weight can stop a line."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
from pydantic import BaseModel

from defect_agent.paths import models_dir

log = logging.getLogger(__name__)

_EPS = 1e-4


def logit(p: float) -> float:
    p = min(max(p, _EPS), 1.0 - _EPS)
    return math.log(p / (1.0 - p))


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


class FusionWeights(BaseModel):
    """A line's fusion weights: logistic coefficients on the logits of detector confidence, texture score, case
    evidence and verifier probability, plus the fitted box margin (models/fusion/<line>.json)."""

    bias: float = 0.0
    detector: float = 1.0
    texture: float = 0.0
    cases: float = 0.0
    verifier: float = 0.0  # weight of vision.verifier.model's class probability (0 where a line has no verifier)
    # fitted with the weights on the same matched detections: how much wider / taller the locator's boxes are than
    # the annotated defects (median, px); sizes in mm subtract it (vision.measure)
    box_margin_px: float = 0.0
    fitted_on: str | None = None  # what data fitted them; None = identity default

    def features(
        self, confidence: float, texture: float | None, cases: float | None, verifier: float | None = None
    ) -> list[float]:
        # a missing score sits at logit 0 (no evidence either way)
        return [
            1.0,
            logit(confidence),
            logit(texture) if texture is not None else 0.0,
            logit(cases) if cases is not None else 0.0,
            logit(verifier) if verifier is not None else 0.0,
        ]

    def fuse(
        self, confidence: float, texture: float | None = None, cases: float | None = None, verifier: float | None = None
    ) -> float:
        f = self.features(confidence, texture, cases, verifier)
        z = self.bias * f[0] + self.detector * f[1] + self.texture * f[2] + self.cases * f[3] + self.verifier * f[4]
        return sigmoid(z)


def fusion_path(line: str) -> Path:
    return models_dir() / "fusion" / f"{line}.json"


def load_fusion(line: str) -> FusionWeights:
    path = fusion_path(line)
    if not path.is_file():
        return FusionWeights()
    return FusionWeights.model_validate_json(path.read_text(encoding="utf-8"))


def save_fusion(line: str, weights: FusionWeights) -> Path:
    path = fusion_path(line)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(weights.model_dump_json(indent=2), encoding="utf-8")
    return path


def fit_fusion(
    confidences: list[float],
    textures: list[float | None],
    cases: list[float | None],
    labels: list[int],
    verifier: list[float | None] | None = None,
    l2: float = 1e-2,
    fitted_on: str = "",
) -> FusionWeights:
    """Logistic regression by Newton's method (IRLS) with a small ridge: labels are 1 for a true defect, 0 for a
    false detection (matched to ground truth on validation images)."""
    if len(set(labels)) < 2:
        raise ValueError("fusion needs both true and false detections to fit")
    proto = FusionWeights()
    verifier = verifier if verifier is not None else [None] * len(labels)
    x = np.array(
        [proto.features(c, t, e, v) for c, t, e, v in zip(confidences, textures, cases, verifier)], dtype=np.float64
    )
    y = np.asarray(labels, dtype=np.float64)
    w = np.array([0.0, 1.0, 0.0, 0.0, 0.0])
    ridge = l2 * np.eye(5)
    ridge[0, 0] = 0.0
    for _ in range(50):
        p = 1.0 / (1.0 + np.exp(-(x @ w)))
        grad = x.T @ (p - y) + ridge @ w
        hess = (x * (p * (1 - p))[:, None]).T @ x + ridge + 1e-9 * np.eye(5)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    log.info("fusion fitted on %d findings: %s", len(y), np.round(w, 3).tolist())
    return FusionWeights(bias=w[0], detector=w[1], texture=w[2], cases=w[3], verifier=w[4], fitted_on=fitted_on)


def dump_weights(weights: FusionWeights) -> str:
    return json.dumps(weights.model_dump(), indent=2)
