"""Template lines (pcb): the locator sees the (test, template, |difference|) composite; templates given with their
boards are not inspected; a board without its template is refused with a message that says what is missing."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from agent.pipeline import Inspector
from defect_agent.config import LineConfig, ReferenceConfig, load_app_config, load_line
from defect_agent.errors import ImageReadError
from vision.reference import drop_references, find_reference, reference_composite


def _board(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.zeros((640, 640), np.uint8)
    for _ in range(12):
        x, y = (int(v) for v in rng.integers(0, 600, 2))
        cv2.rectangle(img, (x, y), (x + 30, y + 4), 255, -1)
    return img


def _bare(line) -> Inspector:
    from agent.fusion import FusionWeights

    return Inspector(load_app_config(), line, locator=None, fusion=FusionWeights())


def test_drop_templates_keeps_boards_and_lone_templates():
    paths = ["b/01_test.jpg", "b/01_temp.jpg", "b/02_test.jpg", "c/03_temp.jpg", "b/x.jpg"]
    assert drop_references(paths, load_line("pcb").reference) == [
        "b/01_test.jpg",
        "b/02_test.jpg",
        "c/03_temp.jpg",
        "b/x.jpg",
    ]


def test_reference_rules_a_folder_and_a_fixed_golden_image(tmp_path):
    """A line's references are its own rule: the same name in a `golden/` folder, or one golden image for all."""
    (tmp_path / "golden").mkdir()
    cv2.imwrite(str(tmp_path / "p1.png"), _board(3))
    cv2.imwrite(str(tmp_path / "golden" / "p1.png"), _board(3))
    folder_rule = ReferenceConfig(folder="golden")
    assert find_reference(tmp_path / "p1.png", folder_rule) == tmp_path / "golden" / "p1.png"
    assert find_reference(tmp_path / "p2.png", folder_rule) is None
    fixed = ReferenceConfig(image=str(tmp_path / "golden" / "p1.png"))
    assert find_reference(tmp_path / "anything.png", fixed) == tmp_path / "golden" / "p1.png"
    paths = [str(tmp_path / "p1.png"), str(tmp_path / "golden" / "p1.png")]
    assert drop_references(paths, fixed) == [str(tmp_path / "p1.png")]
    assert drop_references(paths, folder_rule) == [str(tmp_path / "p1.png")]
    with pytest.raises(ValueError, match="named group"):
        ReferenceConfig(pattern="^(.+)_test$")


def test_template_locator_without_a_reference_rule_is_a_config_error():
    data = load_line("pcb").model_dump()
    data["reference"] = None
    with pytest.raises(ValueError, match="reference"):
        LineConfig.model_validate(data)


def test_locator_input_is_the_template_composite(tmp_path):
    template = _board(0)
    test = template.copy()
    cv2.circle(test, (320, 320), 6, 255, -1)  # a spurious-copper blob only on the board
    cv2.imwrite(str(tmp_path / "7_test.png"), test)
    cv2.imwrite(str(tmp_path / "7_temp.png"), template)
    inspector = _bare(load_line("pcb"))
    image = cv2.imread(str(tmp_path / "7_test.png"), cv2.IMREAD_COLOR)
    composite = inspector.locator_input(str(tmp_path / "7_test.png"), image)
    assert composite.shape == (640, 640, 3)
    np.testing.assert_array_equal(composite, reference_composite(test, template))
    diff = composite[:, :, 2]
    assert diff[320, 320] == 255 and diff[:200, :200].max() == 0  # the difference shows the blob, nothing else


def test_board_without_template_is_refused_with_the_expected_name(tmp_path):
    cv2.imwrite(str(tmp_path / "9_test.png"), _board(1))
    inspector = _bare(load_line("pcb"))
    with pytest.raises(ImageReadError, match="_temp"):
        inspector.locator_input(str(tmp_path / "9_test.png"), cv2.imread(str(tmp_path / "9_test.png")))


def test_lines_without_reference_pass_the_image_through():
    inspector = _bare(load_line("battery_tab"))
    image = np.zeros((480, 640, 3), np.uint8)
    assert inspector.locator_input("any.png", image) is image


@pytest.mark.shared_data
def test_the_verifier_rereads_boxes_down_to_the_proposal_confidence(shared_datasets):
    """With a verifier the detector hands over its weaker boxes too (locator.proposal_conf); without one set, the
    operating confidence is the floor."""
    from agent.images import read_image
    from vision.datasets.deeppcb import scan_deeppcb, split_of

    line = load_line("pcb")
    assert line.locator.proposal_conf is not None and line.locator.proposal_conf < line.locator.conf
    inspector = Inspector.from_config(line="pcb", use_kb=False)
    strict = Inspector.from_config(line="pcb", use_kb=False)
    strict.line = line.model_copy(update={"locator": line.locator.model_copy(update={"proposal_conf": None})})
    pairs = [p for p in scan_deeppcb(shared_datasets / "deeppcb") if split_of(p.group) == "val"][:40]
    weak = 0
    for pair in pairs:
        if weak >= 2:  # enough: the stronger the detector, the more boards it takes to meet a weak box
            break
        image = read_image(pair.test, line.image_size)
        composite = inspector.locator_input(str(pair.test), image)
        loose, tight = inspector.locate(composite), strict.locate(composite)
        assert all(d.confidence >= line.locator.conf for d in tight)
        assert all(d.confidence >= line.locator.proposal_conf and d.verifier_score is not None for d in loose)
        weak += sum(d.confidence < line.locator.conf for d in loose)
    assert weak >= 2  # real boards give the verifier boxes the operating threshold would have dropped


def test_the_detector_runs_at_the_proposal_confidence_only_behind_a_verifier():
    pcb = load_line("pcb").locator
    assert pcb.verifies and pcb.detector_conf == pcb.proposal_conf
    assert pcb.model_copy(update={"proposal_conf": None}).detector_conf == pcb.conf
    assert not pcb.model_copy(update={"reference": "none"}).verifies
    assert pcb.model_copy(update={"reference": "none"}).detector_conf == pcb.conf
    battery = load_line("battery_tab").locator
    assert not battery.verifies and battery.detector_conf == battery.conf
