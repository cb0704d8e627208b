"""The class verifier of template lines (vision.verifier.model): its input, its training on boxes, relabelling and
merging detections, its file round trip and errors, and the fusion feature it feeds."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from agent.fusion import FusionWeights, fit_fusion
from defect_agent.errors import ConfigError
from vision.detection import Box, Detection
from vision.reference import reference_composite
from vision.verifier.eval import score_detections
from vision.verifier.model import DefectVerifier, VerifierMeta, crop_box, verifier_channels
from vision.verifier.train import VerifierSample, train_verifier

CLASSES = ["pin_hole", "copper"]


def _board(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, list[tuple[int, Box]]]:
    """A template with copper pads, and its test image with a hole punched in one pad (pin_hole) and a stray blob
    on bare board (copper)."""
    template = np.zeros((256, 256), np.uint8)
    cv2.rectangle(template, (20, 20), (110, 110), 255, -1)
    cv2.rectangle(template, (150, 150), (236, 236), 255, -1)
    test = template.copy()
    hx, hy = (int(v) for v in rng.integers(45, 85, 2))
    r = int(rng.integers(4, 8))
    cv2.circle(test, (hx, hy), r, 0, -1)
    bx, by = int(rng.integers(150, 230)), int(rng.integers(30, 100))
    cv2.circle(test, (bx, by), r, 255, -1)
    truth = [(0, Box(x1=hx - r, y1=hy - r, x2=hx + r, y2=hy + r)), (1, Box(x1=bx - r, y1=by - r, x2=bx + r, y2=by + r))]
    return test, template, truth


def _data(n: int, seed: int):
    rng = np.random.default_rng(seed)
    channels, samples, composites = [], [], []
    for i in range(n):
        test, template, truth = _board(rng)
        composite = reference_composite(test, template)
        composites.append((composite, truth))
        channels.append(verifier_channels(composite))
        samples.extend(VerifierSample(image=i, box=b, label=c) for c, b in truth)
        samples.append(VerifierSample(image=i, box=Box(x1=160, y1=160, x2=176, y2=176), label=len(CLASSES)))
    return channels, samples, composites


@pytest.fixture(scope="module")
def trained():
    channels, samples, _ = _data(24, 0)
    val = _data(8, 1)
    verifier = train_verifier(channels, samples, CLASSES, epochs=12, batch=16, lr=3e-3, val=val[:2], progress=False)
    return verifier, val


def test_signed_channel_tells_missing_from_extra_copper():
    rng = np.random.default_rng(3)
    test, template, truth = _board(rng)
    ch = verifier_channels(reference_composite(test, template))
    (_, hole), (_, blob) = truth
    hx, hy = (int(v) for v in hole.center)
    bx, by = (int(v) for v in blob.center)
    assert ch[hy, hx, 2] < 100 and ch[by, bx, 2] > 156 and ch[5, 5, 2] == 128
    np.testing.assert_array_equal(ch[:, :, 0], test)


def test_crop_at_the_border_is_padded_as_bare_board_without_difference():
    ch = verifier_channels(reference_composite(np.full((100, 100), 255, np.uint8), np.full((100, 100), 255, np.uint8)))
    meta = VerifierMeta(classes=CLASSES)
    crop = crop_box(ch, Box(x1=0, y1=0, x2=10, y2=10), meta)
    assert crop.shape == (meta.crop, meta.crop, 3)
    assert crop[0, 0, 0] == 0 and crop[0, 0, 2] == 128 and crop[-1, -1, 0] == 255


def test_verifier_learns_the_class_from_the_template(trained):
    verifier, _ = trained
    assert verifier.meta.val_accuracy is not None and verifier.meta.val_accuracy >= 0.9


def test_verify_relabels_wrong_classes_and_merges_what_becomes_one_box(trained):
    verifier, (_, _, composites) = trained
    composite, truth = composites[0]
    (_, hole), (_, blob) = truth
    dets = [
        Detection(defect_class="copper", class_id=1, box=hole, confidence=0.6),  # wrong class
        Detection(defect_class="pin_hole", class_id=0, box=hole, confidence=0.3),  # its duplicate
        Detection(defect_class="copper", class_id=1, box=blob, confidence=0.8),
    ]
    out = verifier.verify(composite, dets)
    assert [(d.defect_class, d.confidence) for d in out] == [("copper", 0.8), ("pin_hole", 0.6)]
    assert out[1].detector_class == "copper" and out[0].detector_class is None
    assert all(d.verifier_score is not None and d.verifier_score > 0.5 for d in out)


def test_relabel_needs_the_configured_probability(trained):
    verifier, (_, _, composites) = trained
    composite, truth = composites[0]
    strict = DefectVerifier(verifier.model, verifier.meta, relabel_min=1.01)
    det = Detection(defect_class="copper", class_id=1, box=truth[0][1], confidence=0.6)
    (kept,) = strict.verify(composite, [det])
    assert kept.defect_class == "copper" and kept.verifier_score < 0.5


def test_file_round_trip_gives_the_same_probabilities(trained, tmp_path):
    verifier, (_, _, composites) = trained
    composite, truth = composites[1]
    path = verifier.save(tmp_path / "v.safetensors")
    loaded = DefectVerifier.from_file(path)
    boxes = [b for _, b in truth]
    np.testing.assert_allclose(
        loaded.probabilities(composite, boxes), verifier.probabilities(composite, boxes), atol=1e-6
    )
    assert loaded.version.startswith("v.safetensors@") and loaded.meta.classes == CLASSES


def test_missing_or_corrupt_verifier_file_names_the_file(trained, tmp_path):
    with pytest.raises(ConfigError, match="nope.safetensors"):
        DefectVerifier.from_file(tmp_path / "nope.safetensors")
    path = trained[0].save(tmp_path / "bad.safetensors")
    path.write_bytes(b"not a safetensors file")
    with pytest.raises(ConfigError, match="bad.safetensors"):
        DefectVerifier.from_file(path)


def test_fusion_files_without_a_verifier_weight_ignore_the_score():
    old = FusionWeights.model_validate_json('{"bias": 0.1, "detector": 2.0, "texture": 0.1, "cases": 0.0}')
    assert old.verifier == 0.0
    assert old.fuse(0.7, 0.5, None, 0.01) == pytest.approx(old.fuse(0.7, 0.5, None, 0.99))


def test_fusion_learns_to_trust_an_informative_verifier():
    rng = np.random.default_rng(0)
    labels = [int(v) for v in rng.integers(0, 2, 400)]
    conf = [float(rng.uniform(0.3, 0.9)) for _ in labels]  # uninformative detector
    ver = [float(np.clip(rng.normal(0.8 if y else 0.2, 0.1), 0.01, 0.99)) for y in labels]
    w = fit_fusion(conf, [None] * 400, [None] * 400, labels, verifier=ver)
    assert w.verifier > 1.0
    assert w.fuse(0.6, None, None, 0.9) > 0.8 > 0.2 > w.fuse(0.6, None, None, 0.1)


def test_detection_scores_count_right_and_wrong_classes():
    names = ["open", "short"]
    truth = [(0, Box(x1=0, y1=0, x2=10, y2=10)), (1, Box(x1=20, y1=20, x2=30, y2=30))]
    right = [
        Detection(defect_class="open", box=truth[0][1], confidence=0.9),
        Detection(defect_class="short", box=truth[1][1], confidence=0.8),
    ]
    wrong = [
        Detection(defect_class="short", box=truth[0][1], confidence=0.9),
        Detection(defect_class="open", box=truth[1][1], confidence=0.8),
    ]
    good = score_detections([(right, truth)], names, 0.25)
    bad = score_detections([(wrong, truth)], names, 0.25)
    assert good.map50 == pytest.approx(1.0, abs=0.01) and good.class_accuracy == 1.0 and good.located == 2
    assert bad.map50 == pytest.approx(0.0, abs=0.01) and bad.class_accuracy == 0.0
    assert bad.miss_rate == 0.0 and score_detections([([], truth)], names, 0.25).miss_rate == 1.0
    # IoU 0.4 (a box a few pixels wide of the annotation): wrong at 0.5, right under DeepPCB's IoU > 0.33
    loose = [
        Detection(defect_class="open", box=Box(x1=0, y1=0, x2=10, y2=4), confidence=0.9),
        Detection(defect_class="short", box=truth[1][1], confidence=0.8),
    ]
    scored = score_detections([(loose, truth)], names, 0.25)
    assert scored.map33 == pytest.approx(1.0, abs=0.01) and scored.map50 == pytest.approx(0.5, abs=0.01)


def test_a_part_inside_a_whole_of_the_same_class_counts_once():
    from vision.verifier.model import _merge_same_class

    whole = Box(x1=300, y1=460, x2=420, y2=494)
    part = Box(x1=370, y1=461, x2=421, y2=492)  # IoU 0.40: NMS keeps both
    assert whole.iou(part) < 0.5
    dets = [
        Detection(defect_class="short", box=part, confidence=0.99),
        Detection(defect_class="short", box=whole, confidence=0.95),
        Detection(defect_class="open", box=whole, confidence=0.9),
    ]  # another class: untouched
    merged = _merge_same_class(dets, iou=0.5)
    assert [(d.defect_class, d.box, d.confidence) for d in merged] == [("short", whole, 0.99), ("open", whole, 0.9)]
    faint = [
        Detection(defect_class="short", box=part, confidence=0.99),
        Detection(defect_class="short", box=Box(x1=200, y1=400, x2=500, y2=560), confidence=0.05),
    ]
    (kept,) = _merge_same_class(faint, iou=0.5)
    assert kept.box == part  # a faint large box does not stretch a confident one


def test_train_and_eval_verifier_on_deeppcb(shared_datasets, tmp_path):
    """The CLI trains on real boards and the benchmark scores a real locator with and without the verifier."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    from typer.testing import CliRunner

    from agent.cli import app

    out = tmp_path / "v.safetensors"
    result = CliRunner().invoke(
        app,
        [
            "train",
            "verifier",
            "--line",
            "pcb",
            "--src",
            str(shared_datasets / "deeppcb"),
            "--epochs",
            "1",
            "--max-boards",
            "4",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert DefectVerifier.from_file(out).meta.classes == ["open", "short", "mousebite", "spur", "copper", "pin_hole"]
    root = Path(__file__).resolve().parents[1]
    bench = tmp_path / "verifier.json"
    subprocess.run(
        [
            sys.executable,
            str(root / "benchmarks" / "bench_verifier.py"),
            "--max-boards",
            "3",
            "--src",
            str(shared_datasets / "deeppcb"),
            "--out",
            str(bench),
        ],
        check=True,
        cwd=root,
        capture_output=True,
        timeout=600,
    )
    (record,) = json.loads(bench.read_text())["records"]
    assert record["boards"] == 3 and 0.0 <= record["verified"]["map50"] <= 1.0
    assert record["verified"]["located"] > 0 and "| shipped |" in bench.with_suffix(".md").read_text()


def test_a_verifier_for_other_classes_or_with_broken_metadata_is_refused(trained, tmp_path):
    from defect_agent.config import load_line

    path = trained[0].save(tmp_path / "two_classes.safetensors")
    pcb = load_line("pcb")
    line = pcb.model_copy(update={"locator": pcb.locator.model_copy(update={"verifier": str(path)})})
    with pytest.raises(ConfigError, match="two_classes.safetensors.*train verifier --line pcb"):
        DefectVerifier.for_line(line)
    path.with_suffix(".json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ConfigError, match="two_classes.json"):
        DefectVerifier.from_file(path)


def test_the_shipped_pcb_verifier_loads_for_its_line():
    from defect_agent.config import load_line

    verifier = DefectVerifier.for_line(load_line("pcb"))
    assert verifier.meta.classes == load_line("pcb").class_names and verifier.version.startswith("pcb_verifier")


@pytest.mark.parametrize("k", range(8))
def test_box_offsets_follow_the_crop_through_every_rotation_and_flip(k):
    """The box head is trained on rotated / flipped crops: its targets must move as the pixels do."""
    import torch

    from vision.verifier.model import _dihedral, dihedral_deltas, undo_dihedral_deltas

    size, c = 33, 16  # odd: the centre is a pixel
    x = torch.zeros(1, 1, size, size)
    dx, dy = 5, -3
    x[0, 0, c + dy, c + dx] = 1.0
    row, col = divmod(int(torch.argmax(_dihedral(x, k))), size)
    d = torch.tensor([[float(dx), float(dy), 0.1, -0.2]])
    moved = dihedral_deltas(d, k)
    assert (moved[0, 0].item(), moved[0, 1].item()) == (col - c, row - c)
    sides = (0.1, -0.2) if k % 2 == 0 else (-0.2, 0.1)  # a quarter turn swaps width and height
    assert (moved[0, 2].item(), moved[0, 3].item()) == pytest.approx(sides)
    torch.testing.assert_close(undo_dihedral_deltas(moved, k), d)


def test_box_offsets_round_trip_through_their_encoding():
    from vision.verifier.model import decode_box, encode_box

    meta = VerifierMeta(classes=CLASSES)
    source, target = Box(x1=100, y1=100, x2=140, y2=130), Box(x1=104, y1=97, x2=150, y2=128)
    back = decode_box(source, encode_box(source, target, meta), meta)
    assert back.as_list() == pytest.approx(target.as_list(), abs=1e-3)
    assert decode_box(source, [0, 0, 0, 0], meta) == source


def test_the_box_head_moves_jittered_boxes_towards_the_annotation(trained):
    verifier, (_, _, composites) = trained
    meta = verifier.meta
    assert meta.box_regression and meta.val_box_iou > meta.val_box_iou_before
    composite, truth = composites[2]
    hole = truth[0][1]
    off = Box(x1=hole.x1 + 3, y1=hole.y1 - 2, x2=hole.x2 + 3, y2=hole.y2 - 2)
    (refined,) = verifier.read(composite, [off]).boxes
    assert refined.iou(hole) > off.iou(hole)


def test_a_file_without_a_box_head_leaves_boxes_alone(tmp_path):
    channels, samples, composites = _data(4, 5)
    plain = train_verifier(channels, samples, CLASSES, epochs=1, batch=8, box_regression=False, progress=False)
    loaded = DefectVerifier.from_file(plain.save(tmp_path / "plain.safetensors"))
    composite, truth = composites[0]
    boxes = [b for _, b in truth]
    reading = loaded.read(composite, boxes)
    assert not loaded.meta.box_regression and reading.boxes == boxes
    assert reading.probabilities.shape == (2, len(CLASSES) + 1)


def test_tta_averages_eight_views_into_one_distribution(trained):
    verifier, (_, _, composites) = trained
    composite, truth = composites[3]
    boxes = [b for _, b in truth]
    tta = DefectVerifier(verifier.model, verifier.meta, tta=True)
    probs = tta.probabilities(composite, boxes)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    assert [CLASSES[i] for i in probs[:, :2].argmax(1)] == ["pin_hole", "copper"]
    assert not np.allclose(probs, verifier.probabilities(composite, boxes))


def test_alternatives_become_extra_labels_ranked_below_the_primary():
    from vision.verifier.model import expand_alternatives, verified_score

    box = Box(x1=0, y1=0, x2=10, y2=10)
    det = Detection(
        defect_class="pin_hole", box=box, confidence=0.81, verifier_score=0.64, alternatives={"mousebite": 0.25}
    )
    assert verified_score(det) == pytest.approx(0.72)
    assert verified_score(det.model_copy(update={"verifier_score": None})) == 0.81
    primary, extra = expand_alternatives([det])
    assert (primary.defect_class, primary.confidence) == ("pin_hole", pytest.approx(0.72))
    assert (extra.defect_class, extra.confidence, extra.alternatives) == ("mousebite", pytest.approx(0.45), {})


def test_verify_keeps_the_other_likely_classes_as_alternatives(trained):
    verifier, (_, _, composites) = trained
    composite, truth = composites[0]
    hole = truth[0][1]
    det = Detection(defect_class="pin_hole", class_id=0, box=hole, confidence=0.6)
    loose = DefectVerifier(verifier.model, verifier.meta, alternative_min=0.0)
    (out,) = loose.verify(composite, [det])
    assert set(out.alternatives) == {"copper"} and out.alternatives["copper"] < out.verifier_score
    (strict,) = DefectVerifier(verifier.model, verifier.meta, alternative_min=1.0).verify(composite, [det])
    assert strict.alternatives == {}


def test_locator_proposals_become_positives_negatives_or_nothing():
    from vision.verifier.data import BACKGROUND_LABEL, proposal_samples

    truth = [(3, Box(x1=100, y1=100, x2=140, y2=140))]
    dets = [
        Detection(defect_class="spur", box=Box(x1=102, y1=98, x2=142, y2=138), confidence=0.9),  # on it
        Detection(defect_class="open", box=Box(x1=300, y1=300, x2=330, y2=330), confidence=0.2),  # nowhere
        Detection(defect_class="open", box=Box(x1=110, y1=110, x2=150, y2=150), confidence=0.3),
    ]  # halfway
    on, off = proposal_samples(7, dets, truth, BACKGROUND_LABEL)
    assert (on.image, on.label, on.box, on.target) == (7, 3, dets[0].box, truth[0][1])
    assert (off.label, off.target) == (BACKGROUND_LABEL, None)


def test_nms_protocol_benchmark_scores_single_and_multi_label(shared_datasets, tmp_path):
    """The four NMS protocols, each scored on the same real boards."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "nms.json"
    subprocess.run(
        [
            sys.executable,
            str(root / "benchmarks" / "bench_nms_protocol.py"),
            "--max-boards",
            "3",
            "--src",
            str(shared_datasets / "deeppcb"),
            "--out",
            str(out),
        ],
        check=True,
        cwd=root,
        capture_output=True,
        timeout=600,
    )
    records = {(r["multi_label"], r["nms_iou"]): r for r in json.loads(out.read_text())["records"]}
    assert set(records) == {(False, 0.5), (False, 0.7), (True, 0.5), (True, 0.7)}
    assert all(0.0 < r["map50"] <= 1.0 and 0.0 < r["map50_95"] <= r["map50"] for r in records.values())


def test_demote_keeps_the_part_a_merge_drops_as_a_low_candidate():
    from vision.verifier.model import _merge_same_class

    whole = Box(x1=300, y1=460, x2=420, y2=494)
    part = Box(x1=370, y1=461, x2=421, y2=492)
    dets = [
        Detection(defect_class="short", box=part, confidence=0.99),
        Detection(defect_class="short", box=whole, confidence=0.95),
    ]
    kept, candidate = _merge_same_class(dets, iou=0.5, demote=0.1)
    assert (kept.box, kept.confidence) == (whole, 0.99)  # the whole, counted once at the part's confidence
    assert candidate.box == part and candidate.confidence == pytest.approx(0.095)  # the part, far below
    assert candidate.ranked_only and not kept.ranked_only
    inner = Box(x1=310, y1=465, x2=350, y2=490)  # inside the whole, too faint to stretch anything
    kept, candidate = _merge_same_class(
        [dets[1], Detection(defect_class="short", box=inner, confidence=0.5)], iou=0.5, demote=0.1
    )
    assert (kept.box, candidate.box, candidate.confidence) == (whole, inner, pytest.approx(0.05))
    assert len(_merge_same_class(dets, iou=0.5)) == 1  # without demote the part is gone
    far = Detection(defect_class="short", box=Box(x1=0, y1=0, x2=20, y2=20), confidence=0.3)
    assert len(_merge_same_class([*dets, far], iou=0.5, demote=0.1)) == 3  # plain NMS-free boxes untouched


def test_overlapping_pieces_of_one_defect_region_merge_into_their_union():
    from vision.verifier.model import _merge_same_class

    pieces = [Box(x1=608, y1=4, x2=637, y2=40), Box(x1=603, y1=31, x2=639, y2=80), Box(x1=560, y1=1, x2=618, y2=50)]
    dets = [
        Detection(defect_class="pin_hole", box=b, confidence=c, verifier_score=v)
        for b, c, v in zip(pieces, [0.7, 0.61, 0.46], [0.87, 0.9, 0.67])
    ]
    apart = Detection(
        defect_class="pin_hole", box=Box(x1=100, y1=100, x2=120, y2=120), confidence=0.9, verifier_score=0.9
    )
    assert len(_merge_same_class([apart, *dets], iou=0.5)) == 4  # without union_min: NMS keeps every piece
    alone, whole = _merge_same_class([apart, *dets], iou=0.5, union_min=0.25)
    assert alone.box == apart.box
    assert whole.box.as_list() == [560, 1, 639, 80] and whole.confidence == 0.7
    faint = dets[2].model_copy(update={"verifier_score": 0.05})  # sqrt(0.46 * 0.05) < 0.25: not one region
    assert len(_merge_same_class([dets[0], faint], iou=0.5, union_min=0.25)) == 2


def test_partial_boxes_are_pieces_along_the_longer_side():
    from vision.verifier.train import partial_box, shown_box

    rng = np.random.default_rng(0)
    wide, tall = Box(x1=100, y1=200, x2=200, y2=220), Box(x1=50, y1=0, x2=70, y2=120)
    for _ in range(50):
        piece = partial_box(wide, rng)
        assert 0.4 * 100 * 0.9 <= piece.width <= 0.8 * 100 * 1.11 and 20 * 0.9 <= piece.height <= 20 * 1.11
        assert wide.intersection(piece) / piece.area > 0.8  # a piece of the defect, not beside it
        upright = partial_box(tall, rng)
        assert upright.height < 0.8 * 120 * 1.11 and upright.width > 0.9 * 20
    defect = VerifierSample(image=0, box=wide, label=1)
    background = VerifierSample(image=0, box=wide, label=6)
    assert all(shown_box(defect, rng, 6, 1.0).width < 0.9 * 100 for _ in range(20))
    assert any(shown_box(background, rng, 6, 1.0).width > 0.9 * 100 for _ in range(20))  # only defects are cut
