"""Training the class verifier: samples (annotated boxes jittered the way detector boxes are off, the locator's own
proposals, background crops), the trainer of the CNN and its box head, and the crop-level checks that follow it."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel

from vision.detection import Box
from vision.verifier.model import (
    DefectVerifier,
    VerifierMeta,
    _dihedral,
    _n_outputs,
    _net,
    _to_tensor,
    crop_box,
    dihedral_deltas,
    encode_box,
)

log = logging.getLogger(__name__)


class VerifierSample(BaseModel):
    """One training example for the verifier: a box on a board image, its class (or background) and the box it
    should refine to."""

    image: int  # index into the channel images
    box: Box  # what the verifier is shown (an annotation, jittered each epoch, or a detector's proposal)
    label: int
    target: Box | None = None  # the annotated box it should refine to (None: `box` itself, or background)


def jitter_box(box: Box, rng: np.random.Generator, shift: float = 0.15, scale: float = 0.2) -> Box:
    """A detector-like box around a true one: centre moved by up to `shift` of the size, sides scaled by up to
    ±`scale`."""
    cx, cy = box.center
    w, h = box.width, box.height
    cx += rng.uniform(-shift, shift) * w
    cy += rng.uniform(-shift, shift) * h
    w *= math.exp(rng.uniform(-scale, scale))
    h *= math.exp(rng.uniform(-scale, scale))
    return Box(x1=cx - w / 2, y1=cy - h / 2, x2=cx + w / 2, y2=cy + h / 2)


def partial_box(box: Box, rng: np.random.Generator, keep: tuple[float, float] = (0.4, 0.8)) -> Box:
    """A piece of a true box along its longer side, `keep` of its length at a random place in it, lightly
    jittered: what the detector gives for a long open or short it cuts in two, or for one member of a cluster
    annotated as one region."""
    f = rng.uniform(*keep)
    if box.width >= box.height:
        w = box.width * f
        x1 = box.x1 + rng.uniform(0.0, box.width - w)
        piece = Box(x1=x1, y1=box.y1, x2=x1 + w, y2=box.y2)
    else:
        h = box.height * f
        y1 = box.y1 + rng.uniform(0.0, box.height - h)
        piece = Box(x1=box.x1, y1=y1, x2=box.x2, y2=y1 + h)
    return jitter_box(piece, rng, shift=0.05, scale=0.1)


def shown_box(sample: VerifierSample, rng: np.random.Generator, n_classes: int, partial_share: float) -> Box:
    """The box a training sample is shown as this epoch: a piece of its annotation for `partial_share` of the
    defect samples, else its box jittered."""
    if partial_share > 0 and sample.label < n_classes and rng.random() < partial_share:
        return partial_box(sample.target or sample.box, rng)
    return jitter_box(sample.box, rng)


def background_boxes(
    truth: Sequence[Box], shape: tuple[int, int], n: int, rng: np.random.Generator, sizes: Sequence[tuple[float, float]]
) -> list[Box]:
    """Boxes of defect-like sizes whose centre lies in no true box and that overlap none by more than 0.1."""
    h, w = shape
    out: list[Box] = []
    for _ in range(n * 20):
        if len(out) >= n:
            break
        bw, bh = sizes[int(rng.integers(len(sizes)))]
        cx, cy = rng.uniform(bw / 2, w - bw / 2), rng.uniform(bh / 2, h - bh / 2)
        b = Box(x1=cx - bw / 2, y1=cy - bh / 2, x2=cx + bw / 2, y2=cy + bh / 2)
        if all(not t.contains(cx, cy) and b.iou(t) <= 0.1 for t in truth):
            out.append(b)
    return out


def train_verifier(
    channels: Sequence[np.ndarray],
    samples: Sequence[VerifierSample],
    classes: list[str],
    epochs: int = 20,
    batch: int = 128,
    lr: float = 2e-3,
    seed: int = 0,
    val: tuple[Sequence[np.ndarray], Sequence[VerifierSample]] | None = None,
    trained_on: str = "",
    progress: bool = True,
    box_regression: bool = True,
    box_weight: float = 1.0,
    crop: int = 48,
    partial_share: float = 0.0,
) -> DefectVerifier:
    """Train on (channel image, box, label) samples: every epoch re-jitters each box and applies one of the eight
    rotations / flips per batch (PCB defects have no orientation). With `box_regression`, four more outputs learn
    where the annotated box lies relative to the jittered one (defect samples only). `val`: crops scored without
    jitter after the last epoch. `partial_share`: that share of the defect samples is shown as a piece of its
    annotation (`partial_box`) to be refined to the whole; the box head may then scale a side by up to 2."""
    import torch
    from tqdm import tqdm

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    meta = VerifierMeta(
        classes=list(classes),
        trained_on=trained_on,
        box_regression=box_regression,
        crop=crop,
        partial_share=partial_share,
        max_log_scale=0.7 if partial_share > 0 else 0.5,
    )
    model = _net(_n_outputs(meta), meta.channels, meta.widths)
    n_cls = len(classes) + 1
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * math.ceil(len(samples) / batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(1, steps), pct_start=0.15)
    labels = torch.tensor([s.label for s in samples])
    counts = torch.bincount(labels, minlength=len(classes) + 1).float().clamp(min=1)
    loss_fn = torch.nn.CrossEntropyLoss(weight=(counts.sum() / counts / (len(classes) + 1)), label_smoothing=0.05)
    started = time.time()
    for epoch in tqdm(range(epochs), desc="verifier", unit="epoch", disable=not progress):
        model.train()
        order = rng.permutation(len(samples))
        total = 0.0
        for start in range(0, len(order), batch):
            idx = order[start : start + batch]
            shown = [shown_box(samples[i], rng, len(classes), partial_share) for i in idx]
            crops = [crop_box(channels[samples[i].image], b, meta) for i, b in zip(idx, shown)]
            k = int(rng.integers(8))
            out = model(_dihedral(_to_tensor(crops), k))
            loss = loss_fn(out[:, :n_cls], labels[idx])
            if box_regression:
                fg = [j for j, i in enumerate(idx) if samples[i].label < len(classes)]
                if fg:
                    target = torch.from_numpy(
                        np.stack(
                            [encode_box(shown[j], samples[idx[j]].target or samples[idx[j]].box, meta) for j in fg]
                        )
                    )
                    loss = loss + box_weight * torch.nn.functional.smooth_l1_loss(
                        out[fg, n_cls:], dihedral_deltas(target, k), beta=0.1
                    )
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        log.info("verifier epoch %d: loss %.4f", epoch + 1, total / len(samples))
    meta.train_seconds = round(time.time() - started, 1)
    verifier = DefectVerifier(model, meta)
    if val is not None:
        meta.val_confusion = confusion(verifier, *val)
        meta.val_accuracy = crop_accuracy(meta.val_confusion)
        if box_regression:
            meta.val_box_iou_before, meta.val_box_iou = box_iou_gain(verifier, *val, seed=seed)
    return verifier


def box_iou_gain(
    verifier: DefectVerifier, channels: Sequence[np.ndarray], samples: Sequence[VerifierSample], seed: int = 0
) -> tuple[float, float]:
    """Mean IoU with the annotation of jittered defect boxes, before and after the box head refines them."""
    rng = np.random.default_rng(seed + 7)
    by_image: dict[int, list[Box]] = {}
    for s in samples:
        if s.label < len(verifier.meta.classes):
            by_image.setdefault(s.image, []).append(s.target or s.box)
    before: list[float] = []
    after: list[float] = []
    for image, truths in by_image.items():
        shown = [jitter_box(t, rng) for t in truths]
        refined = verifier.read_channels(channels[image], shown).boxes
        before.extend(b.iou(t) for b, t in zip(shown, truths))
        after.extend(r.iou(t) for r, t in zip(refined, truths))
    return (round(float(np.mean(before)), 4), round(float(np.mean(after)), 4)) if before else (0.0, 0.0)


def confusion(
    verifier: DefectVerifier, channels: Sequence[np.ndarray], samples: Sequence[VerifierSample], batch: int = 256
) -> list[list[int]]:
    """Counts [true label][predicted output] over unjittered crops."""
    import torch

    verifier.model.eval()
    n = len(verifier.outputs)
    mat = [[0] * n for _ in range(n)]
    for start in range(0, len(samples), batch):
        chunk = samples[start : start + batch]
        x = _to_tensor([crop_box(channels[s.image], s.box, verifier.meta) for s in chunk])
        with torch.inference_mode():
            pred = verifier.model(x)[:, :n].argmax(1).numpy()
        for p, s in zip(pred, chunk):
            mat[s.label][int(p)] += 1
    return mat


def crop_accuracy(matrix: list[list[int]]) -> float:
    """Share of a confusion matrix on its diagonal."""
    total = sum(map(sum, matrix))
    return sum(matrix[i][i] for i in range(len(matrix))) / max(1, total)
