"""ultralytics' detector pre- and post-processing (letterbox, class-offset NMS, box scaling) in numpy and OpenCV, for
the ONNX engine: importing ultralytics pulls in torch and torchvision (with torch._dynamo), about 2.5 s of a line
PC's 4 s cold start, for three functions that need neither.

Each function follows ultralytics 8.4's own step by step (`LetterBox`, `utils.nms.non_max_suppression` with one
label per box, `utils.ops.scale_boxes`); tests/test_yolo_numpy.py holds them equal to it on random predictions and
real images, so an upgrade that changes ultralytics' rules shows there."""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

PAD_VALUE = 114  # ultralytics' grey letterbox border
MAX_WH = 7680  # class offset of the per-class NMS: boxes of different classes never overlap
MAX_NMS = 30000  # candidates kept (by confidence) before NMS


def square_size(imgsz: int, stride: int) -> int:
    """ultralytics' `check_imgsz` for one int: rounded up to a multiple of the stride."""
    return math.ceil(imgsz / stride) * stride


def letterbox(image: np.ndarray, size: int, stride: int, auto: bool) -> np.ndarray:
    """Resize keeping the aspect ratio to fit `size` x `size`, then pad with grey: to the square (`auto` False) or to
    the smallest multiple of `stride` (`auto` True), the padding split evenly around the image."""
    h, w = image.shape[:2]
    r = min(size / h, size / w)
    new_w, new_h = max(round(w * r), 1), max(round(h * r), 1)
    dw, dh = size - new_w, size - new_h
    if auto:
        dw, dh = dw % stride, dh % stride
    dw, dh = dw / 2, dh / 2
    top, bottom = round(dh - 0.1), round(dh + 0.1)
    left, right = round(dw - 0.1), round(dw + 0.1)
    if (w, h) != (new_w, new_h):
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[2] == 3:
        return cv2.copyMakeBorder(image, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(PAD_VALUE,) * 3)
    out = np.full((new_h + top + bottom, new_w + left + right, image.shape[2]), PAD_VALUE, dtype=image.dtype)
    out[top : top + new_h, left : left + new_w] = image
    return out


def to_input(images: Sequence[np.ndarray], imgsz: int, stride: int) -> np.ndarray:
    """BGR uint8 images -> the detector's float32 (n, 3, H, W) RGB batch in [0, 1], letterboxed the way ultralytics'
    predictor does it (`rect`): same-shaped images to the smallest stride multiple, mixed shapes to the square."""
    size = square_size(imgsz, stride)
    auto = len({im.shape for im in images}) == 1
    batch = np.stack([letterbox(im, size, stride, auto) for im in images])
    return np.ascontiguousarray(batch[..., ::-1].transpose(0, 3, 1, 2), dtype=np.float32) / 255.0


def _xywh2xyxy(xywh: np.ndarray) -> np.ndarray:
    out = np.empty_like(xywh)
    half = xywh[:, 2:4] / 2
    out[:, :2] = xywh[:, :2] - half
    out[:, 2:] = xywh[:, :2] + half
    return out


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression, by descending score; a box goes when its IoU with a kept one
    exceeds `iou` (torchvision.ops.nms's rule)."""
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1) * (y2 - y1)
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        w = np.clip(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0, None)
        h = np.clip(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0, None)
        inter = w * h
        order = rest[inter / (areas[i] + areas[rest] - inter) <= iou]
    return np.asarray(keep, dtype=np.int64)


def non_max_suppression(raw: np.ndarray, conf: float, iou: float, max_det: int = 300) -> list[np.ndarray]:
    """The detector's raw output (n, 4 + classes, anchors) -> per image (k, 6) rows of xyxy, confidence, class id in
    the letterboxed input's pixels: best class per anchor above `conf`, NMS per class, at most `max_det`."""
    out = []
    for pred in raw:
        x = pred.T  # (anchors, 4 + classes)
        scores = x[:, 4:]
        best = scores.max(axis=1)
        x = x[best > conf]
        if not len(x):
            out.append(np.zeros((0, 6), dtype=np.float32))
            continue
        cls = x[:, 4:].argmax(axis=1)
        score = x[np.arange(len(x)), 4 + cls]
        rows = np.concatenate([_xywh2xyxy(x[:, :4]), score[:, None], cls[:, None].astype(np.float32)], axis=1)
        if len(rows) > MAX_NMS:
            rows = rows[np.argsort(-rows[:, 4], kind="stable")[:MAX_NMS]]
        offset = rows[:, 5:6] * MAX_WH
        keep = nms(rows[:, :4] + offset, rows[:, 4], iou)[:max_det]
        out.append(rows[keep])
    return out


def scale_boxes(input_hw: tuple[int, int], boxes: np.ndarray, image_hw: tuple[int, int]) -> np.ndarray:
    """xyxy boxes in the letterboxed input's pixels -> the original image's pixels, clipped to it."""
    gain = min(input_hw[0] / image_hw[0], input_hw[1] / image_hw[1])
    new_h, new_w = (max(round(x * gain), 1) for x in image_hw[:2])
    gain_y, gain_x = new_h / image_hw[0], new_w / image_hw[1]
    pad_x, pad_y = round((input_hw[1] - new_w) / 2 - 0.1), round((input_hw[0] - new_h) / 2 - 0.1)
    out = boxes[:, :4].astype(np.float32)  # ultralytics scales the float32 rows NMS returns
    out[:, [0, 2]] = ((out[:, [0, 2]] - pad_x) / gain_x).clip(0, image_hw[1])
    out[:, [1, 3]] = ((out[:, [1, 3]] - pad_y) / gain_y).clip(0, image_hw[0])
    return out.astype(float)
