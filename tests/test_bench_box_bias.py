"""The box-bias benchmark's matching and sign convention (no model here)."""

from __future__ import annotations

import numpy as np
import pytest

from vision.detection import Box


@pytest.fixture(scope="module")
def bench(load_benchmark):
    return load_benchmark("bench_box_bias")


def _boxes(*corners: tuple[float, float, float, float]) -> list[Box]:
    return [Box(x1=a, y1=b, x2=c, y2=d) for a, b, c, d in corners]


def test_oversized_boxes_give_negative_left_top_and_positive_right_bottom_errors(bench):
    truths = _boxes((10.0, 10.0, 20.0, 20.0), (100.0, 100.0, 110.0, 130.0))
    preds = _boxes((99.0, 98.0, 111.0, 131.0), (9.0, 9.0, 21.0, 21.0), (300.0, 300.0, 310.0, 310.0))
    errors, ious = bench.edge_errors(preds, truths)
    np.testing.assert_allclose(errors[0], [-1, -1, 1, 1])  # each truth takes its best-overlapping box
    np.testing.assert_allclose(errors[1], [-1, -2, 1, 1])
    assert ious[0] == pytest.approx(100 / 144)


def test_truths_without_an_overlapping_box_are_left_out(bench):
    errors, ious = bench.edge_errors(_boxes((0.0, 0.0, 4.0, 4.0)), _boxes((3.0, 3.0, 13.0, 13.0)))
    assert errors == [] and ious == []
    assert bench.edge_errors([], _boxes((0.0, 0.0, 1.0, 1.0))) == ([], [])
