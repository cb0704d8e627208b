"""YOLO (ultralytics) detection datasets: generic label / data.yaml helpers shared by every converter, and the
writer of the built-in battery_tab dataset from the procedural generator.

Layout: <out>/images/{train,val}/*.png, <out>/labels/{train,val}/*.txt (one `class cx cy w h` line per object,
normalised to [0, 1]), <out>/data.yaml. The battery_tab writer also keeps each split's exact truth in
<out>/truth_{train,val}.jsonl for evaluation."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from tqdm import tqdm

from defect_agent.errors import ConfigError, EmptyInput
from vision.detection import Box

log = logging.getLogger(__name__)

SPLITS = ("train", "val")


def yolo_label_line(class_id: int, box: Box, width: int, height: int) -> str:
    """One YOLO label line for a pixel box, clipped to the image: `class cx cy w h` normalised to [0, 1]."""
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    x1, x2 = min(max(box.x1, 0.0), float(width)), min(max(box.x2, 0.0), float(width))
    y1, y2 = min(max(box.y1, 0.0), float(height)), min(max(box.y2, 0.0), float(height))
    if x2 <= x1 or y2 <= y1:
        raise ValueError(f"box {box.as_list()} has no area inside the {width}x{height} image")
    cx, cy = (x1 + x2) / 2.0 / width, (y1 + y2) / 2.0 / height
    w, h = (x2 - x1) / width, (y2 - y1) / height
    return f"{int(class_id)} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}"


def parse_label_line(line: str, width: int, height: int) -> tuple[int, Box]:
    """Inverse of yolo_label_line: (class id, pixel box)."""
    parts = line.split()
    if len(parts) != 5:
        raise ValueError(f"YOLO label line needs 5 fields, got {line!r}")
    cid, cx, cy, w, h = int(parts[0]), *map(float, parts[1:])
    return cid, Box(
        x1=(cx - w / 2) * width, y1=(cy - h / 2) * height, x2=(cx + w / 2) * width, y2=(cy + h / 2) * height
    )


def write_data_yaml(
    out_dir: Path | str, names: list[str], train: str = "images/train", val: str = "images/val", test: str | None = None
) -> Path:
    """Write an ultralytics data.yaml (absolute `path`, class ids in the order of `names`)."""
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data: dict = {"path": str(out), "train": train, "val": val}
    if test is not None:
        data["test"] = test
    data["nc"] = len(names)
    data["names"] = {i: n for i, n in enumerate(names)}
    path = out / "data.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def data_yaml_names(data_yaml: Path | str) -> list[str]:
    """Class names of an ultralytics data YAML in id order (`names` as a list or an id -> name mapping)."""

    data = yaml.safe_load(Path(data_yaml).read_text(encoding="utf-8")) or {}
    names = data.get("names")
    if names is None:
        raise ConfigError(f"{data_yaml}: no 'names' entry")
    return [str(names[i]) for i in sorted(names)] if isinstance(names, dict) else [str(n) for n in names]


def require_line_classes(data_yaml: Path | str, line: str, expected: list[str]) -> None:
    """A line's model must be trained on its own classes, same names, same order: the class id is the contract."""

    check_data_yaml(Path(data_yaml))  # a missing file or a YAML without names: the trainers' own message
    names = data_yaml_names(data_yaml)
    if names != expected:
        raise ConfigError(
            f"{data_yaml} classes {names} differ from the line {line!r}: {expected} (same names, same order)"
        )


def prepare_split_dirs(
    out_dir: Path | str, splits: tuple[str, ...] = SPLITS, empty: bool = False
) -> dict[str, tuple[Path, Path]]:
    """Create images/<split> and labels/<split>; returns split -> (images dir, labels dir). `empty`: remove what
    they already hold, so that a converter's re-run (another mode, seed or mix) leaves no file of the earlier one."""
    out = Path(out_dir)
    dirs = {}
    for split in splits:
        img_dir, lbl_dir = out / "images" / split, out / "labels" / split
        img_dir.mkdir(parents=True, exist_ok=True)
        lbl_dir.mkdir(parents=True, exist_ok=True)
        if empty:
            for old in [*img_dir.iterdir(), *lbl_dir.iterdir()]:
                old.unlink()
        dirs[split] = (img_dir, lbl_dir)
    return dirs


