"""vision.measure on generated battery_tab images: the refined weld offset against exact truth, derived defects,
defect sizes, and a line without derived defects."""

from __future__ import annotations

import math

import numpy as np
import pytest

from defect_agent.config import LineConfig, load_line
from vision.datasets.synth import BatteryTabParams, generate_battery_tab, image_seed
from vision.detection import Box, Detection
from vision.measure import fit_part_edges, measure_findings, measure_offset, to_gray

LINE = load_line("battery_tab")
MM = LINE.calibration.mm_per_px


def _dets(truth, jitter: float = 0.0, rng: np.random.Generator | None = None) -> list[Detection]:
    ids = {n: i for i, n in enumerate(LINE.class_names)}
    out = []
    for obj in truth.objects:
        b = obj.box
        if jitter:
            d = rng.uniform(-jitter, jitter, size=4)
            b = Box(x1=b.x1 + d[0], y1=b.y1 + d[1], x2=b.x2 + d[2], y2=b.y2 + d[3])
        out.append(Detection(defect_class=obj.name, class_id=ids[obj.name], box=b, confidence=0.9))
    return out


@pytest.fixture(scope="module")
def samples():
    params = BatteryTabParams(force_missing_weld=False)
    return [generate_battery_tab(image_seed(77, i), params) for i in range(24)]


def test_offset_from_truth_boxes_is_accurate(samples):
    errors = []
    for img, truth in samples:
        m = measure_offset(img, truth.boxes("weld")[0], truth.boxes("tab")[0], MM)
        assert m.inner_refined and m.outer_refined
        errors.append(abs(m.offset_mm - truth.offset_mm))
    assert np.median(errors) <= 0.02 and max(errors) <= 0.05, errors


def test_offset_survives_detector_box_error(samples):
    rng = np.random.default_rng(0)
    errors, naive = [], []
    for img, truth in samples:
        dets = _dets(truth, jitter=3.0, rng=rng)
        (off,) = [m for m in measure_findings(img, dets, LINE) if m.defect_class == "weld_offset"]
        errors.append(abs(off.measurements["offset_mm"] - truth.offset_mm))
        boxes = {d.defect_class: d.box for d in dets}
        naive.append(abs(math.dist(boxes["weld"].center, boxes["tab"].center) * MM - truth.offset_mm))
    assert np.median(errors) <= 0.02 and np.percentile(errors, 95) <= 0.05, errors
    assert np.median(errors) < np.median(naive) / 3  # the refinement, not the boxes, carries the accuracy


@pytest.mark.parametrize("direction", [0.0, 135.0, 250.0])
def test_planted_offset_is_measured(direction):
    img, truth = generate_battery_tab(
        31,
        BatteryTabParams(
            force_offset_mm=0.5, force_offset_angle_deg=direction, force_missing_weld=False, force_spatter=True
        ),
    )
    found = measure_findings(img, _dets(truth, 3.0, np.random.default_rng(1)), LINE)
    (off,) = [m for m in found if m.defect_class == "weld_offset"]
    assert off.measurements["offset_mm"] == pytest.approx(0.5, abs=0.05)
    assert off.present and off.source == "derived"
    angle = math.degrees(math.atan2(off.measurements["offset_y_mm"], off.measurements["offset_x_mm"])) % 360
    assert min(abs(angle - direction), 360 - abs(angle - direction)) < 5


def test_planted_offset_under_a_diffuse_light():
    dome = BatteryTabParams(
        force_offset_mm=0.35,
        force_missing_weld=False,
        force_burn=True,
        knurl_directional=(0.1, 0.35),
        knurl_relief=45.0,
        supersample=3,
    )
    img, truth = generate_battery_tab(44, dome)
    (off,) = [
        m
        for m in measure_findings(img, _dets(truth, 3.0, np.random.default_rng(2)), LINE)
        if m.defect_class == "weld_offset"
    ]
    assert off.measurements["offset_mm"] == pytest.approx(0.35, abs=0.02)


def test_centred_weld_is_not_present_but_reported():
    img, truth = generate_battery_tab(8, BatteryTabParams(force_offset_mm=0.05, force_missing_weld=False))
    (off,) = [m for m in measure_findings(img, _dets(truth), LINE) if m.defect_class == "weld_offset"]
    assert off.measurements["offset_mm"] < LINE.derived[0].tolerance_mm and not off.present


