"""DeepPCB (Tang et al. 2019) -> ultralytics YOLO dataset for the `pcb` line, and the golden-template input.

Source layout (the official `PCBData` folder):
    PCBData/groupNNNNN/NNNNN/<id>_test.jpg      inspected image (binarised scan, 640x640)
    PCBData/groupNNNNN/NNNNN/<id>_temp.jpg      its aligned defect-free template
    PCBData/groupNNNNN/NNNNN_not/<id>.txt       one `x1 y1 x2 y2 type` line per defect (spaces or commas)
Types 1..6 are open, short, mousebite, spur, copper, pin-hole (`DEEPPCB_CLASSES`, the `pcb` line's order).

The split is by group folder so that crops of one board never sit on both sides: `VAL_GROUPS` (three boards, 200 of
the 1,000 pairs = 20 %) are validation, the other four groups training. `split.json` beside `data.yaml` records it.

Reference mode (`reference=True`) writes each image as the 3-channel composite of `vision.reference`
(B = the test image, G = the binarised template, R = |test - template|), so the detector sees where the board
differs from its template. A locator trained on such images needs the same composite at run time: the pcb line's
`reference:` rule (its config) finds `<id>_temp.<ext>` beside `<id>_test.<ext>`, as `DEEPPCB_REFERENCE` does here."""

from __future__ import annotations

import json
import logging
import random
import re
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import yaml
from pydantic import BaseModel
from tqdm import tqdm

from defect_agent.config import ReferenceConfig
from defect_agent.errors import EmptyInput, ImageReadError
from vision.detection import Box
from vision.reference import IMAGE_EXTS, binarize, find_reference, read_grey, reference_composite

log = logging.getLogger(__name__)

DEEPPCB_CLASSES = ["open", "short", "mousebite", "spur", "copper", "pin_hole"]  # DeepPCB type 1..6
VAL_GROUPS = ("group44000", "group50600", "group77000")  # 50 + 50 + 100 pairs = 20 % of trainval, three boards
# the dataset's own pairing: <id>_temp.<ext> is the golden template of <id>_test.<ext>, in the same folder
DEEPPCB_REFERENCE = ReferenceConfig(pattern=r"^(?P<id>.+)_test$", name="{id}_temp")

_TEST_RE = re.compile(DEEPPCB_REFERENCE.pattern)


@dataclass(frozen=True)
class DeepPCBPair:
    """One inspected image with its template and annotation file."""

    id: str
    group: str
    test: Path
    template: Path | None
    annotation: Path


class ConversionSummary(BaseModel):
    """What `convert_deeppcb` wrote: the YOLO dataset files and its image, box and group counts per split."""

    data_yaml: Path
    split_json: Path
    reference: bool
    images: dict[str, int]  # split -> images
    boxes: dict[str, dict[str, int]]  # split -> class -> boxes
    groups: dict[str, list[str]]  # split -> group folders


def pcb_root(src: Path | str) -> Path:
    """The folder holding the groupNNNNN folders: `src` itself or `src/PCBData`."""
    src = Path(src).expanduser()
    for cand in (src, src / "PCBData"):
        if cand.is_dir() and any(p.is_dir() and p.name.startswith("group") for p in cand.iterdir()):
            return cand
    raise EmptyInput(
        f"no DeepPCB group folders (groupNNNNN) under {src} or {src / 'PCBData'}; pass the folder "
        "that holds PCBData (e.g. ../shared/datasets/deeppcb)"
    )


def find_template(test_path: Path | str) -> Path | None:
    """The aligned template of `<id>_test.<ext>`: `<id>_temp.<any image ext>` in the same folder, else None."""
    return find_reference(test_path, DEEPPCB_REFERENCE)


def scan_deeppcb(src: Path | str) -> list[DeepPCBPair]:
    """Every `<id>_test.*` image that has an annotation file, sorted by id."""
    root = pcb_root(src)
    pairs: list[DeepPCBPair] = []
    missing = 0
    for group in sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("group")):
        for img_dir in sorted(p for p in group.iterdir() if p.is_dir() and not p.name.endswith("_not")):
            ann_dir = group / f"{img_dir.name}_not"
            for test in sorted(img_dir.iterdir()):
                m = _TEST_RE.match(test.stem)
                if not m or test.suffix.lower() not in IMAGE_EXTS:
                    continue
                ann = ann_dir / f"{m.group('id')}.txt"
                if not ann.is_file():
                    missing += 1
                    continue
                pairs.append(
                    DeepPCBPair(
                        id=m.group("id"), group=group.name, test=test, template=find_template(test), annotation=ann
                    )
                )
    if missing:
        log.warning("%d DeepPCB test images under %s have no annotation file and were skipped", missing, root)
    if not pairs:
        raise EmptyInput(f"no annotated DeepPCB pairs under {root}")
    return pairs


