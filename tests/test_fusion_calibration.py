"""Fusion calibration: detections matched to ground truth one-to-one, calibration figures that follow their
definitions, a fit that improves on the identity where the detector is over-confident, and the CLI on real images."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from agent.calibration import calibration_quality, fit_on, label_findings
from agent.verdict import DefectFinding
from vision.detection import Box


def _f(cls: str, x: float, conf: float, texture: float | None = None, source: str = "detector") -> DefectFinding:
    return DefectFinding(
        defect_class=cls,
        box=Box(x1=x, y1=0, x2=x + 10, y2=10),
        confidence=conf,
        probability=conf,
        texture_score=texture,
        source=source,
    )


def test_matching_is_one_to_one_by_class_and_overlap():
    truth = [("crack", Box(x1=0, y1=0, x2=10, y2=10))]
    found = [
        _f("crack", 1, 0.6),
        _f("crack", 0, 0.9),
        _f("burn", 0, 0.95),
        _f("crack", 50, 0.99),
        _f("weld_offset", 0, 0.99, source="derived"),
    ]
    labels = {(f.defect_class, f.box.x1): y for f, y in label_findings(found, truth)}
    # the most confident overlapping crack takes the box; the second one is a duplicate, i.e. a false detection
    assert labels == {("crack", 0): 1, ("crack", 1): 0, ("burn", 0): 0, ("crack", 50): 0}


def test_calibration_figures_follow_their_definitions():
    q = calibration_quality([1.0, 0.0, 0.5, 0.5], [1, 0, 1, 0])
    assert q.brier == pytest.approx((0 + 0 + 0.25 + 0.25) / 4)
    assert q.ece == pytest.approx(0.0)  # each bin's mean confidence equals its accuracy
    bad = calibration_quality([0.9] * 10, [1] * 5 + [0] * 5)
    assert bad.ece == pytest.approx(0.4)


def test_fit_uses_the_texture_score_when_it_separates_better():
    samples = []
    for i in range(60):
        real = i % 2 == 0
        # the detector says 0.8 for everything; the texture score tells real from false
        f = _f("crack", 0, 0.8, texture=0.9 if real else 0.1)
        truth = [("crack", Box(x1=0, y1=0, x2=10, y2=10))] if real else []
        samples.append(([f], truth))
    fit = fit_on(samples, fitted_on="test")
    assert fit.weights.texture > 0.5
    assert fit.after.log_loss < fit.before.log_loss and fit.after.ece < fit.before.ece
    assert fit.images == 60 and fit.after.positives == 30


def test_fit_measures_how_much_larger_the_boxes_are_than_the_annotations():
    samples = []
    for i in range(40):
        truth = [("crack", Box(x1=20, y1=20, x2=60, y2=50))]
        grown = DefectFinding(
            defect_class="crack", box=Box(x1=18, y1=18, x2=62, y2=52), confidence=0.9, probability=0.9
        )  # 4 px wider and taller
        samples.append(([grown, _f("crack", 200, 0.3)] if i % 2 else [grown], truth))
    assert fit_on(samples, fitted_on="test").weights.box_margin_px == pytest.approx(4.0)


def test_measurements_take_the_fitted_box_margin_off():
    import numpy as np

    from defect_agent.config import load_line
    from vision.detection import Detection
    from vision.measure import measure_findings

    line = load_line("pcb")
    det = Detection(defect_class="short", box=Box(x1=100, y1=100, x2=150, y2=120), confidence=0.9)
    image = np.zeros((640, 640, 3), np.uint8)
    (raw,) = measure_findings(image, [det], line)
    (fixed,) = measure_findings(image, [det], line, box_margin_px=4.0)
    mm = line.calibration.mm_per_px
    assert raw.measurements["length_mm"] == pytest.approx(50 * mm)
    assert fixed.measurements["length_mm"] == pytest.approx(46 * mm)
    assert fixed.measurements["area_mm2"] == pytest.approx(46 * 16 * mm * mm)


def test_calibrate_fusion_cli_on_generated_cells(tmp_path):
    from agent.cli import app

    result = CliRunner().invoke(
        app, ["calibrate", "--line", "battery_tab", "--fusion", "--n", "10", "--seed", "31", "--dry-run"]
    )
    assert result.exit_code == 0, result.output
    assert "detections" in result.output and "ECE" in result.output and "stored" not in result.output


def test_calibrate_needs_a_mode():
    from agent.cli import app

    result = CliRunner().invoke(app, ["calibrate", "--line", "battery_tab"])
    assert result.exit_code != 0 and "--fusion" in result.output
