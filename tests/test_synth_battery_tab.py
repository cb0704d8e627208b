"""The battery_tab generator: deterministic from a seed, truth consistent with the picture, query ground truth."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vision.datasets.synth import BatteryTabParams, BatteryTabTruth, generate_batch, generate_battery_tab, read_truth


def test_same_seed_gives_same_image_and_truth():
    a_img, a_truth = generate_battery_tab(123)
    b_img, b_truth = generate_battery_tab(123)
    assert np.array_equal(a_img, b_img)
    assert a_truth == b_truth


def test_distinct_seeds_differ():
    a_img, a_truth = generate_battery_tab(1)
    b_img, b_truth = generate_battery_tab(2)
    assert a_img.shape == b_img.shape == (480, 640, 3) and a_img.dtype == np.uint8
    assert np.abs(a_img.astype(int) - b_img.astype(int)).mean() > 5
    assert a_truth.tab_center_px != b_truth.tab_center_px


@pytest.mark.parametrize("seed", range(8))
def test_boxes_inside_image_and_weld_on_tab(seed):
    img, truth = generate_battery_tab(seed)
    h, w = img.shape[:2]
    for obj in truth.objects:
        b = obj.box
        assert 0 <= b.x1 < b.x2 <= w and 0 <= b.y1 < b.y2 <= h, obj
    (tab,) = truth.boxes("tab")
    welds = truth.boxes("weld")
    assert len(welds) == (0 if truth.missing_weld else 1)
    for weld in welds:
        cx, cy = weld.center
        assert tab.x1 < cx < tab.x2 and tab.y1 < cy < tab.y2
        # the box centre is the weld centre exactly (a rotated rectangle's bounding box is centred on it)
        assert math.dist(weld.center, truth.weld_center_px) < 1e-6
        assert truth.offset_mm == pytest.approx(math.dist(weld.center, tab.center) * truth.mm_per_px, abs=1e-6)
    tw, th = truth.tab_size_px
    assert 0.97 * tw * th < truth.objects[0].area_px < tw * th  # rounded corners take a little off
    for obj in truth.objects:
        assert obj.area_px is not None and 0 < obj.area_px <= obj.box.area + 1e-6


def test_weld_is_darker_and_textured_than_bare_tab():
    img, truth = generate_battery_tab(
        5,
        BatteryTabParams(
            force_offset_mm=0.0, force_missing_weld=False, force_spatter=False, force_crack=False, force_burn=False
        ),
    )
    gray = img.mean(axis=2)
    (weld,) = truth.boxes("weld")
    (tab,) = truth.boxes("tab")
    wx, wy = map(int, weld.center)
    inner = gray[wy - 20 : wy + 20, wx - 40 : wx + 40]
    bare = gray[int(tab.y1) + 20 : int(tab.y1) + 40, wx - 40 : wx + 40]  # tab band above the weld
    assert inner.mean() < bare.mean() - 20
    assert inner.std() > 2 * bare.std()


def test_planted_defects_are_drawn_where_the_truth_says():
    clean_p = dict(force_offset_mm=0.1, force_missing_weld=False, force_crack=False, force_burn=False)
    clean, _ = generate_battery_tab(9, BatteryTabParams(force_spatter=False, **clean_p))
    dirty, truth = generate_battery_tab(9, BatteryTabParams(force_spatter=True, **clean_p))
    diff = np.abs(clean.astype(int) - dirty.astype(int)).max(axis=2) > 40
    boxes = truth.boxes("spatter")
    assert boxes
    inside = np.zeros_like(diff)
    for b in boxes:
        inside[int(b.y1) : int(math.ceil(b.y2)), int(b.x1) : int(math.ceil(b.x2))] = True
    assert diff[inside].sum() > 10
    assert diff[~inside].sum() == 0  # the beads change nothing outside their boxes


def test_missing_weld_has_no_offset():
    _, truth = generate_battery_tab(3, BatteryTabParams(force_missing_weld=True))
    assert truth.missing_weld and truth.offset_mm is None and not truth.boxes("weld")
    assert truth.has("missing_weld") and not truth.matches(0.3)


def test_forced_offset_is_exact():
    _, truth = generate_battery_tab(4, BatteryTabParams(force_offset_mm=0.5, force_missing_weld=False))
    assert truth.offset_mm == pytest.approx(0.5, abs=1e-9)


def test_query_ground_truth_helpers():
    base = dict(
        seed=0, width=640, height=480, mm_per_px=0.025, tab_center_px=(0, 0), tab_size_px=(1, 1), tab_angle_deg=0.0
    )
    spatter = [{"name": "spatter", "box": {"x1": 0, "y1": 0, "x2": 5, "y2": 5}}]
    t = BatteryTabTruth(offset_mm=0.45, objects=spatter, **base)
    assert t.seed_query_match and t.matches(0.3, {"spatter"}) and not t.matches(0.5, {"spatter"})
    assert not t.matches(None, {"crack"}) and t.has("weld_offset") and not t.has("weld_offset", tolerance_mm=0.5)
    assert not BatteryTabTruth(offset_mm=0.3, objects=spatter, **base).seed_query_match  # strictly above
    assert not BatteryTabTruth(offset_mm=0.9, **base).seed_query_match


def test_mix_of_cases_over_a_batch(tmp_path):
    paths = generate_batch(tmp_path, 40, seed=11, progress=False)
    truths = read_truth(tmp_path / "truth.jsonl")
    assert len(paths) == len(truths) == 40 and all(p.is_file() for p in paths)
    assert [t.image for t in truths] == [p.name for p in paths]
    offset = [t.offset_mm for t in truths if t.offset_mm is not None]
    share_above = sum(o > 0.3 for o in offset) / len(offset)
    assert 0.25 < share_above < 0.65
    assert any(0.25 <= o <= 0.4 for o in offset)  # some cases lie close to the decision threshold
    assert 0.2 < sum(t.has("spatter") for t in truths) / 40 < 0.6
    assert any(t.seed_query_match for t in truths) and not all(t.seed_query_match for t in truths)
