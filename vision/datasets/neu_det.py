"""NEU-DET (K. Song, Northeastern University) steel-surface defects -> ultralytics YOLO dataset.

Source layout: `NEU-DET/IMAGES/<class>_<n>.jpg` and `NEU-DET/ANNOTATIONS/<class>_<n>.xml` (Pascal VOC). Six classes,
300 images each, every image defective. The XML boxes are in the coordinates of the `<size>` the XML records (the
200 x 200 originals) while the JPEGs in the shared copy are 416 x 416 re-encodes: boxes are scaled by the ratio of
the image actually read to the recorded size, so either copy converts to the same normalised labels.

NEU-DET has no official split: `convert_neu_det` fixes one, stratified by class and seeded (`val_fraction` of each
class), and records it in `split.json` beside `data.yaml`."""

from __future__ import annotations

import json
import logging
import random
import shutil
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import cv2
from pydantic import BaseModel
from tqdm import tqdm

from defect_agent.errors import EmptyInput, ImageReadError
from vision.datasets.yolo import IMAGE_SUFFIXES
from vision.detection import Box

log = logging.getLogger(__name__)

NEU_CLASSES = ["crazing", "inclusion", "patches", "pitted_surface", "rolled-in_scale", "scratches"]
VAL_FRACTION = 0.2


@dataclass(frozen=True)
class NeuObject:
    """One annotated defect of a NEU-DET image: class name and box."""

    name: str
    box: Box  # in the recorded (XML) coordinates


@dataclass(frozen=True)
class NeuAnnotation:
    """One parsed Pascal-VOC annotation file of NEU-DET: image name, recorded size and its objects."""

    filename: str
    width: int  # the size the XML records, i.e. the frame of the boxes
    height: int
    objects: tuple[NeuObject, ...]


class NeuConversionSummary(BaseModel):
    """What `convert_neu_det` wrote: the YOLO dataset files and its image and box counts per split."""

    data_yaml: Path
    split_json: Path
    images: dict[str, int]  # split -> images
    boxes: dict[str, dict[str, int]]  # split -> class -> boxes


def neu_root(src: Path | str) -> Path:
    """The folder holding IMAGES/ and ANNOTATIONS/ (`src` itself or its NEU-DET child)."""
    src = Path(src)
    for candidate in (src, src / "NEU-DET"):
        if (candidate / "IMAGES").is_dir() and (candidate / "ANNOTATIONS").is_dir():
            return candidate
    raise EmptyInput(f"no NEU-DET layout (IMAGES/ and ANNOTATIONS/) under {src}")


