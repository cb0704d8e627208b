"""Labelled crops for training and evaluating the embedder, cut with `vision.crops.crop_region` exactly as the
pipeline and the knowledge base cut them.

- battery_tab: procedural images (`vision.datasets.synth.generate_battery_tab`) with exact boxes: spatter / crack / burn
  crops, `normal_weld` crops (weld zones with no defect inside, centred or off-centre) and `normal_tab` crops
  (random squares of tab surface touching no defect). Train and validation use disjoint seed streams.
- pcb: DeepPCB. Defect crops from the `_test` images at the annotated boxes; `normal` crops from the aligned
  `_temp` templates, at the same boxes (the same place without the defect) and at random places. Split by group
  folder with `vision.datasets.deeppcb` (the locator's split): only the train groups ever feed training."""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from vision.crops import crop_region
from vision.detection import Box

log = logging.getLogger(__name__)

BATTERY_TRAIN_STREAM = 21  # seed streams of vision.datasets.synth.image_seed, apart from the locator dataset's 1 and 2
BATTERY_VAL_STREAM = 22


@dataclass
class CropSet:
    """Crops with their kind (`<line>/<kind>`) and where they came from (for grouping and reproducibility)."""

    name: str
    crops: list[np.ndarray]
    kinds: list[str]
    sources: list[str]

    def __len__(self) -> int:
        return len(self.crops)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        for k in self.kinds:
            out[k] += 1
        return dict(sorted(out.items()))


def _overlaps(box: Box, others: list[Box], margin: float = 0.0) -> bool:
    grown = Box(x1=box.x1 - margin, y1=box.y1 - margin, x2=box.x2 + margin, y2=box.y2 + margin)
    return any(grown.iou(o) > 0 or _inside(o, grown) for o in others)


def _inside(a: Box, b: Box) -> bool:
    return a.x1 >= b.x1 and a.y1 >= b.y1 and a.x2 <= b.x2 and a.y2 <= b.y2


def _crop_box(box: Box, image_shape: tuple[int, ...]) -> Box:
    """The square region crop_region cuts for `box` (to test what else a crop contains)."""
    h, w = image_shape[:2]
    side = max(max(box.width, box.height) * 1.5, 32.0)
    cx, cy = box.center
    return Box(
        x1=max(0.0, cx - side / 2),
        y1=max(0.0, cy - side / 2),
        x2=min(float(w), cx + side / 2),
        y2=min(float(h), cy + side / 2),
    )


def _battery_cycle():
    from vision.datasets.synth import BatteryTabParams

    return (
        BatteryTabParams(force_spatter=False, force_crack=False, force_burn=False),
        BatteryTabParams(force_crack=True),
        BatteryTabParams(force_burn=True),
        BatteryTabParams(),
    )


def battery_tab_crops(
    n_images: int, seed: int, stream: int, tab_crops_per_image: int = 1, progress: bool = True
) -> CropSet:
    """Crops of `n_images` generated images, in a cycle of four: a defect-free image (its weld is rarely free of
    nearby spatter otherwise), one with a crack forced, one with a burn forced (the generator's own mix has each in
    15 % of images), one with the generator's own mix."""
    from vision.datasets.synth import generate_battery_tab, image_seed

    cycle = _battery_cycle()

    rng = np.random.default_rng([seed, stream, 7])
    out = CropSet(name=f"battery_tab-s{seed}-st{stream}-n{n_images}", crops=[], kinds=[], sources=[])
    for i in tqdm(range(n_images), desc="battery_tab crops", unit="img", disable=not progress):
        params = cycle[i % len(cycle)]
        img_seed = image_seed(seed, i, stream)
        image, truth = generate_battery_tab(img_seed, params)
        src = f"battery_tab:{img_seed}"
        defects = [o.box for o in truth.objects if o.name in ("spatter", "crack", "burn")]
        for obj in truth.objects:
            if obj.name in ("spatter", "crack", "burn"):
                out.crops.append(crop_region(image, obj.box))
                out.kinds.append(f"battery_tab/{obj.name}")
                out.sources.append(src)
            elif obj.name == "weld":
                if not _overlaps(_crop_box(obj.box, image.shape), defects):
                    out.crops.append(crop_region(image, obj.box))
                    out.kinds.append("battery_tab/normal_weld")
                    out.sources.append(src)
        tabs = truth.boxes("tab")
        if not tabs:
            continue
        tab = tabs[0]
        for _ in range(tab_crops_per_image):
            for _attempt in range(20):
                side = float(rng.uniform(24, 110))
                x1 = float(rng.uniform(tab.x1 + 8, max(tab.x1 + 9, tab.x2 - side - 8)))
                y1 = float(rng.uniform(tab.y1 + 8, max(tab.y1 + 9, tab.y2 - side - 8)))
                box = Box(x1=x1, y1=y1, x2=x1 + side, y2=y1 + side)
                if not _overlaps(_crop_box(box, image.shape), defects, margin=4.0):
                    out.crops.append(crop_region(image, box))
                    out.kinds.append("battery_tab/normal_tab")
                    out.sources.append(src)
                    break
    return out


