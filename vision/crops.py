"""One way to cut a defect crop out of an image, shared by the embedder, the knowledge base and the pipeline so
that a stored case and today's finding are embedded from the same kind of crop."""

from __future__ import annotations

import numpy as np

from vision.detection import Box

CONTEXT = 0.25  # fraction of the box size added on each side: texture around a defect helps name it
MIN_SIDE = 32  # px: tiny boxes (pin-holes, spatter beads) get at least this much context


def crop_region(image: np.ndarray, box: Box | None, context: float = CONTEXT, min_side: int = MIN_SIDE) -> np.ndarray:
    """Square crop centred on the box, enlarged by `context`, clipped to the image; the whole image for None."""
    if box is None:
        return image
    h, w = image.shape[:2]
    cx, cy = box.center
    side = max(box.width, box.height) * (1.0 + 2.0 * context)
    side = max(side, float(min_side))
    half = side / 2.0
    x1, y1 = int(round(max(0.0, cx - half))), int(round(max(0.0, cy - half)))
    x2, y2 = int(round(min(float(w), cx + half))), int(round(min(float(h), cy + half)))
    if x2 <= x1 or y2 <= y1:
        raise ValueError(f"box {box.as_list()} lies outside the {w}x{h} image")
    return image[y1:y2, x1:x2]
