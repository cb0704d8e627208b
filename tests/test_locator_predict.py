"""The shipped battery_tab locator on freshly generated images (seeds never used in training, which used seed 1):
tab and weld boxes tight enough for the offset measurement, planted defects found, nothing on a clean tab."""

from __future__ import annotations

import numpy as np
import pytest

from defect_agent.paths import resolve

SHIPPED = resolve("models/locator/battery_tab.pt")
pytestmark = pytest.mark.skipif(not SHIPPED.is_file(), reason="models/locator/battery_tab.pt not trained yet")


@pytest.fixture(scope="module")
def locator():
    from defect_agent.config import load_line
    from vision.locator.model import Locator

    return Locator.from_line(load_line("battery_tab"))


def _best(dets, name):
    hits = [d for d in dets if d.defect_class == name]
    return max(hits, key=lambda d: d.confidence) if hits else None


def _case(seed: int, **force):
    from vision.datasets.synth.battery_tab import BatteryTabParams, generate_battery_tab

    base = dict(force_spatter=False, force_crack=False, force_burn=False, force_missing_weld=False)
    base.update(force)
    return generate_battery_tab(seed, BatteryTabParams(**base))


@pytest.mark.parametrize("seed", [90001, 90002])
def test_tab_and_weld_boxes_match_the_truth(locator, seed):
    img, truth = _case(seed, force_spatter=True)
    dets = locator.predict([img])[0]
    for part in ("tab", "weld"):
        found = _best(dets, part)
        assert found is not None, f"no {part} found"
        true_box = truth.boxes(part)[0]
        assert found.box.iou(true_box) > 0.8
        # the weld-offset measurement uses box centres: 0.2 mm tolerance is 8 px at 0.025 mm/px
        (fx, fy), (tx, ty) = found.box.center, true_box.center
        assert np.hypot(fx - tx, fy - ty) < 4.0
    spatter = [d for d in dets if d.defect_class == "spatter"]
    assert spatter, "planted spatter not found"
    assert any(d.box.iou(t) > 0.5 for d in spatter for t in truth.boxes("spatter"))


def test_each_planted_defect_class_is_found(locator):
    images, truths = zip(
        *(_case(90010 + i, **{f"force_{name}": True}) for i, name in enumerate(("spatter", "crack", "burn")))
    )
    results = locator.predict(list(images))
    for name, dets, truth in zip(("spatter", "crack", "burn"), results, truths):
        hits = [d for d in dets if d.defect_class == name]
        assert any(d.box.iou(t) > 0.5 for d in hits for t in truth.boxes(name)), f"{name} missed"


def test_clean_tab_has_no_defect_and_a_missing_weld_has_no_weld(locator):
    clean, _ = _case(90020)
    no_weld, truth = _case(90021, force_missing_weld=True)
    assert truth.missing_weld
    dets_clean, dets_missing = locator.predict([clean, no_weld])
    assert {d.defect_class for d in dets_clean} == {"tab", "weld"}
    assert "weld" not in {d.defect_class for d in dets_missing}
    assert "tab" in {d.defect_class for d in dets_missing}


def test_boxes_are_in_original_pixels_for_any_input_size(locator):
    import cv2

    img, truth = _case(90030)
    small = cv2.resize(img, (320, 240), interpolation=cv2.INTER_AREA)
    tab = _best(locator.predict([small])[0], "tab")
    assert tab is not None
    t = truth.boxes("tab")[0]
    half = type(t)(x1=t.x1 / 2, y1=t.y1 / 2, x2=t.x2 / 2, y2=t.y2 / 2)
    assert tab.box.iou(half) > 0.8