def parse_annotation(text: str, source: str = "<annotation>") -> list[tuple[int, Box]]:
    """`x1 y1 x2 y2 type` lines (space- or comma-separated, DeepPCB type 1..6) -> (class id 0..5, pixel box)."""
    out: list[tuple[int, Box]] = []
    for n, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        fields = [f for f in re.split(r"[,\s]+", line) if f]
        if len(fields) != 5:
            raise ValueError(f"{source}:{n}: expected `x1 y1 x2 y2 type`, got {raw!r}")
        x1, y1, x2, y2 = (float(v) for v in fields[:4])
        kind = int(float(fields[4]))
        if not 1 <= kind <= len(DEEPPCB_CLASSES):
            raise ValueError(f"{source}:{n}: defect type {kind} outside 1..{len(DEEPPCB_CLASSES)}")
        out.append((kind - 1, Box(x1=min(x1, x2), y1=min(y1, y2), x2=max(x1, x2), y2=max(y1, y2))))
    return out


def reference_input(test_path: Path | str, template_path: Path | str | None = None) -> np.ndarray:
    """The composite for an image file; the template defaults to `find_template(test_path)`."""
    template_path = template_path or find_template(test_path)
    if template_path is None:
        raise ImageReadError(
            f"no template for {test_path}: expected <id>_temp.<ext> beside <id>_test.<ext>, "
            "or pass the template explicitly"
        )
    return reference_composite(read_grey(test_path), read_grey(template_path))


def split_of(group: str, val_groups: tuple[str, ...] = VAL_GROUPS) -> str:
    return "val" if group in val_groups else "train"


def template_pairs(src: Path | str, split: str, max_boards: int | None = None) -> list[DeepPCBPair]:
    """The pairs of one part of the fixed group split that have a golden template, in scan order (the first
    `max_boards`)."""
    return [p for p in scan_deeppcb(src) if split_of(p.group) == split and p.template is not None][:max_boards]


def convert_deeppcb(
    src: Path | str,
    out: Path | str,
    reference: bool = False,
    val_groups: tuple[str, ...] = VAL_GROUPS,
    progress: bool = True,
    negatives: bool = True,
) -> ConversionSummary:
    """Write `out/images/{train,val}`, `out/labels/{train,val}`, `out/data.yaml`, `out/split.json`.

    Without `reference`, images are byte-for-byte copies of the `_test` files (no re-encoding); with it, PNG
    composites (`reference_composite`). `negatives`: the validation boards' defect-free templates also go to
    `out/images/val_negatives` (no labels; data.yaml key `negatives`), to measure image-level false alarms; in
    reference mode each is the composite of the template with itself."""
    from vision.datasets.yolo import prepare_split_dirs, write_data_yaml, yolo_label_line

    pairs = scan_deeppcb(src)
    out = Path(out)
    groups_found = sorted({p.group for p in pairs})
    unknown = [g for g in val_groups if g not in groups_found]
    if unknown:
        raise EmptyInput(f"validation group(s) {unknown} not found under {pcb_root(src)}; found {groups_found}")
    dirs = prepare_split_dirs(out, empty=True)
    neg_dir = out / "images" / "val_negatives"
    if neg_dir.exists():
        shutil.rmtree(neg_dir)
    if negatives:
        neg_dir.mkdir(parents=True)
    images: Counter[str] = Counter()
    boxes: dict[str, Counter[str]] = {"train": Counter(), "val": Counter()}
    ids: dict[str, list[str]] = {"train": [], "val": []}
    for pair in tqdm(pairs, desc="deeppcb", unit="img", disable=not progress):
        split = split_of(pair.group, val_groups)
        img_dir, lbl_dir = dirs[split]
        image: np.ndarray | None  # cv2.imread's result may be None
        if reference:
            if pair.template is None:
                raise ImageReadError(f"no template beside {pair.test} (needed for --reference)")
            image = reference_composite(read_grey(pair.test), read_grey(pair.template))
            target = img_dir / f"{pair.id}.png"
            if not cv2.imwrite(str(target), image):
                raise OSError(f"could not write {target}")
        else:
            image = cv2.imread(str(pair.test), cv2.IMREAD_UNCHANGED)
            if image is None:
                raise ImageReadError(f"cannot read {pair.test}")
            shutil.copyfile(pair.test, img_dir / f"{pair.id}{pair.test.suffix.lower()}")
        height, width = image.shape[:2]
        labels = parse_annotation(pair.annotation.read_text(encoding="utf-8"), str(pair.annotation))
        lines = [yolo_label_line(k, box, width, height) for k, box in labels]
        (lbl_dir / f"{pair.id}.txt").write_text("\n".join(lines) + ("\n" if lines else ""), encoding="utf-8")
        images[split] += 1
        ids[split].append(pair.id)
        if negatives and split == "val" and pair.template is not None:
            if reference:
                temp = read_grey(pair.template)
                cv2.imwrite(str(neg_dir / f"{pair.id}_temp.png"), reference_composite(temp, temp))
            else:
                shutil.copyfile(pair.template, neg_dir / f"{pair.id}_temp{pair.template.suffix.lower()}")
            images["val_negatives"] += 1
        for k, _ in labels:
            boxes[split][DEEPPCB_CLASSES[k]] += 1
    data_yaml = write_data_yaml(out, DEEPPCB_CLASSES)
    if negatives:
        data = yaml.safe_load(data_yaml.read_text(encoding="utf-8"))
        data["negatives"] = "images/val_negatives"  # not a split ultralytics trains or validates on
        data_yaml.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
    groups = {s: sorted({p.group for p in pairs if split_of(p.group, val_groups) == s}) for s in ("train", "val")}
    split_json = out / "split.json"
    split_json.write_text(
        json.dumps(
            {
                "source": str(pcb_root(src)),
                "rule": "by group folder; val = fixed groups",
                "reference": reference,
                "groups": groups,
                "images": dict(images),
                "ids": ids,
            },
            indent=1,
        ),
        encoding="utf-8",
    )
    summary = ConversionSummary(
        data_yaml=data_yaml,
        split_json=split_json,
        reference=reference,
        images=dict(images),
        boxes={s: dict(sorted(c.items())) for s, c in boxes.items()},
        groups=groups,
    )
    log.info("DeepPCB -> %s: %s", out, summary.images)
    return summary


