"""Defect-free battery_tab cells and an artefact the line's detector was never trained on.

`normal_cell(seed)`: a cell with no defect and a weld offset well inside the tolerance (uniform 0-0.1 mm): what
`defect-agent line anomaly battery_tab --normal` fits the line's anomaly model on.
`foreign_particle(image, seed)`: a foreign particle on the tab - an irregular blob (0.6-1.6 mm) with a trailing fibre,
darker or lighter than the tab - painted on a rendered cell. No class of the line describes it (not spatter: a single
body, not beads; not burn: no discoloured halo; not crack: not a line across the tab), so it tests whether a defect
type outside the detector's training reaches a person (`benchmarks/bench_unseen_defects.py`)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from vision.datasets.synth.battery_tab import BatteryTabParams, BatteryTabTruth, generate_battery_tab
from vision.detection import Box

NORMAL_MAX_OFFSET_MM = 0.1


def normal_params(seed: int) -> BatteryTabParams:
    """Generator settings of one defect-free cell (its small weld offset drawn from `seed`)."""
    offset = float(np.random.default_rng([seed, 0x0FF5]).uniform(0.0, NORMAL_MAX_OFFSET_MM))
    return BatteryTabParams(
        force_offset_mm=offset,
        force_missing_weld=False,
        force_spatter=False,
        force_crack=False,
        force_burn=False,
    )


def normal_cell(seed: int) -> tuple[np.ndarray, BatteryTabTruth]:
    """A defect-free cell (BGR uint8) and its truth."""
    return generate_battery_tab(seed, normal_params(seed))


def foreign_particle(
    image: np.ndarray, truth: BatteryTabTruth, seed: int, mm_per_px: float = 0.025
) -> tuple[np.ndarray, Box]:
    """A copy of `image` with a foreign particle on the tab, away from the weld, and the particle's box."""
    rng = np.random.default_rng([seed, 0xF0E1])
    tab = truth.boxes("tab")[0]
    weld = truth.boxes("weld")
    out = image.copy()
    h, w = out.shape[:2]
    size_px = rng.uniform(0.6, 1.6) / mm_per_px
    for _ in range(50):
        cx = rng.uniform(tab.x1 + size_px, tab.x2 - size_px)
        cy = rng.uniform(tab.y1 + size_px, tab.y2 - size_px)
        if not weld or not (
            weld[0].x1 - size_px < cx < weld[0].x2 + size_px and weld[0].y1 - size_px < cy < weld[0].y2 + size_px
        ):
            break
    angles = np.sort(rng.uniform(0, 2 * np.pi, 9))
    radii = size_px / 2 * rng.uniform(0.55, 1.0, 9)
    poly = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1).astype(np.int32)
    mask = np.zeros((h, w), np.uint8)
    cv2.fillPoly(mask, [poly], 255)
    end = (int(cx + rng.uniform(-1.5, 1.5) * size_px), int(cy + rng.uniform(-1.5, 1.5) * size_px))
    cv2.line(mask, (int(cx), int(cy)), end, 255, thickness=max(2, int(size_px / 10)), lineType=cv2.LINE_AA)
    soft = cv2.GaussianBlur(mask.astype(np.float32) / 255.0, (0, 0), 1.2)[..., None]
    level = rng.choice([rng.uniform(25, 60), rng.uniform(200, 235)])
    texture = level + rng.normal(0, 6, (h, w, 1))
    out = np.clip(out * (1 - soft) + texture * soft, 0, 255).astype(np.uint8)
    ys, xs = np.nonzero(mask)
    box = Box(x1=float(xs.min()), y1=float(ys.min()), x2=float(xs.max() + 1), y2=float(ys.max() + 1))
    return out, box


EXAMPLE_CLASSES = {"crack": {"force_crack": True}, "burn": {"force_burn": True}}


def write_line_sample(out: Path | str, n_normal: int = 30, n_examples: int = 3, seed: int = 7) -> tuple[Path, Path]:
    """What an engineer brings to `line new`: `out/normal/` (defect-free cells) and `out/examples/<class>/` (a few
    defect images per class, no boxes). Returns (normal folder, examples folder)."""
    from vision.datasets.synth.battery_tab import image_seed

    root = Path(out)
    normal_dir, examples_dir = root / "normal", root / "examples"
    normal_dir.mkdir(parents=True, exist_ok=True)
    for i in range(n_normal):
        image, _ = normal_cell(image_seed(seed, i, 11))
        cv2.imwrite(str(normal_dir / f"normal_{i:03d}.png"), image)
    for k, (name, force) in enumerate(EXAMPLE_CLASSES.items()):
        folder = examples_dir / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n_examples):
            s = image_seed(seed, i, 12 + k)
            image, _ = generate_battery_tab(s, normal_params(s).model_copy(update=force))
            cv2.imwrite(str(folder / f"{name}_{i:03d}.png"), image)
    return normal_dir, examples_dir