@dataclass
class PcbBox:
    """One annotated DeepPCB defect: its board images (test and template), class name and box."""

    pair_id: str
    test: Path
    template: Path | None
    class_name: str
    box: Box


def deeppcb_boxes(root: Path | str, split: str) -> list[PcbBox]:
    """All annotated defects of one split ("train" / "val") of `vision.datasets.deeppcb`'s group split."""
    from vision.datasets.deeppcb import DEEPPCB_CLASSES, parse_annotation, scan_deeppcb, split_of

    out: list[PcbBox] = []
    for pair in scan_deeppcb(root):
        if split_of(pair.group) != split:
            continue
        for cls, box in parse_annotation(pair.annotation.read_text(encoding="utf-8"), str(pair.annotation)):
            out.append(PcbBox(pair.id, pair.test, pair.template, DEEPPCB_CLASSES[cls], box))
    return out


def deeppcb_crops(
    root: Path | str, split: str, per_class: int, normal: int, seed: int, progress: bool = True
) -> CropSet:
    """Up to `per_class` defect crops per class (seeded sample over the split's boxes) and `normal` template crops
    (half at sampled defect boxes, half at random places of a box size drawn from the defects')."""
    from vision.reference import read_grey

    rng = np.random.default_rng([seed, 0xDEE9])
    boxes = deeppcb_boxes(root, split)
    by_class: dict[str, list[PcbBox]] = defaultdict(list)
    for b in boxes:
        by_class[b.class_name].append(b)
    chosen: list[tuple[PcbBox, str]] = []
    for cls in sorted(by_class):
        items = by_class[cls]
        idx = rng.permutation(len(items))[:per_class]
        chosen.extend((items[i], "defect") for i in sorted(idx))
    with_template = [b for b in boxes if b.template is not None]
    n_paired = normal // 2
    for i in rng.permutation(len(with_template))[:n_paired]:
        chosen.append((with_template[i], "paired"))
    for i in rng.integers(0, len(with_template), size=normal - min(n_paired, len(with_template))):
        chosen.append((with_template[i], "random"))

    cache: dict[Path, np.ndarray] = {}

    def grey(path: Path) -> np.ndarray:
        if path not in cache:
            if len(cache) > 64:
                cache.clear()
            cache[path] = cv2.cvtColor(read_grey(path), cv2.COLOR_GRAY2BGR)
        return cache[path]

    out = CropSet(name=f"pcb-{split}-c{per_class}-n{normal}-s{seed}", crops=[], kinds=[], sources=[])
    chosen.sort(key=lambda t: (str(t[0].test), t[1]))  # image order: the small read cache then hits
    for pb, mode in tqdm(chosen, desc=f"deeppcb {split} crops", unit="crop", disable=not progress):
        if mode == "defect":
            out.crops.append(crop_region(grey(pb.test), pb.box))
            out.kinds.append(f"pcb/{pb.class_name}")
            out.sources.append(f"deeppcb:{pb.pair_id}")
            continue
        template = grey(pb.template)
        box = pb.box
        if mode == "random":
            h, w = template.shape[:2]
            bw, bh = box.width, box.height
            x1 = float(rng.uniform(0, w - bw))
            y1 = float(rng.uniform(0, h - bh))
            box = Box(x1=x1, y1=y1, x2=x1 + bw, y2=y1 + bh)
        out.crops.append(crop_region(template, box))
        out.kinds.append("pcb/normal")
        out.sources.append(f"deeppcb:{pb.pair_id}:template-{mode}")
    return out
