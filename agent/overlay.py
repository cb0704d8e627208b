"""Annotated overlay images: boxes, class, probability and measurements drawn on the inspected image."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from agent.verdict import Verdict

_COLOURS = {"fail": (40, 40, 220), "review": (0, 170, 240), "pass": (60, 170, 60)}


def draw_overlay(image: np.ndarray, verdict: Verdict) -> np.ndarray:
    canvas = image.copy()
    for finding in verdict.defects:
        matched = bool(finding.matched_clauses)
        colour = (40, 40, 220) if matched else (200, 160, 60)
        b = finding.box
        cv2.rectangle(canvas, (int(b.x1), int(b.y1)), (int(b.x2), int(b.y2)), colour, 2)
        extra = ""
        if "offset_mm" in finding.measurements:
            extra = f" {finding.measurements['offset_mm']:.2f}mm"
        elif "length_mm" in finding.measurements:
            extra = f" {finding.measurements['length_mm']:.2f}mm"
        label = f"{finding.defect_class} {finding.probability:.2f}{extra}"
        # a filled tag in the box colour with white text stays legible on any background (an outline smears)
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1)
        x = min(max(int(b.x1), 0), max(canvas.shape[1] - tw - 4, 0))
        y = max(int(b.y1) - 4, th + base + 24)
        cv2.rectangle(canvas, (x, y - th - base), (x + tw + 4, y + 2), colour, -1)
        cv2.putText(
            canvas, label, (x + 2, y - base + 1), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA
        )
    banner = f"{verdict.verdict.upper()}  score {verdict.score:.2f}  match={verdict.matches_query}"
    cv2.rectangle(canvas, (0, 0), (canvas.shape[1], 22), (0, 0, 0), -1)
    cv2.putText(canvas, banner, (6, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, _COLOURS[verdict.verdict], 1, cv2.LINE_AA)
    return canvas


def write_overlay(image: np.ndarray, verdict: Verdict, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / (Path(verdict.image).stem + "_overlay.png")
    ok, data = cv2.imencode(".png", draw_overlay(image, verdict))
    if not ok:
        raise OSError(f"could not encode overlay for {verdict.image}")
    target.write_bytes(data.tobytes())
    return target
