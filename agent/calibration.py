"""Fitting the per-defect fusion (agent.fusion) on labelled findings: detections of the real pipeline matched to
ground-truth boxes (1 = a true defect, 0 = a false detection), then a logistic fit of detector confidence, texture
score and case evidence. Also reports how well the fused probability is calibrated before and after the fit."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from pydantic import BaseModel

from agent.fusion import FusionWeights, fit_fusion
from agent.verdict import DefectFinding
from vision.detection import Box

TruthBoxes = list[tuple[str, Box]]


class CalibrationQuality(BaseModel):
    """How well fused probabilities fit the labels of matched findings: log loss, Brier score and expected
    calibration error."""

    findings: int
    positives: int
    log_loss: float
    brier: float
    ece: float  # expected calibration error over 10 equal-width bins


class FusionFit(BaseModel):
    """What `fit_on` returns: the fitted fusion weights and the calibration quality before (identity fusion)
    and after the fit."""

    weights: FusionWeights
    images: int
    before: CalibrationQuality  # identity fusion (probability = detector confidence)
    after: CalibrationQuality


def match_findings(
    findings: list[DefectFinding], truth: TruthBoxes, iou: float = 0.5
) -> list[tuple[DefectFinding, Box | None]]:
    """Greedy one-to-one matching, most confident first: a detector finding matches the unmatched truth box of its
    class it overlaps most, by at least `iou`. Derived findings (offset, missing weld) are measured, not detected,
    and are left out."""
    free = list(truth)
    out: list[tuple[DefectFinding, Box | None]] = []
    for f in sorted((f for f in findings if f.source == "detector"), key=lambda f: -f.confidence):
        best, best_iou = None, iou
        for i, (cls, box) in enumerate(free):
            if cls == f.defect_class and (o := f.box.iou(box)) >= best_iou:
                best, best_iou = i, o
        out.append((f, free.pop(best)[1] if best is not None else None))
    return out


def label_findings(
    findings: list[DefectFinding], truth: TruthBoxes, iou: float = 0.5
) -> list[tuple[DefectFinding, int]]:
    """(finding, 1 = a true defect / 0 = a false detection), by `match_findings`."""
    return [(f, int(box is not None)) for f, box in match_findings(findings, truth, iou)]


def calibration_quality(probabilities: list[float], labels: list[int], bins: int = 10) -> CalibrationQuality:
    eps = 1e-6
    n = len(labels)
    ll = -sum(y * math.log(max(p, eps)) + (1 - y) * math.log(max(1 - p, eps)) for p, y in zip(probabilities, labels))
    brier = sum((p - y) ** 2 for p, y in zip(probabilities, labels))
    ece = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        idx = [i for i, p in enumerate(probabilities) if lo <= p < hi or (b == bins - 1 and p == 1.0)]
        if idx:
            conf = sum(probabilities[i] for i in idx) / len(idx)
            acc = sum(labels[i] for i in idx) / len(idx)
            ece += len(idx) / n * abs(conf - acc)
    return CalibrationQuality(findings=n, positives=sum(labels), log_loss=ll / n, brier=brier / n, ece=ece)


def fit_on(samples: Iterable[tuple[list[DefectFinding], TruthBoxes]], fitted_on: str, iou: float = 0.5) -> FusionFit:
    """Fit the fusion weights on (findings, truth boxes) of labelled images."""
    conf, tex, cases, ver, labels = [], [], [], [], []
    margins: list[float] = []
    images = 0
    for findings, truth in samples:
        images += 1
        for f, box in match_findings(findings, truth, iou):
            conf.append(f.confidence)
            tex.append(f.texture_score)
            cases.append(f.case_evidence)
            ver.append(f.verifier_score)
            labels.append(int(box is not None))
            if box is not None:
                margins.append((f.box.width - box.width + f.box.height - box.height) / 2.0)
    if not labels:
        raise ValueError("no detections on the calibration images: nothing to fit")
    weights = fit_fusion(conf, tex, cases, labels, verifier=ver, fitted_on=fitted_on)
    weights.box_margin_px = round(float(np.median(margins)), 2) if margins else 0.0
    identity = FusionWeights()
    rows = list(zip(conf, tex, cases, ver))
    before = calibration_quality([identity.fuse(*r) for r in rows], labels)
    after = calibration_quality([weights.fuse(*r) for r in rows], labels)
    return FusionFit(weights=weights, images=images, before=before, after=after)


def battery_tab_samples(inspector, out: Path, n: int, seed: int) -> Iterator[tuple[list[DefectFinding], TruthBoxes]]:
    """Freshly generated battery_tab images (a seed of their own) with the generator's exact boxes."""
    from agent.images import read_image
    from vision.datasets.synth.battery_tab import generate_batch, read_truth

    paths = generate_batch(out, n=n, seed=seed)
    truths = {t.image: t for t in read_truth(out / "truth.jsonl")}
    defects = {c.name for c in inspector.line.classes if c.role == "defect"}
    for p in paths:
        truth = [(o.name, o.box) for o in truths[p.name].objects if o.name in defects]
        yield inspector.analyse(read_image(p, inspector.line.image_size)), truth


def deeppcb_samples(inspector, root: Path, split: str = "train") -> Iterator[tuple[list[DefectFinding], TruthBoxes]]:
    """DeepPCB boards of one split of the fixed group split (vision.datasets.deeppcb), with their annotations."""
    from agent.evaluation import deeppcb_findings

    for _, findings, boxes, _ in deeppcb_findings(inspector, root, split):
        yield findings, boxes