def _label_of(image: Path) -> Path:
    # ultralytics' own rule (img2label_paths): the last /images/ of the path becomes /labels/, suffix .txt
    parts = list(image.parts)
    i = len(parts) - 1 - parts[::-1].index("images")
    parts[i] = "labels"
    return Path(*parts).with_suffix(".txt")


def merge_yolo_datasets(parts: Mapping[str, Path | str], out_dir: Path | str, progress: bool = True) -> Path:
    """One YOLO dataset from several (e.g. the training mix of a multi-line base detector): class `c` of part `p`
    becomes `p/c` with ids offset part after part; images are symlinked as `<p>__<name>`, labels rewritten.
    Returns the merged data.yaml."""

    if not parts:
        raise ValueError("no dataset to merge")
    out = Path(out_dir)
    dirs = prepare_split_dirs(out, empty=True)
    for cache in out.glob("labels/*.cache"):
        cache.unlink()
    names: list[str] = []
    counts: Counter[str] = Counter()
    for prefix, data_yaml in parts.items():
        data_yaml = Path(data_yaml).resolve()
        part_names = data_yaml_names(data_yaml)
        offset = len(names)
        names.extend(f"{prefix}/{n}" for n in part_names)
        for split in SPLITS:
            img_dir, lbl_dir = dirs[split]
            for image in tqdm(
                split_images(data_yaml, split), desc=f"merge {prefix} {split}", disable=not progress, unit="img"
            ):
                stem = f"{prefix}__{image.stem}"
                (img_dir / f"{stem}{image.suffix.lower()}").symlink_to(image.resolve())
                label = _label_of(image)
                lines = []
                if label.is_file():
                    for line in label.read_text(encoding="utf-8").splitlines():
                        if line.strip():
                            cid, *rest = line.split()
                            if not 0 <= int(cid) < len(part_names):
                                raise ValueError(f"{label}: class id {cid} outside the {len(part_names)} names")
                            lines.append(" ".join([str(int(cid) + offset), *rest]))
                (lbl_dir / f"{stem}.txt").write_text("\n".join(lines) + ("\n" if lines else ""), encoding="utf-8")
                counts[f"{split}/{prefix}"] += 1
    log.info("merged dataset at %s: %s", out, dict(sorted(counts.items())))
    return write_data_yaml(out, names)


IMAGE_SUFFIXES = {".bmp", ".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp"}


def split_sources(data: dict[str, Any], data_yaml: Path, split: str) -> list[Path]:
    entry = data.get(split)
    if entry is None:
        raise ConfigError(f"{data_yaml}: no {split!r} entry")
    root = Path(data.get("path") or data_yaml.parent)
    if not root.is_absolute():
        root = (data_yaml.parent / root).resolve()
    entries = entry if isinstance(entry, list) else [entry]
    return [p if p.is_absolute() else root / p for p in (Path(str(e)) for e in entries)]


def split_images(data_yaml: Path, split: str) -> list[Path]:
    """The images of a split of an ultralytics data YAML (folders searched recursively, or .txt lists whose relative
    lines count from the list's folder); raises when the split is missing."""
    data = yaml.safe_load(Path(data_yaml).read_text(encoding="utf-8")) or {}
    images: list[Path] = []
    for src in split_sources(data, Path(data_yaml), split):
        if src.is_dir():
            images += sorted(p for p in src.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        elif src.is_file() and src.suffix == ".txt":
            lines = [Path(line.strip()) for line in src.read_text(encoding="utf-8").splitlines() if line.strip()]
            images += [p if p.is_absolute() else src.parent / p for p in lines]
        else:
            # ultralytics would fall back to the YAML's `download:` entry here; refuse instead
            raise EmptyInput(f"{data_yaml}: {split} images not found at {src}")
    return images


def count_split_images(data_yaml: Path, split: str) -> int:
    """Images in a split of an ultralytics data YAML (folder or .txt list); raises when the split is missing."""
    return len(split_images(data_yaml, split))


def check_data_yaml(data_yaml: Path) -> dict[str, Any]:
    data_yaml = Path(data_yaml)
    if not data_yaml.is_file():
        raise ConfigError(f"dataset YAML not found: {data_yaml}")
    data = yaml.safe_load(data_yaml.read_text(encoding="utf-8")) or {}
    if "names" not in data:
        raise ConfigError(f"{data_yaml}: no 'names' entry (class names in id order)")
    return data
