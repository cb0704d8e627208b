"""YOLO dataset writer: layout, valid normalised labels, class ids in the line's order, truth kept beside."""

from __future__ import annotations

import pytest
import yaml

from defect_agent.config import load_line
from vision.datasets.synth import read_truth
from vision.datasets.synth.dataset import write_yolo_dataset
from vision.datasets.yolo import parse_label_line, write_data_yaml, yolo_label_line
from vision.detection import Box


def test_label_line_round_trip_and_clipping():
    line = yolo_label_line(2, Box(x1=10, y1=20, x2=50, y2=60), 640, 480)
    assert line == "2 0.046875 0.083333 0.062500 0.083333"
    cid, box = parse_label_line(line, 640, 480)
    assert cid == 2 and box.x1 == pytest.approx(10, abs=1e-3) and box.y2 == pytest.approx(60, abs=1e-3)
    clipped = yolo_label_line(0, Box(x1=-10, y1=-5, x2=20, y2=10), 640, 480).split()
    assert float(clipped[1]) == pytest.approx(10 / 640) and float(clipped[3]) == pytest.approx(20 / 640)
    with pytest.raises(ValueError):
        yolo_label_line(0, Box(x1=700, y1=0, x2=710, y2=10), 640, 480)


def test_data_yaml_names_in_order(tmp_path):
    path = write_data_yaml(tmp_path, ["a", "b"])
    data = yaml.safe_load(path.read_text())
    assert data["names"] == {0: "a", 1: "b"} and data["nc"] == 2 and data["path"] == str(tmp_path.resolve())


def test_battery_tab_dataset(tmp_path):
    data_yaml = write_yolo_dataset(tmp_path, n_train=12, n_val=4, seed=3)
    data = yaml.safe_load(data_yaml.read_text())
    names = load_line("battery_tab").class_names
    assert list(data["names"].values()) == names == ["tab", "weld", "spatter", "crack", "burn"]
    seen = set()
    for split, n in (("train", 12), ("val", 4)):
        images = sorted((tmp_path / "images" / split).glob("*.png"))
        labels = sorted((tmp_path / "labels" / split).glob("*.txt"))
        assert len(images) == len(labels) == n
        assert [p.stem for p in images] == [p.stem for p in labels]
        truths = read_truth(tmp_path / f"truth_{split}.jsonl")
        assert len(truths) == n
        for lbl, truth in zip(labels, truths):
            rows = [r.split() for r in lbl.read_text().splitlines() if r.strip()]
            assert len(rows) == len(truth.objects)
            for row, obj in zip(rows, truth.objects):
                assert int(row[0]) == names.index(obj.name)
                cx, cy, w, h = map(float, row[1:])
                assert 0 < w <= 1 and 0 < h <= 1
                assert 0 <= cx - w / 2 + 1e-6 and cx + w / 2 <= 1 + 1e-6
                assert 0 <= cy - h / 2 + 1e-6 and cy + h / 2 <= 1 + 1e-6
                seen.add(obj.name)
            assert sum(r[0] == "0" for r in rows) == 1  # exactly one tab per image
    assert {"tab", "weld", "spatter"} <= seen
    train_seeds = {t.seed for t in read_truth(tmp_path / "truth_train.jsonl")}
    assert not train_seeds & {t.seed for t in read_truth(tmp_path / "truth_val.jsonl")}


def test_a_line_model_trains_only_on_its_own_classes_in_order(tmp_path):
    from defect_agent.errors import ConfigError
    from vision.datasets.yolo import require_line_classes

    path = write_data_yaml(tmp_path, ["open", "short"])
    require_line_classes(path, "pcb", ["open", "short"])
    listed = tmp_path / "listed.yaml"
    listed.write_text(yaml.safe_dump({"names": ["open", "short"]}))
    require_line_classes(listed, "pcb", ["open", "short"])
    with pytest.raises(ConfigError, match=r"differ from the line 'pcb'.*same order"):
        require_line_classes(path, "pcb", ["short", "open"])
    with pytest.raises(ConfigError, match="not found"):
        require_line_classes(tmp_path / "missing.yaml", "pcb", ["open"])
