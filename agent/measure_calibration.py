"""Estimating a line's measurement uncertainty (agent.uncertainty) from findings matched to ground truth:
battery_tab's generator knows every box and the true weld offset; DeepPCB's annotations give the boxes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from agent.calibration import TruthBoxes, match_findings
from agent.uncertainty import ErrorSample
from agent.verdict import DefectFinding


def box_errors(
    findings: list[DefectFinding], truth: TruthBoxes, mm_per_px: float, iou: float = 0.5
) -> list[ErrorSample]:
    """Measured minus annotated length / width / area of every detector finding matched to a truth box."""
    from agent.groundtruth import box_measurements

    out: list[ErrorSample] = []
    for f, box in match_findings(findings, truth, iou):
        if box is None:
            continue
        exact = box_measurements(box, mm_per_px)
        for key, annotated in exact.items():
            if key in f.measurements:
                out.append((f.defect_class, key, f.measurements[key] - annotated))
    return out


def offset_errors(findings: list[DefectFinding], truth_offsets: dict[str, float]) -> list[ErrorSample]:
    """Measured minus true offset of derived offset findings (one true offset per class on the image)."""
    return [
        (f.defect_class, "offset_mm", f.measurements["offset_mm"] - truth_offsets[f.defect_class])
        for f in findings
        if f.source == "derived" and "offset_mm" in f.measurements and f.defect_class in truth_offsets
    ]


def battery_tab_errors(inspector, out: Path, n: int, seed: int) -> Iterator[list[ErrorSample]]:
    """Per freshly generated battery_tab image: box errors against the generator's boxes and the weld offset's
    error against its true offset."""
    from agent.images import read_image
    from vision.datasets.synth.battery_tab import generate_batch, read_truth

    paths = generate_batch(out, n=n, seed=seed)
    truths = {t.image: t for t in read_truth(out / "truth.jsonl")}
    defects = {c.name for c in inspector.line.classes if c.role == "defect"}
    offsets = [d.name for d in inspector.line.derived if d.rule == "offset"]
    for p in paths:
        truth = truths[p.name]
        findings = inspector.analyse(read_image(p, inspector.line.image_size))
        boxes = [(o.name, o.box) for o in truth.objects if o.name in defects]
        true_offsets = {name: truth.offset_mm for name in offsets} if truth.offset_mm is not None else {}
        yield box_errors(findings, boxes, truth.mm_per_px) + offset_errors(findings, true_offsets)


def deeppcb_errors(inspector, root: Path, split: str, max_boards: int | None = None) -> Iterator[list[ErrorSample]]:
    """Per DeepPCB board of one split: box errors against its annotations."""
    from agent.evaluation import deeppcb_findings

    mm = inspector.line.calibration.mm_per_px
    for _, findings, boxes, _ in deeppcb_findings(inspector, root, split, max_boards):
        yield box_errors(findings, boxes, mm)