def test_missing_weld_is_derived_and_parts_are_not_findings():
    img, truth = generate_battery_tab(12, BatteryTabParams(force_missing_weld=True, force_spatter=True))
    found = measure_findings(img, _dets(truth), LINE)
    names = [m.defect_class for m in found]
    assert "missing_weld" in names and "weld_offset" not in names
    assert "tab" not in names and "weld" not in names
    (miss,) = [m for m in found if m.defect_class == "missing_weld"]
    assert miss.box == truth.boxes("tab")[0] and miss.source == "derived"
    assert names.count("spatter") == len(truth.boxes("spatter"))


def test_weld_outside_the_tab_does_not_pair():
    img, truth = generate_battery_tab(12, BatteryTabParams(force_missing_weld=False))
    tab = truth.boxes("tab")[0]
    stray = Detection(defect_class="weld", box=Box(x1=0, y1=0, x2=20, y2=20), confidence=0.8)
    found = measure_findings(img, [Detection(defect_class="tab", box=tab, confidence=0.9), stray], LINE)
    assert [m.defect_class for m in found] == ["missing_weld"]


@pytest.mark.parametrize("name", ["burn", "crack"])
def test_defect_sizes_in_mm(name):
    img, truth = generate_battery_tab(
        21,
        BatteryTabParams(
            force_burn=name == "burn", force_crack=name == "crack", force_spatter=False, force_missing_weld=False
        ),
    )
    (m,) = [f.measurements for f in measure_findings(img, _dets(truth), LINE) if f.source == "detector"]
    box = truth.boxes(name)[0]
    assert m["length_mm"] == pytest.approx(max(box.width, box.height) * MM)
    assert m["width_mm"] == pytest.approx(min(box.width, box.height) * MM)
    assert m["area_mm2"] == pytest.approx(box.area * MM * MM)
    true_area = truth.objects[-1].area_px * MM * MM
    if name == "burn":  # a solid blob: segmented, its area is close to the rendered one
        assert m["blob_area_mm2"] == pytest.approx(true_area, rel=0.25)
    else:  # a thin line fills little of its box
        assert m.get("blob_area_mm2", 0.0) < 0.4 * m["area_mm2"]


def test_blank_image_falls_back_to_box_centres():
    img = np.full((480, 640, 3), 128, np.uint8)
    dets = [
        Detection(defect_class="tab", box=Box(x1=100, y1=100, x2=400, y2=380), confidence=0.9),
        Detection(defect_class="weld", box=Box(x1=200, y1=180, x2=380, y2=290), confidence=0.7),
    ]
    (off,) = measure_findings(img, dets, LINE)
    assert off.measurements["refined"] == 0.0 and off.confidence == 0.7
    assert off.measurements["offset_mm"] == pytest.approx(math.dist((290, 235), (250, 240)) * MM)


def test_tab_edges_give_angle_and_size():
    img, truth = generate_battery_tab(5, BatteryTabParams(force_missing_weld=False))
    fit = fit_part_edges(to_gray(img), truth.boxes("tab")[0])
    assert fit is not None and fit.inlier_fraction > 0.8
    assert fit.angle_deg == pytest.approx(truth.tab_angle_deg, abs=0.2)
    assert fit.size[0] == pytest.approx(truth.tab_size_px[0], abs=1.5)
    assert fit.size[1] == pytest.approx(truth.tab_size_px[1], abs=1.5)


def test_line_without_derived_defects_gets_sizes_only():
    line = LineConfig.model_validate(
        {
            "name": "pcb",
            "calibration": {"mm_per_px": 0.05},
            "locator": {"weights": "models/locator/pcb.pt"},
            "classes": [{"name": "open"}, {"name": "short"}],
        }
    )
    img = np.full((200, 200, 3), 90, np.uint8)
    img[50:60, 40:100] = 200
    found = measure_findings(
        img,
        [
            Detection(defect_class="open", box=Box(x1=35, y1=45, x2=105, y2=65), confidence=0.6),
            Detection(defect_class="tab", box=Box(x1=0, y1=0, x2=5, y2=5), confidence=0.9),
        ],
        line,
    )
    assert len(found) == 1  # the unknown class is dropped
    m = found[0].measurements
    assert m["length_mm"] == pytest.approx(3.5) and m["width_mm"] == pytest.approx(1.0)
    assert m["area_mm2"] == pytest.approx(70 * 20 * 0.05 * 0.05)
    assert m["blob_area_mm2"] == pytest.approx(600 * 0.05 * 0.05, rel=0.15)