def parse_voc(text: str, source: str = "<xml>") -> NeuAnnotation:
    """One Pascal-VOC annotation; raises ValueError naming `source` on a malformed file."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise ValueError(f"{source}: not valid XML ({exc})") from exc
    size = root.find("size")
    try:
        width, height = int(size.findtext("width")), int(size.findtext("height"))  # type: ignore[union-attr, arg-type]
    except (AttributeError, TypeError, ValueError) as exc:
        raise ValueError(f"{source}: no <size><width>/<height>") from exc
    objects = []
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip()
        bb = obj.find("bndbox")
        if not name or bb is None:
            raise ValueError(f"{source}: an <object> without <name> or <bndbox>")
        try:
            coords = [float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")]  # type: ignore[arg-type]
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{source}: a <bndbox> without numeric xmin/ymin/xmax/ymax") from exc
        objects.append(NeuObject(name=name, box=Box(x1=coords[0], y1=coords[1], x2=coords[2], y2=coords[3])))
    return NeuAnnotation(
        filename=(root.findtext("filename") or "").strip(), width=width, height=height, objects=tuple(objects)
    )


def class_of(stem: str) -> str:
    """`rolled-in_scale_12` -> `rolled-in_scale`: the class is the file name before its last `_<number>`."""
    head, _, tail = stem.rpartition("_")
    if not head or not tail.isdigit():
        raise ValueError(f"NEU-DET file name {stem!r} is not <class>_<number>")
    return head


def stratified_split(stems: list[str], val_fraction: float = VAL_FRACTION, seed: int = 0) -> dict[str, str]:
    """stem -> 'train' / 'val': `val_fraction` of every class (rounded) to validation, chosen with `seed`."""
    by_class: dict[str, list[str]] = {}
    for stem in sorted(stems):
        by_class.setdefault(class_of(stem), []).append(stem)
    rng = random.Random(seed)
    split: dict[str, str] = {}
    for name in sorted(by_class):
        members = by_class[name][:]
        rng.shuffle(members)
        n_val = round(len(members) * val_fraction)
        for i, stem in enumerate(members):
            split[stem] = "val" if i < n_val else "train"
    return split


def convert_neu_det(
    src: Path | str, out: Path | str, val_fraction: float = VAL_FRACTION, seed: int = 0, progress: bool = True
) -> NeuConversionSummary:
    """Write `out/images/{train,val}` (byte-for-byte copies), `out/labels/{train,val}`, `out/data.yaml`,
    `out/split.json`."""
    from vision.datasets.yolo import prepare_split_dirs, write_data_yaml, yolo_label_line

    root = neu_root(src)
    images = {p.stem: p for p in sorted((root / "IMAGES").iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    xmls = {p.stem: p for p in sorted((root / "ANNOTATIONS").glob("*.xml"))}
    stems = sorted(set(images) & set(xmls))
    if not stems:
        raise EmptyInput(f"{root}: no image with an annotation of the same name")
    missing = sorted(set(images) ^ set(xmls))
    if missing:
        log.warning(
            "NEU-DET: %d files without their image / annotation pair skipped (e.g. %s)", len(missing), missing[:3]
        )
    split = stratified_split(stems, val_fraction, seed)
    out = Path(out)
    dirs = prepare_split_dirs(out, empty=True)
    class_id = {n: i for i, n in enumerate(NEU_CLASSES)}
    counts: Counter[str] = Counter()
    boxes: dict[str, Counter[str]] = {"train": Counter(), "val": Counter()}
    for stem in tqdm(stems, desc="neu-det", unit="img", disable=not progress):
        ann = parse_voc(xmls[stem].read_text(encoding="utf-8"), str(xmls[stem]))
        image = cv2.imread(str(images[stem]), cv2.IMREAD_UNCHANGED)
        if image is None:
            raise ImageReadError(f"cannot read {images[stem]}")
        height, width = image.shape[:2]
        sx, sy = width / ann.width, height / ann.height
        lines = []
        for obj in ann.objects:
            if obj.name not in class_id:
                raise ValueError(f"{xmls[stem]}: unknown class {obj.name!r}; NEU-DET has {NEU_CLASSES}")
            b = obj.box
            scaled = Box(x1=b.x1 * sx, y1=b.y1 * sy, x2=b.x2 * sx, y2=b.y2 * sy)
            lines.append(yolo_label_line(class_id[obj.name], scaled, width, height))
            boxes[split[stem]][obj.name] += 1
        img_dir, lbl_dir = dirs[split[stem]]
        shutil.copyfile(images[stem], img_dir / images[stem].name)
        (lbl_dir / f"{stem}.txt").write_text("\n".join(lines) + ("\n" if lines else ""), encoding="utf-8")
        counts[split[stem]] += 1
    data_yaml = write_data_yaml(out, NEU_CLASSES)
    split_json = out / "split.json"
    split_json.write_text(
        json.dumps(
            {
                "source": str(root),
                "rule": f"stratified by class, {val_fraction:.0%} of each class to val",
                "seed": seed,
                "images": dict(counts),
                "ids": {s: sorted(k for k, v in split.items() if v == s) for s in ("train", "val")},
            },
            indent=1,
        ),
        encoding="utf-8",
    )
    summary = NeuConversionSummary(
        data_yaml=data_yaml,
        split_json=split_json,
        images=dict(counts),
        boxes={s: dict(sorted(c.items())) for s, c in boxes.items()},
    )
    log.info("NEU-DET -> %s: %s", out, summary.images)
    return summary
