"""Does the class verifier help? The locator's detections on a DeepPCB split scored in one run as the detector
gives them, after vision.verifier.model relabels (and refines) them, ranked by `verified_score`, and with the
verifier's alternative classes as extra labels (the multi-label reading ultralytics' validator scores): mAP50 /
mAP50-95 (ultralytics' AP integration over our own matching), per-class precision / recall and image-level miss
rate at the operating confidence, and the class accuracy of boxes that sit on a defect. Also mAP under DeepPCB's
own criterion (a detection is right at IoU > 0.33 with a box of its class), the protocol of the dataset paper's
published 0.986."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel
from tqdm import tqdm

from vision.detection import Box, Detection

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
IOU_DEEPPCB = np.nextafter(0.33, 1.0)  # "larger than 0.33" (DeepPCB README, Benchmarks)
Truth = list[tuple[int, Box]]


class ClassScore(BaseModel):
    """One class of a detection score: AP50, and precision / recall at the operating confidence."""

    name: str
    ap50: float
    precision: float  # at the operating confidence
    recall: float


class DetectionScore(BaseModel):
    """Detection quality of one way of reading the boxes on a DeepPCB split: mAP, miss rate, class accuracy."""

    map50: float
    map50_95: float
    map33: float | None = None  # DeepPCB's protocol: right at IoU > 0.33
    per_class: list[ClassScore]
    miss_rate: float  # boards with a defect and no detection at the operating confidence
    class_accuracy: float  # detections at the operating confidence overlapping a defect by >= 0.5: right class
    located: int  # how many such detections


class VerifierEvaluation(BaseModel):
    """The detector's scores on a DeepPCB split next to the same detections after the verifier relabels them."""

    split: str
    boards: int
    locator: str
    verifier: str
    conf_operating: float
    detector: DetectionScore  # the detector's boxes, classes and confidences
    verified: DetectionScore  # the verifier's classes and boxes, ranked by verified_score: what findings hold
    verified_multilabel: DetectionScore | None = None  # + each alternative class as one more detection


def match_tp(
    preds: Sequence[Detection],
    truth: Truth,
    class_names: list[str],
    thresholds: Sequence[float] | np.ndarray = IOU_THRESHOLDS,
) -> np.ndarray:
    """(len(preds), len(thresholds)) true-positive flags at each IoU threshold (0.5 ... 0.95), matched one to one
    as ultralytics' validator does: at each threshold the same-class (prediction, truth) pairs above it, highest
    IoU first."""
    out = np.zeros((len(preds), len(thresholds)), bool)
    if not preds or not truth:
        return out
    iou = np.array([[p.box.iou(b) if class_names.index(p.defect_class) == k else 0.0 for k, b in truth] for p in preds])
    for t, thr in enumerate(thresholds):
        pi, tj = np.nonzero(iou >= thr)
        order = np.argsort(-iou[pi, tj], kind="stable")
        used_p, used_t = set(), set()
        for i, j in zip(pi[order], tj[order]):
            if i not in used_p and j not in used_t:
                used_p.add(i)
                used_t.add(j)
                out[i, t] = True
    return out


def score_detections(
    per_image: Sequence[tuple[list[Detection], Truth]], class_names: list[str], conf_operating: float
) -> DetectionScore:
    from ultralytics.utils.metrics import ap_per_class

    tps: list[np.ndarray] = []
    confs: list[float] = []
    classes: list[int] = []
    targets: list[int] = []
    n = len(class_names)
    tp_op = np.zeros(n)
    pred_op = np.zeros(n)
    gt = np.zeros(n)
    missed = with_defect = located = right = 0
    for preds, truth in per_image:
        # one matching for both protocols: columns 0-9 at IoU 0.5 ... 0.95, the last at DeepPCB's > 0.33
        tp = match_tp(preds, truth, class_names, [*IOU_THRESHOLDS, IOU_DEEPPCB])
        tps.append(tp)
        confs.extend(p.confidence for p in preds)
        classes.extend(class_names.index(p.defect_class) for p in preds)
        targets.extend(k for k, _ in truth)
        at_operating = [p.confidence >= conf_operating and not p.ranked_only for p in preds]
        for p, flag, counted in zip(preds, tp[:, 0], at_operating):
            if counted:
                k = class_names.index(p.defect_class)
                pred_op[k] += 1
                tp_op[k] += flag
        for k, _ in truth:
            gt[k] += 1
        op = [p for p, counted in zip(preds, at_operating) if counted]
        if truth:
            with_defect += 1
            missed += not op
        for p in op:
            best = max(truth, key=lambda t: p.box.iou(t[1]), default=None)
            if best is not None and p.box.iou(best[1]) >= 0.5:
                located += 1
                right += class_names.index(p.defect_class) == best[0]
    tp_all = np.concatenate(tps) if tps else np.zeros((0, len(IOU_THRESHOLDS) + 1), bool)
    result = ap_per_class(tp_all, np.asarray(confs), np.asarray(classes), np.asarray(targets))
    ap, present = result[5][:, : len(IOU_THRESHOLDS)], result[6]
    ap33 = result[5][:, len(IOU_THRESHOLDS) :]
    ap50 = {int(k): float(ap[i, 0]) for i, k in enumerate(present)}
    per_class = [
        ClassScore(
            name=name,
            ap50=ap50.get(k, 0.0),
            precision=float(tp_op[k] / pred_op[k]) if pred_op[k] else 0.0,
            recall=float(tp_op[k] / gt[k]) if gt[k] else 1.0,
        )
        for k, name in enumerate(class_names)
    ]
    return DetectionScore(
        map50=float(ap[:, 0].mean()) if len(ap) else 0.0,
        map50_95=float(ap.mean()) if len(ap) else 0.0,
        map33=float(ap33[:, 0].mean()) if len(ap33) else 0.0,
        per_class=per_class,
        miss_rate=missed / with_defect if with_defect else 0.0,
        class_accuracy=right / located if located else 0.0,
        located=located,
    )


def evaluate_verifier(
    locator,
    verifier,
    src: Path | str,
    split: str = "val",
    conf_eval: float = 0.001,
    conf_operating: float = 0.25,
    max_boards: int | None = None,
    progress: bool = True,
) -> VerifierEvaluation:
    """Both scores over the same detections: the locator at `conf_eval` (as ultralytics' mAP), the verifier on
    every box of every board."""
    from vision.datasets.deeppcb import parse_annotation, reference_input, template_pairs
    from vision.verifier.model import expand_alternatives, verified_score

    names = locator.class_names
    pairs = template_pairs(src, split, max_boards)
    raw, verified, multi = [], [], []
    for pair in tqdm(pairs, desc=f"verifier eval ({split})", unit="board", disable=not progress):
        composite = reference_input(pair.test, pair.template)
        truth = parse_annotation(pair.annotation.read_text(encoding="utf-8"), str(pair.annotation))
        dets = locator.predict([composite], conf=conf_eval)[0]
        raw.append((dets, truth))
        checked = verifier.verify(composite, dets, candidates=True)
        verified.append(([d.model_copy(update={"confidence": verified_score(d)}) for d in checked], truth))
        multi.append((expand_alternatives(checked), truth))
    return VerifierEvaluation(
        split=split,
        boards=len(pairs),
        locator=str(getattr(locator, "version", "?")),
        verifier=verifier.version,
        conf_operating=conf_operating,
        detector=score_detections(raw, names, conf_operating),
        verified=score_detections(verified, names, conf_operating),
        verified_multilabel=score_detections(multi, names, conf_operating),
    )
