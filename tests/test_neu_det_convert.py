"""NEU-DET -> YOLO conversion (VOC parsing, boxes rescaled from the recorded size to the JPEG actually read, a seeded
split stratified by class), the dataset merge behind the shared base detector, and the real dataset when ../shared
is present."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from vision.datasets.neu_det import NEU_CLASSES, class_of, convert_neu_det, parse_voc, stratified_split
from vision.datasets.yolo import merge_yolo_datasets, parse_label_line, write_data_yaml

XML = """<annotation><filename>{name}.jpg</filename><size><width>200</width><height>200</height><depth>1</depth>
</size>{objects}</annotation>"""
OBJ = (
    "<object><name>{cls}</name><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax>"
    "</bndbox></object>"
)


def _neu_tree(root: Path, per_class: int = 5, image_px: int = 416) -> dict[str, tuple[str, tuple[int, ...]]]:
    """IMAGES/<class>_<n>.jpg at `image_px` with ANNOTATIONS in 200 x 200 coordinates, like the shared copy."""
    (root / "IMAGES").mkdir(parents=True)
    (root / "ANNOTATIONS").mkdir(parents=True)
    truth = {}
    for k, cls in enumerate(NEU_CLASSES):
        for n in range(1, per_class + 1):
            stem = f"{cls}_{n}"
            box = (10 + n, 20 + k, 90 + n, 150 + k)
            cv2.imwrite(str(root / "IMAGES" / f"{stem}.jpg"), np.full((image_px, image_px, 3), 128, np.uint8))
            obj = OBJ.format(cls=cls, x1=box[0], y1=box[1], x2=box[2], y2=box[3])
            (root / "ANNOTATIONS" / f"{stem}.xml").write_text(XML.format(name=stem, objects=obj), encoding="utf-8")
            truth[stem] = (cls, box)
    return truth


def test_parse_voc_reads_size_and_boxes() -> None:
    ann = parse_voc(XML.format(name="scratches_3", objects=OBJ.format(cls="scratches", x1=1, y1=2, x2=30, y2=40)))
    assert (ann.width, ann.height) == (200, 200)
    assert [(o.name, o.box.as_list()) for o in ann.objects] == [("scratches", [1.0, 2.0, 30.0, 40.0])]


@pytest.mark.parametrize(
    "text, words",
    [
        ("<annotation><size>", "not valid XML"),
        ("<annotation><object><name>x</name></object></annotation>", "<size>"),
        (XML.format(name="a_1", objects="<object><name>crazing</name></object>"), "<bndbox>"),
        (XML.format(name="a_1", objects=OBJ.format(cls="crazing", x1="a", y1=1, x2=2, y2=3)), "numeric"),
    ],
)
def test_parse_voc_names_the_file_on_malformed_xml(text: str, words: str) -> None:
    with pytest.raises(ValueError, match=words) as err:
        parse_voc(text, "ANNOTATIONS/bad.xml")
    assert "ANNOTATIONS/bad.xml" in str(err.value)


def test_class_of_keeps_underscores_and_hyphens() -> None:
    assert class_of("rolled-in_scale_12") == "rolled-in_scale"
    assert class_of("pitted_surface_300") == "pitted_surface"
    with pytest.raises(ValueError, match="<class>_<number>"):
        class_of("crazing")


def test_stratified_split_is_seeded_and_per_class() -> None:
    stems = [f"{c}_{n}" for c in NEU_CLASSES for n in range(1, 11)]
    a, b, c = (
        stratified_split(stems, 0.2, seed=0),
        stratified_split(stems, 0.2, seed=0),
        stratified_split(stems, 0.2, 1),
    )
    assert a == b and a != c
    for cls in NEU_CLASSES:
        assert sum(1 for s, v in a.items() if v == "val" and class_of(s) == cls) == 2


def test_convert_rescales_boxes_to_the_jpeg(tmp_path: Path) -> None:
    truth = _neu_tree(tmp_path / "NEU-DET")
    summary = convert_neu_det(tmp_path, tmp_path / "out", val_fraction=0.2, seed=0, progress=False)
    assert summary.images == {"train": 24, "val": 6}
    data = yaml.safe_load(summary.data_yaml.read_text())
    assert [data["names"][i] for i in range(6)] == NEU_CLASSES
    split = json.loads(summary.split_json.read_text())
    assert len(split["ids"]["val"]) == 6 and not set(split["ids"]["val"]) & set(split["ids"]["train"])
    for stem, (cls, box) in truth.items():
        part = "val" if stem in split["ids"]["val"] else "train"
        (line,) = (tmp_path / "out" / "labels" / part / f"{stem}.txt").read_text().splitlines()
        cid, got = parse_label_line(line, 416, 416)
        assert NEU_CLASSES[cid] == cls
        # 200-px XML coordinates on a 416-px image: x 416 / 200
        assert got.as_list() == pytest.approx([v * 416 / 200 for v in box], abs=0.01)


def test_convert_refuses_an_unknown_class(tmp_path: Path) -> None:
    _neu_tree(tmp_path, per_class=1)
    (tmp_path / "ANNOTATIONS" / "crazing_1.xml").write_text(
        XML.format(name="crazing_1", objects=OBJ.format(cls="rust", x1=1, y1=1, x2=9, y2=9))
    )
    with pytest.raises(ValueError, match="unknown class 'rust'"):
        convert_neu_det(tmp_path, tmp_path / "out", progress=False)


def _tiny_yolo(root: Path, names: list[str], labels: dict[str, list[str]]) -> Path:
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
    for rel, lines in labels.items():
        split, stem = rel.split("/")
        cv2.imwrite(str(root / "images" / split / f"{stem}.png"), np.zeros((8, 8), np.uint8))
        if lines is not None:
            (root / "labels" / split / f"{stem}.txt").write_text("\n".join(lines) + "\n")
    return write_data_yaml(root, names)


def test_merge_offsets_class_ids_and_prefixes_names(tmp_path: Path) -> None:
    a = _tiny_yolo(tmp_path / "a", ["x", "y"], {"train/a1": ["1 0.5 0.5 0.2 0.2"], "val/a2": ["0 0.5 0.5 0.1 0.1"]})
    b = _tiny_yolo(tmp_path / "b", ["z"], {"train/b1": ["0 0.4 0.4 0.2 0.2", "0 0.6 0.6 0.1 0.1"], "val/b2": []})
    merged = merge_yolo_datasets({"steel": a, "tab": b}, tmp_path / "mix", progress=False)
    data = yaml.safe_load(merged.read_text())
    assert data["names"] == {0: "steel/x", 1: "steel/y", 2: "tab/z"}
    labels = tmp_path / "mix" / "labels"
    assert (labels / "train" / "steel__a1.txt").read_text().split()[0] == "1"
    assert [ln.split()[0] for ln in (labels / "train" / "tab__b1.txt").read_text().splitlines()] == ["2", "2"]
    assert (labels / "val" / "tab__b2.txt").read_text() == ""  # an image without objects stays a negative
    image = tmp_path / "mix" / "images" / "train" / "tab__b1.png"
    assert image.is_symlink() and image.resolve() == (tmp_path / "b" / "images" / "train" / "b1.png").resolve()
    # a re-run replaces the mix instead of piling onto it
    merge_yolo_datasets({"tab": b}, tmp_path / "mix", progress=False)
    assert sorted(p.name for p in (tmp_path / "mix" / "images" / "train").iterdir()) == ["tab__b1.png"]


def test_merge_refuses_a_label_outside_its_names(tmp_path: Path) -> None:
    a = _tiny_yolo(tmp_path / "a", ["x"], {"train/a1": ["3 0.5 0.5 0.2 0.2"], "val/a2": []})
    with pytest.raises(ValueError, match="class id 3 outside the 1 names"):
        merge_yolo_datasets({"a": a}, tmp_path / "mix", progress=False)


def test_data_merge_cli_rejects_a_part_without_prefix(tmp_path: Path) -> None:
    from agent.cli import app
    from defect_agent.errors import ConfigError

    result = CliRunner().invoke(app, ["data", "merge", str(tmp_path / "mix"), "--part", "no-equals-sign"])
    assert isinstance(result.exception, ConfigError)
    assert "PREFIX=path/to/data.yaml" in str(result.exception)


def test_real_neu_det_converts_completely(shared_datasets: Path, tmp_path: Path) -> None:
    src = shared_datasets / "neu-det"
    if not src.is_dir():
        pytest.skip("../shared/datasets/neu-det is absent")
    summary = convert_neu_det(src, tmp_path / "neu", progress=False)
    assert summary.images == {"train": 1440, "val": 360}  # 300 per class, 60 of each held out
    total = sum(sum(c.values()) for c in summary.boxes.values())
    assert total == 4189  # every box of the 1,800 annotations
    for label in (tmp_path / "neu" / "labels" / "val").glob("*.txt"):
        for line in label.read_text().splitlines():
            values = [float(v) for v in line.split()[1:]]
            assert all(0.0 <= v <= 1.0 for v in values)
