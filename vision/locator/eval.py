"""Measure a locator on a labelled YOLO split: ultralytics' validator for mAP50 / mAP50-95 / per-class AP, and our
own pass at the operating confidence for per-class precision / recall, box accuracy and the image-level miss rate
(an image with a real defect where the locator reports no defect at all)."""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from pydantic import BaseModel
from tqdm import tqdm

from defect_agent.config import LineConfig
from defect_agent.errors import ConfigError, EmptyInput, ImageReadError
from vision.datasets.yolo import IMAGE_SUFFIXES, check_data_yaml, split_sources
from vision.detection import Box, Detection
from vision.locator.model import Locator

log = logging.getLogger(__name__)

MATCH_IOU = 0.5  # a prediction counts as a hit when it overlaps a same-class truth box this much (the mAP50 rule)


class ClassMetrics(BaseModel):
    """The locator's figures for one class of a split: AP, precision / recall at the operating confidence, box fit."""

    name: str
    role: str  # 'defect' or 'part'
    instances: int  # truth boxes in the split
    images: int  # images holding at least one
    ap50: float | None  # None when the split holds no box of this class
    ap50_95: float | None
    precision: float  # at the operating confidence, IoU >= MATCH_IOU
    recall: float
    mean_iou: float | None  # of matched boxes: how tight the boxes are (the weld-offset measure depends on it)
    mean_center_error_px: float | None


class LocatorMetrics(BaseModel):
    """A locator's evaluation on one split of a YOLO dataset: mAP, per-class figures and image-level defect rates."""

    locator_version: str
    data_yaml: str
    split: str
    imgsz: int
    conf_operating: float
    match_iou: float = MATCH_IOU
    n_images: int
    n_instances: int
    map50: float
    map50_95: float
    # the same validator with square, unpadded input (rect=False): the geometry the agent's predictor feeds the model.
    # ultralytics' default (rect batches padded by half a stride-32 cell) moved the pcb adapter's mAP50 by 1.3 points
    # (0.953 vs 0.966 at 640 px), so a comparison between models states which one it uses. None: not measured.
    map50_square: float | None = None
    map50_95_square: float | None = None
    per_class: list[ClassMetrics]
    defect_classes: list[str]
    images_with_defects: int
    missed_images: int
    miss_rate: float  # images with a real defect but no predicted defect (any defect class) at conf_operating
    images_without_defects: int
    false_alarm_images: int
    false_alarm_rate: float  # defect-free images where some defect was predicted at conf_operating
    missed_examples: list[str]  # first few missed image names, for a look
    seconds: float

    def write_json(self, path: Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.model_dump_json(indent=2), encoding="utf-8")
        return path


class _Truth(BaseModel):
    image: Path
    boxes: list[Detection]


