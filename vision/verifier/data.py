"""Training and validation samples for the class verifier (vision.verifier.model) from a DeepPCB split: every annotated
box with its class, background boxes of defect-like sizes away from every annotation, and (given a locator) the
locator's own proposals: those on a defect teach the box head how the detector's boxes are off, those on nothing
are the hard negatives random background crops are not."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from vision.datasets.deeppcb import parse_annotation, reference_input, template_pairs
from vision.detection import Box, Detection
from vision.verifier.model import verifier_channels
from vision.verifier.train import VerifierSample, background_boxes

BACKGROUND_LABEL = 6  # after DeepPCB's six defect classes


def proposal_samples(
    image: int,
    detections: Sequence[Detection],
    truth: Sequence[tuple[int, Box]],
    background: int,
    on_defect: float = 0.5,
    off_defect: float = 0.2,
) -> list[VerifierSample]:
    """A locator's detections on one board as samples: IoU >= `on_defect` with an annotation -> that class, to be
    refined to it; IoU < `off_defect` with every annotation and centre outside all -> background; between: left
    out (neither a clean positive nor a clean negative)."""
    out: list[VerifierSample] = []
    for d in detections:
        best = max(truth, key=lambda t: d.box.iou(t[1]), default=None)
        iou = d.box.iou(best[1]) if best else 0.0
        if best is not None and iou >= on_defect:
            out.append(VerifierSample(image=image, box=d.box, label=best[0], target=best[1]))
        elif iou < off_defect and not any(b.contains(*d.box.center) for _, b in truth):
            out.append(VerifierSample(image=image, box=d.box, label=background))
    return out


def deeppcb_verifier_samples(
    src: Path | str,
    split: str,
    background_per_image: int = 2,
    seed: int = 0,
    max_boards: int | None = None,
    progress: bool = True,
    locator: Any = None,
    proposal_conf: float = 0.05,
    proposal_on_defect: float = 0.5,
) -> tuple[list[np.ndarray], list[VerifierSample], list[str]]:
    """(channel images, samples, test image paths) for the boards of one part of the fixed group split. Labels are
    DeepPCB's class ids (0-5 = open, short, mousebite, spur, copper, pin-hole); background is 6. `locator`: also
    its detections at `proposal_conf` (`proposal_samples`, positives from IoU `proposal_on_defect`)."""
    rng = np.random.default_rng(seed)
    pairs = template_pairs(src, split, max_boards)
    channels: list[np.ndarray] = []
    samples: list[VerifierSample] = []
    paths: list[str] = []
    truth_by_image: list[list] = []
    for i, pair in enumerate(tqdm(pairs, desc=f"verifier crops ({split})", unit="board", disable=not progress)):
        composite = reference_input(pair.test, pair.template)
        channels.append(verifier_channels(composite))
        paths.append(str(pair.test))
        boxes = parse_annotation(pair.annotation.read_text(encoding="utf-8"), str(pair.annotation))
        truth_by_image.append([b for _, b in boxes])
        samples.extend(VerifierSample(image=i, box=b, label=c) for c, b in boxes)
        if locator is not None:
            samples.extend(
                proposal_samples(
                    i,
                    locator.predict([composite], conf=proposal_conf)[0],
                    boxes,
                    BACKGROUND_LABEL,
                    on_defect=proposal_on_defect,
                )
            )
    sizes = [(s.box.width, s.box.height) for s in samples if s.label != BACKGROUND_LABEL] or [(32.0, 32.0)]
    for i, truth in enumerate(truth_by_image):
        for b in background_boxes(truth, channels[i].shape[:2], background_per_image, rng, sizes):
            samples.append(VerifierSample(image=i, box=b, label=BACKGROUND_LABEL))
    return channels, samples, paths