def subset_data_yaml(data_yaml: Path | str, n_train: int, seed: int = 0, name: str | None = None) -> Path:
    """A data YAML beside `data_yaml` whose train split is a seeded random `n_train` of the train images (a
    `train_<n>.txt` list); validation unchanged. Nested: the first 50 of a seed are also in its first 200."""
    data_yaml = Path(data_yaml).resolve()
    data = yaml.safe_load(data_yaml.read_text(encoding="utf-8"))
    root = Path(data.get("path") or data_yaml.parent)
    train_dir = root / data["train"]
    train = sorted(p for p in train_dir.iterdir() if p.suffix.lower() in IMAGE_EXTS)
    if n_train > len(train):
        raise EmptyInput(f"{data_yaml}: asked for {n_train} training images, the split has {len(train)}")
    order = train[:]
    random.Random(seed).shuffle(order)
    chosen = sorted(order[:n_train])
    stem = name or f"train_{n_train}"
    (root / f"{stem}.txt").write_text("".join(f"{p}\n" for p in chosen), encoding="utf-8")
    sub = dict(data, train=f"{stem}.txt")
    out = root / f"data_{stem}.yaml"
    out.write_text(yaml.safe_dump(sub, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return out


def write_compact_source(
    src: Path | str, out: Path | str, progress: bool = True, keep_templates: tuple[str, ...] = VAL_GROUPS
) -> Path:
    """A small copy of DeepPCB in its own layout for moving it between machines: test images byte-for-byte,
    templates of the `keep_templates` groups byte-for-byte (they become the validation negatives), the other
    templates as binarised PNGs (all that `reference_composite` uses of them), annotations as they are.
    Converting the copy gives exactly the dataset that converting the original gives."""
    root = pcb_root(src)
    out = Path(out) / "PCBData"
    for pair in tqdm(scan_deeppcb(root), desc="compact copy", unit="img", disable=not progress):
        rel = pair.test.parent.relative_to(root)
        (out / rel).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(pair.test, out / rel / pair.test.name)
        if pair.template is not None and pair.group in keep_templates:
            shutil.copyfile(pair.template, out / rel / pair.template.name)
        elif pair.template is not None:
            cv2.imwrite(
                str(out / rel / f"{pair.id}_temp.png"),
                binarize(read_grey(pair.template)),
                [cv2.IMWRITE_PNG_COMPRESSION, 9],
            )
        ann_rel = pair.annotation.parent.relative_to(root)
        (out / ann_rel).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(pair.annotation, out / ann_rel / pair.annotation.name)
    return out
