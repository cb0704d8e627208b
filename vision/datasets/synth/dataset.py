"""The battery_tab line's YOLO detection dataset from the generator: images, labels, exact truth, data.yaml."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import cv2
from tqdm import tqdm

from defect_agent.config import load_line
from vision.datasets.synth.battery_tab import BatteryTabParams, generate_battery_tab, image_seed
from vision.datasets.yolo import prepare_split_dirs, write_data_yaml, yolo_label_line

log = logging.getLogger(__name__)


def write_battery_tab_dataset(out_dir: Path | str, n_train: int, n_val: int, seed: int, progress: bool = True) -> Path:
    """Generate the battery_tab line's detection dataset; returns the data.yaml path. Train and val images come
    from disjoint seed streams of `seed`, so they never repeat each other."""
    line = load_line("battery_tab")
    names = line.class_names
    class_id = {n: i for i, n in enumerate(names)}
    width, height = line.image_size or (640, 480)
    params = BatteryTabParams(width=width, height=height, mm_per_px=line.calibration.mm_per_px)
    out = Path(out_dir)
    dirs = prepare_split_dirs(out)
    counts: Counter[str] = Counter()
    for stream, (split, n) in enumerate((("train", n_train), ("val", n_val)), start=1):
        img_dir, lbl_dir = dirs[split]
        with (out / f"truth_{split}.jsonl").open("w", encoding="utf-8") as fh:
            for i in tqdm(range(n), desc=f"battery_tab {split}", disable=not progress, unit="img"):
                img, truth = generate_battery_tab(image_seed(seed, i, stream), params)
                stem = f"bt_{split}_{i:05d}"
                if not cv2.imwrite(str(img_dir / f"{stem}.png"), img):
                    raise OSError(f"could not write {img_dir / stem}.png")
                lines = []
                for obj in truth.objects:
                    if obj.name not in class_id:
                        raise ValueError(f"generator produced class {obj.name!r} absent from the line config")
                    lines.append(yolo_label_line(class_id[obj.name], obj.box, width, height))
                    counts[f"{split}/{obj.name}"] += 1
                (lbl_dir / f"{stem}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
                truth.image = f"images/{split}/{stem}.png"
                fh.write(truth.model_dump_json() + "\n")
    log.info("battery_tab dataset at %s: %s", out, dict(sorted(counts.items())))
    return write_data_yaml(out, names)


def write_yolo_dataset(out_dir: Path | str, n_train: int, n_val: int, seed: int) -> Path:
    """The built-in battery_tab YOLO dataset (the line's classes in config order); returns data.yaml."""
    return write_battery_tab_dataset(out_dir, n_train, n_val, seed)
