"""The ONNX engine's numpy letterbox / NMS / box scaling (vision.locator.yolo_numpy) against ultralytics' own functions
on the same inputs: equal images, equal kept boxes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ultralytics.data.augment import LetterBox
from ultralytics.utils import nms as ul_nms
from ultralytics.utils import ops
from ultralytics.utils.checks import check_imgsz

from vision.locator.yolo_numpy import letterbox, non_max_suppression, scale_boxes, square_size


@pytest.mark.parametrize("shape", [(480, 640, 3), (640, 640, 3), (333, 517, 3), (700, 300, 3), (50, 1200, 3)])
@pytest.mark.parametrize("auto", [True, False])
@pytest.mark.parametrize("imgsz", [640, 320, 600])
def test_letterbox_equals_ultralytics(shape, auto, imgsz):
    rng = np.random.default_rng(sum(shape) + imgsz)
    image = rng.integers(0, 255, shape, dtype=np.uint8)
    size = check_imgsz(imgsz, stride=32, min_dim=2)
    assert size == [square_size(imgsz, 32)] * 2
    expected = LetterBox(size, auto=auto, stride=32)(image=image)
    got = letterbox(image, square_size(imgsz, 32), 32, auto)
    assert got.shape == expected.shape
    assert np.array_equal(got, expected)


def _raw(rng: np.random.Generator, anchors: int, classes: int, images: int = 2) -> np.ndarray:
    """Detector-like output: boxes clustered around a few centres (so NMS has work), sparse class scores."""
    centres = rng.uniform(50, 590, (images, 6, 2))
    pick = rng.integers(0, 6, (images, anchors))
    xy = np.take_along_axis(centres, pick[..., None], axis=1) + rng.normal(0, 6, (images, anchors, 2))
    wh = rng.uniform(8, 90, (images, anchors, 2))
    scores = rng.uniform(0, 1, (images, anchors, classes)) ** 6
    return np.concatenate([xy, wh, scores], axis=2).transpose(0, 2, 1).astype(np.float32)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("conf,iou", [(0.25, 0.5), (0.05, 0.7), (0.001, 0.5)])
def test_nms_keeps_what_ultralytics_keeps(seed, conf, iou):
    rng = np.random.default_rng(seed)
    raw = _raw(rng, anchors=2100, classes=6)
    expected = ul_nms.non_max_suppression(torch.from_numpy(raw), conf, iou, None, False, max_det=300, nc=0)
    got = non_max_suppression(raw, conf, iou, max_det=300)
    assert sum(len(g) for g in got) > 0
    for g, e in zip(got, expected):
        e = e.numpy()
        assert g.shape == e.shape
        # same boxes in the same order (descending confidence), same classes
        np.testing.assert_allclose(g[:, :5], e[:, :5], rtol=0, atol=1e-4)
        assert np.array_equal(g[:, 5], e[:, 5])


def test_nms_with_nothing_above_conf_returns_empty_rows():
    raw = np.zeros((1, 10, 50), dtype=np.float32)
    (got,) = non_max_suppression(raw, 0.25, 0.5)
    assert got.shape == (0, 6)


@pytest.mark.parametrize(
    "image_hw,input_hw", [((480, 640), (480, 640)), ((333, 517), (416, 640)), ((700, 300), (640, 640))]
)
def test_scale_boxes_equals_ultralytics(image_hw, input_hw):
    rng = np.random.default_rng(input_hw[0])
    xy = rng.uniform(-20, 600, (40, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(1, 120, (40, 2))], axis=1).astype(np.float32)
    expected = np.asarray(ops.scale_boxes(input_hw, torch.from_numpy(boxes.copy()), image_hw), dtype=float)
    got = scale_boxes(input_hw, boxes, image_hw)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)