def split_images(data_yaml: Path, split: str) -> list[Path]:
    data = check_data_yaml(data_yaml)
    images: list[Path] = []
    for src in split_sources(data, Path(data_yaml), split):
        if src.is_dir():
            images += sorted(p for p in src.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        elif src.is_file() and src.suffix == ".txt":
            base = Path(data.get("path") or Path(data_yaml).parent)
            for line in src.read_text().splitlines():
                if line.strip():
                    p = Path(line.strip())
                    images.append(p if p.is_absolute() else (base / p))
        else:
            raise EmptyInput(f"{data_yaml}: {split} images not found at {src}")
    if not images:
        raise EmptyInput(f"{data_yaml}: the {split} split has no images")
    return images


def _label_path(image: Path) -> Path:
    parts = list(image.parts)
    # ultralytics' rule: the last 'images' folder becomes 'labels'
    idx = len(parts) - 1 - parts[::-1].index("images") if "images" in parts else None
    if idx is None:
        return image.with_suffix(".txt")
    parts[idx] = "labels"
    return Path(*parts).with_suffix(".txt")


def read_truth(image: Path, names: Sequence[str], shape: tuple[int, int]) -> list[Detection]:
    """YOLO label lines `cls cx cy w h` (normalised) as pixel boxes."""
    h, w = shape
    label = _label_path(image)
    if not label.is_file():
        return []  # ultralytics' convention: no label file = background image
    out = []
    for line in label.read_text().splitlines():
        fields = line.split()
        if len(fields) < 5:
            continue
        k = int(float(fields[0]))
        cx, cy, bw, bh = (float(v) for v in fields[1:5])
        x1, y1 = max(0.0, (cx - bw / 2) * w), max(0.0, (cy - bh / 2) * h)
        x2, y2 = min(float(w), (cx + bw / 2) * w), min(float(h), (cy + bh / 2) * h)
        out.append(
            Detection(
                defect_class=names[k], class_id=k, box=Box(x1=x1, y1=y1, x2=max(x1, x2), y2=max(y1, y2)), confidence=1.0
            )
        )
    return out


def match_class(
    preds: list[Detection], truth: list[Detection], iou: float = MATCH_IOU
) -> list[tuple[Detection, Detection]]:
    """Greedy one-to-one matching by confidence (the VOC / COCO rule) of one class's boxes in one image."""
    used: set[int] = set()
    pairs = []
    for p in sorted(preds, key=lambda d: -d.confidence):
        best, best_iou = None, iou
        for j, t in enumerate(truth):
            if j in used:
                continue
            v = p.box.iou(t.box)
            if v >= best_iou:
                best, best_iou = j, v
        if best is not None:
            used.add(best)
            pairs.append((p, truth[best]))
    return pairs


def _ultralytics_val(
    locator: Locator, data_yaml: Path, split: str, imgsz: int, device: str, batch: int, rect: bool = True
):
    from defect_agent.paths import data_dir

    project = Path(tempfile.mkdtemp(prefix="val-", dir=_ensure(data_dir() / "runs" / "locator-eval")))
    return locator.model.val(
        data=str(data_yaml),
        split=split,
        imgsz=imgsz,
        batch=batch,
        device=device,
        plots=False,
        verbose=False,
        save_json=False,
        project=str(project),
        name="val",
        exist_ok=True,
        workers=0,
        rect=rect,
    )


def _ensure(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def evaluate_locator(
    weights_or_locator: str | Path | Locator,
    data_yaml: str | Path,
    split: str = "val",
    conf_operating: float | None = None,
    imgsz: int | None = None,
    line: LineConfig | None = None,
    device: str = "cpu",
    batch: int = 16,
    json_out: Path | None = None,
    square: bool = False,
) -> LocatorMetrics:
    """mAP from ultralytics' validator, operating-point figures from the locator's own predictions.

    `square`: also run the validator on square, unpadded input (`map50_square`, `map50_95_square`).

    `conf_operating` defaults to the line's (else the locator's) confidence; classes with role 'part' in `line`
    (tab, weld) do not count as defects for the miss / false-alarm rates."""
    started = time.perf_counter()
    data_yaml = Path(data_yaml).resolve()
    data = check_data_yaml(data_yaml)
    names_cfg = data["names"]
    data_names = [str(names_cfg[i]) for i in sorted(names_cfg)] if isinstance(names_cfg, dict) else list(names_cfg)

    if isinstance(weights_or_locator, Locator):
        locator = weights_or_locator
    else:
        locator = Locator.from_weights(
            weights_or_locator,
            line.class_names if line else None,
            imgsz=imgsz or (line.detector.imgsz if line else 640),
            device=device,
        )
    if locator.class_names != data_names:
        raise ConfigError(f"{data_yaml} names {data_names} differ from the locator's {locator.class_names}")
    imgsz = imgsz or locator.imgsz
    conf = conf_operating if conf_operating is not None else (line.detector.conf if line else locator.conf)
    parts = {c.name for c in line.classes if c.role == "part"} if line else set()
    defect_names = [n for n in data_names if n not in parts]

    res = _ultralytics_val(locator, data_yaml, split, imgsz, device, batch)
    box = res.box
    square_box = _ultralytics_val(locator, data_yaml, split, imgsz, device, batch, rect=False).box if square else None
    ap50_by_id = {int(k): float(box.all_ap[i, 0]) for i, k in enumerate(box.ap_class_index)}
    ap_by_id = {int(k): float(box.all_ap[i].mean()) for i, k in enumerate(box.ap_class_index)}

    images = split_images(data_yaml, split)
    tp = np.zeros(len(data_names), int)
    n_pred = np.zeros(len(data_names), int)
    n_gt = np.zeros(len(data_names), int)
    n_img = np.zeros(len(data_names), int)
    ious: list[list[float]] = [[] for _ in data_names]
    centre_err: list[list[float]] = [[] for _ in data_names]
    with_defects = missed = without_defects = false_alarms = 0
    missed_examples: list[str] = []
    step = 16
    for start in tqdm(range(0, len(images), step), desc="locator eval", unit="batch", leave=False):
        paths = images[start : start + step]
        arrays = []
        for image_path in paths:
            img = cv2.imread(str(image_path), cv2.IMREAD_COLOR)
            if img is None:
                raise ImageReadError(f"cannot read {image_path}")
            arrays.append(img)
        preds_all = locator.predict(arrays, conf=conf)
        for path, img, preds in zip(paths, arrays, preds_all):
            truth = read_truth(path, data_names, img.shape[:2])
            for k in range(len(data_names)):
                t_k = [t for t in truth if t.class_id == k]
                p_k = [p for p in preds if p.class_id == k]
                n_gt[k] += len(t_k)
                n_pred[k] += len(p_k)
                n_img[k] += bool(t_k)
                for p, t in match_class(p_k, t_k):
                    tp[k] += 1
                    ious[k].append(p.box.iou(t.box))
                    (px, py), (tx, ty) = p.box.center, t.box.center
                    centre_err[k].append(float(np.hypot(px - tx, py - ty)))
            has_defect = any(t.defect_class not in parts for t in truth)
            predicted_defect = any(p.defect_class not in parts for p in preds)
            if has_defect:
                with_defects += 1
                if not predicted_defect:
                    missed += 1
                    if len(missed_examples) < 20:
                        missed_examples.append(path.name)
            else:
                without_defects += 1
                false_alarms += predicted_defect

    per_class = [
        ClassMetrics(
            name=name,
            role="part" if name in parts else "defect",
            instances=int(n_gt[k]),
            images=int(n_img[k]),
            ap50=ap50_by_id.get(k),
            ap50_95=ap_by_id.get(k),
            precision=float(tp[k] / n_pred[k]) if n_pred[k] else (1.0 if n_gt[k] == 0 else 0.0),
            recall=float(tp[k] / n_gt[k]) if n_gt[k] else 1.0,
            mean_iou=float(np.mean(ious[k])) if ious[k] else None,
            mean_center_error_px=float(np.mean(centre_err[k])) if centre_err[k] else None,
        )
        for k, name in enumerate(data_names)
    ]
    metrics = LocatorMetrics(
        locator_version=locator.version,
        data_yaml=str(data_yaml),
        split=split,
        imgsz=imgsz,
        conf_operating=conf,
        n_images=len(images),
        n_instances=int(n_gt.sum()),
        map50=float(box.map50),
        map50_95=float(box.map),
        map50_square=float(square_box.map50) if square_box is not None else None,
        map50_95_square=float(square_box.map) if square_box is not None else None,
        per_class=per_class,
        defect_classes=defect_names,
        images_with_defects=with_defects,
        missed_images=missed,
        miss_rate=missed / with_defects if with_defects else 0.0,
        images_without_defects=without_defects,
        false_alarm_images=int(false_alarms),
        false_alarm_rate=false_alarms / without_defects if without_defects else 0.0,
        missed_examples=missed_examples,
        seconds=round(time.perf_counter() - started, 2),
    )
    if json_out is not None:
        metrics.write_json(json_out)
    return metrics
