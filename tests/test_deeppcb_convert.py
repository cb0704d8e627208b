"""DeepPCB -> YOLO conversion: annotation parsing (both separators), group split, labels that round-trip, the
reference composite, subsets, the compact copy; and a check of the real dataset when ../shared is present."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from defect_agent.errors import ImageReadError
from vision.datasets.deeppcb import (
    DEEPPCB_CLASSES,
    binarize,
    convert_deeppcb,
    find_template,
    parse_annotation,
    reference_composite,
    reference_input,
    scan_deeppcb,
    subset_data_yaml,
    write_compact_source,
)
from vision.datasets.yolo import parse_label_line

SIZE = 96


def _board(rng: np.random.Generator) -> np.ndarray:
    img = np.zeros((SIZE, SIZE), np.uint8)
    for _ in range(6):  # copper traces
        x, y = rng.integers(0, SIZE - 20, 2)
        cv2.rectangle(img, (int(x), int(y)), (int(x) + 18, int(y) + 4), 255, -1)
    return img


def _make_tree(root: Path, groups: dict[str, int], comma_group: str | None = None) -> dict[str, list]:
    """A DeepPCB-shaped tree: groupG/G/<id>_test.jpg, <id>_temp.jpg, groupG/G_not/<id>.txt."""
    rng = np.random.default_rng(0)
    truth: dict[str, list] = {}
    for group, n in groups.items():
        g = group.removeprefix("group")
        img_dir, ann_dir = root / "PCBData" / group / g, root / "PCBData" / group / f"{g}_not"
        img_dir.mkdir(parents=True)
        ann_dir.mkdir(parents=True)
        for i in range(n):
            pid = f"{g}{i:03d}"
            temp = _board(rng)
            test = temp.copy()
            boxes = []
            for k in range(2):
                x1, y1 = (int(v) for v in rng.integers(5, SIZE - 30, 2))
                x2, y2 = x1 + 10 + 3 * k, y1 + 8
                cv2.rectangle(test, (x1, y1), (x2, y2), 255, -1)  # spurious copper on the test image only
                boxes.append((x1, y1, x2, y2, int(rng.integers(1, 7))))
            cv2.imwrite(str(img_dir / f"{pid}_test.jpg"), test)
            cv2.imwrite(str(img_dir / f"{pid}_temp.jpg"), temp)
            sep = "," if group == comma_group else " "
            (ann_dir / f"{pid}.txt").write_text("\n".join(sep.join(map(str, b)) for b in boxes) + "\n")
            truth[pid] = boxes
    return truth


def test_parse_annotation_accepts_spaces_and_commas():
    spaced = parse_annotation("466 441 493 470 3\n454 300 493 396 2\n\n")
    commas = parse_annotation("466,441,493,470,3\n454, 300, 493, 396, 2")
    assert spaced == commas
    assert [k for k, _ in spaced] == [2, 1]  # DeepPCB type 3 = mousebite = id 2, type 2 = short = id 1
    assert spaced[0][1].as_list() == [466.0, 441.0, 493.0, 470.0]
    assert DEEPPCB_CLASSES[spaced[0][0]] == "mousebite"


def test_parse_annotation_rejects_bad_lines():
    with pytest.raises(ValueError, match="outside 1..6"):
        parse_annotation("1 2 3 4 7")
    with pytest.raises(ValueError, match="x1 y1 x2 y2 type"):
        parse_annotation("1 2 3 4")


def test_convert_splits_by_group_and_labels_round_trip(tmp_path):
    truth = _make_tree(tmp_path / "src", {"group00001": 4, "group00002": 3}, comma_group="group00002")
    summary = convert_deeppcb(tmp_path / "src", tmp_path / "out", val_groups=("group00002",), progress=False)
    assert summary.images == {"train": 4, "val": 3, "val_negatives": 3}
    assert summary.groups == {"train": ["group00001"], "val": ["group00002"]}
    data = yaml.safe_load(summary.data_yaml.read_text())
    assert [data["names"][i] for i in range(6)] == DEEPPCB_CLASSES
    assert data["negatives"] == "images/val_negatives"  # defect-free templates of the validation boards
    negs = sorted(p.name for p in (tmp_path / "out" / "images" / "val_negatives").iterdir())
    assert negs == ["00002000_temp.jpg", "00002001_temp.jpg", "00002002_temp.jpg"]
    assert not (tmp_path / "out" / "labels" / "val_negatives").exists()
    split = json.loads(summary.split_json.read_text())
    assert sorted(split["ids"]["val"]) == ["00002000", "00002001", "00002002"]
    for pid, boxes in truth.items():
        split_name = "val" if pid.startswith("00002") else "train"
        lines = (tmp_path / "out" / "labels" / split_name / f"{pid}.txt").read_text().splitlines()
        got = [parse_label_line(line, SIZE, SIZE) for line in lines]
        assert [k for k, _ in got] == [b[4] - 1 for b in boxes]
        for (_, box), b in zip(got, boxes):
            assert box.as_list() == pytest.approx(list(map(float, b[:4])), abs=1e-3)
        # plain mode copies the test image byte for byte
        src = tmp_path / "src" / "PCBData" / f"group{pid[:5]}" / pid[:5] / f"{pid}_test.jpg"
        assert (tmp_path / "out" / "images" / split_name / f"{pid}.jpg").read_bytes() == src.read_bytes()


def test_reference_composite_channels(tmp_path):
    _make_tree(tmp_path / "src", {"group00001": 2, "group00002": 1})
    convert_deeppcb(tmp_path / "src", tmp_path / "ref", reference=True, val_groups=("group00002",), progress=False)
    pair = scan_deeppcb(tmp_path / "src")[0]
    comp = cv2.imread(str(tmp_path / "ref" / "images" / "train" / f"{pair.id}.png"), cv2.IMREAD_COLOR)
    test = cv2.imread(str(pair.test), cv2.IMREAD_GRAYSCALE)
    temp = binarize(cv2.imread(str(pair.template), cv2.IMREAD_GRAYSCALE))
    assert np.array_equal(comp[:, :, 0], test)
    assert np.array_equal(comp[:, :, 1], temp)
    assert np.array_equal(comp[:, :, 2], cv2.absdiff(test, temp))
    assert comp[:, :, 2].max() > 200  # the added copper shows up in the difference channel
    assert np.array_equal(reference_input(pair.test), comp)
    with pytest.raises(ImageReadError):
        reference_composite(test, temp[:10])


def test_find_template_and_missing_template(tmp_path):
    test = tmp_path / "00041000_test.jpg"
    cv2.imwrite(str(test), np.zeros((8, 8), np.uint8))
    assert find_template(test) is None
    with pytest.raises(ImageReadError, match="no template"):
        reference_input(test)
    cv2.imwrite(str(tmp_path / "00041000_temp.png"), np.zeros((8, 8), np.uint8))
    assert find_template(test) == tmp_path / "00041000_temp.png"
    assert find_template(tmp_path / "board.jpg") is None


def test_subset_is_seeded_and_nested(tmp_path):
    _make_tree(tmp_path / "src", {"group00001": 8, "group00002": 2})
    summary = convert_deeppcb(tmp_path / "src", tmp_path / "out", val_groups=("group00002",), progress=False)
    small = subset_data_yaml(summary.data_yaml, 3, seed=1)
    large = subset_data_yaml(summary.data_yaml, 6, seed=1)

    def read(p):
        data = yaml.safe_load(p.read_text())
        return (Path(data["path"]) / data["train"]).read_text().split()

    assert len(read(small)) == 3 and len(read(large)) == 6
    assert set(read(small)) <= set(read(large))
    assert yaml.safe_load(small.read_text())["val"] == "images/val"


def test_compact_copy_converts_to_the_same_dataset(tmp_path):
    _make_tree(tmp_path / "src", {"group00001": 2, "group00002": 1})
    write_compact_source(tmp_path / "src", tmp_path / "compact", progress=False)
    a = convert_deeppcb(tmp_path / "src", tmp_path / "a", reference=True, val_groups=("group00002",), progress=False)
    b = convert_deeppcb(
        tmp_path / "compact", tmp_path / "b", reference=True, val_groups=("group00002",), progress=False
    )
    assert a.boxes == b.boxes
    for img in (tmp_path / "a" / "images" / "train").iterdir():
        other = tmp_path / "b" / "images" / "train" / img.name
        assert np.array_equal(cv2.imread(str(img)), cv2.imread(str(other)))


@pytest.mark.shared_data
def test_real_deeppcb_layout_and_split(shared_datasets):
    src = shared_datasets / "deeppcb"
    if not src.is_dir():
        pytest.skip("../shared/datasets/deeppcb is absent")
    pairs = scan_deeppcb(src)
    assert len(pairs) == 1000
    assert all(p.template is not None for p in pairs)
    val = [p for p in pairs if p.group in ("group44000", "group50600", "group77000")]
    assert len(val) == 200  # the documented 20 % validation groups
    counts = np.zeros(6, int)
    for p in pairs:
        for k, box in parse_annotation(p.annotation.read_text(), str(p.annotation)):
            counts[k] += 1
            assert 0 <= box.x1 < box.x2 <= 640 and 0 <= box.y1 < box.y2 <= 640
    assert counts.min() > 900 and counts.sum() > 6000  # every class well represented
