"""Training and validation samples for the class verifier (vision.verifier) from a DeepPCB split: every annotated
box with its class, plus background boxes of defect-like sizes away from every annotation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from vision.deeppcb import parse_annotation, reference_input, scan_deeppcb, split_of
from vision.verifier import VerifierSample, background_boxes, verifier_channels


def deeppcb_verifier_samples(
    src: Path | str, split: str, background_per_image: int = 2, seed: int = 0, max_boards: int | None = None,
    progress: bool = True,
) -> tuple[list[np.ndarray], list[VerifierSample], list[str]]:
    """(channel images, samples, test image paths) for the boards of one part of the fixed group split. Labels are
    DeepPCB's class ids (0-5 = open, short, mousebite, spur, copper, pin-hole); background is 6."""
    rng = np.random.default_rng(seed)
    pairs = [p for p in scan_deeppcb(src) if split_of(p.group) == split and p.template is not None][:max_boards]
    channels: list[np.ndarray] = []
    samples: list[VerifierSample] = []
    paths: list[str] = []
    truth_by_image: list[list] = []
    for i, pair in enumerate(tqdm(pairs, desc=f"verifier crops ({split})", unit="board", disable=not progress)):
        channels.append(verifier_channels(reference_input(pair.test, pair.template)))
        paths.append(str(pair.test))
        boxes = parse_annotation(pair.annotation.read_text(encoding="utf-8"), str(pair.annotation))
        truth_by_image.append([b for _, b in boxes])
        samples.extend(VerifierSample(image=i, box=b, label=c) for c, b in boxes)
    sizes = [(s.box.width, s.box.height) for s in samples] or [(32.0, 32.0)]
    background = 6
    for i, truth in enumerate(truth_by_image):
        for b in background_boxes(truth, channels[i].shape[:2], background_per_image, rng, sizes):
            samples.append(VerifierSample(image=i, box=b, label=background))
    return channels, samples, paths
