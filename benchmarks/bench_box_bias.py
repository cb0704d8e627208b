"""Systematic box error of pcb locators: each annotated defect on the DeepPCB validation boards is matched to the
locator's best-overlapping detection at the operating confidence (IoU >= 0.3, any class), and the signed edge
errors (prediction - annotation, x1 y1 x2 y2, in native pixels) are averaged. A locator whose boxes are too large
has x1 / y1 < 0 and x2 / y2 > 0; mAP50-95 punishes that where mAP50 barely notices. Locators are full checkpoints
(.pt) or LoRA adapters (.safetensors) over the line's base, each at its own `@imgsz`:

    python benchmarks/bench_box_bias.py --models p3_640=models/locator/pcb_adapter.safetensors@640,\\
        full_640=var/bench_lora640/artifacts/full_ref_nall_init_lr0.0005.pt@640

Writes benchmarks/results/box_bias_pcb.json."""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from vision.detection import Box  # noqa: E402  (after the path set-up, as a script)

MATCH_IOU = 0.3


def edge_errors(preds: list[Box], truths: list[Box]) -> tuple[list[np.ndarray], list[float]]:
    """(prediction - truth) edges and the IoU for every truth box whose best-overlapping prediction reaches
    MATCH_IOU; a prediction may serve several truths (this measures box geometry, not counting)."""
    errors, ious = [], []
    for t in truths:
        if not preds:
            continue
        best = max(preds, key=t.iou)
        overlap = t.iou(best)
        if overlap >= MATCH_IOU:
            errors.append(np.subtract(best.as_list(), t.as_list()))
            ious.append(overlap)
    return errors, ious


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="shipped=models/locator/pcb_adapter.safetensors@640")
    ap.add_argument("--line", default="pcb")
    ap.add_argument("--src", default=None, help="DeepPCB folder (default ../shared/datasets/deeppcb)")
    ap.add_argument("--max-boards", type=int, default=None)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "box_bias_pcb.json"))
    args = ap.parse_args()

    from bench_verifier import _locator, deeppcb_source, validation_boards

    from defect_agent.config import load_line
    from defect_agent.paths import resolve
    from defect_agent.runtime import configure_offline

    configure_offline()
    line = load_line(args.line)
    boards = [
        (image, [box for _, box in truth])
        for image, truth in validation_boards(deeppcb_source(args.src), args.max_boards)
    ]
    records = []
    for item in args.models.split(","):
        name, _, rest = item.partition("=")
        path, _, size = rest.partition("@")
        imgsz = int(size) if size else line.locator.imgsz
        at_size = line.model_copy(update={"locator": line.locator.model_copy(update={"imgsz": imgsz})})
        locator = _locator(at_size, resolve(path))
        errors, ious = [], []
        for image, truths in boards:
            dets = locator.predict([image], conf=line.locator.conf)[0]
            e, i = edge_errors([d.box for d in dets], truths)
            errors += e
            ious += i
        err = np.array(errors)
        rec = {
            "id": name,
            "path": path,
            "imgsz": imgsz,
            "truths": sum(len(t) for _, t in boards),
            "matched": len(err),
            "mean_iou": float(np.mean(ious)),
            "mean_signed_error_px": dict(zip(("x1", "y1", "x2", "y2"), np.round(err.mean(0), 3).tolist())),
            "mean_abs_error_px": dict(zip(("x1", "y1", "x2", "y2"), np.round(np.abs(err).mean(0), 3).tolist())),
            "mean_width_excess_px": float(np.mean(err[:, 2] - err[:, 0])),
            "mean_height_excess_px": float(np.mean(err[:, 3] - err[:, 1])),
        }
        records.append(rec)
        print(
            f"{name} @ {imgsz}: matched {rec['matched']}/{rec['truths']}, mean IoU {rec['mean_iou']:.3f}, "
            f"signed x1 y1 x2 y2 {rec['mean_signed_error_px']}, width {rec['mean_width_excess_px']:+.2f} px, "
            f"height {rec['mean_height_excess_px']:+.2f} px",
            flush=True,
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "benchmark": "box_bias",
                "line": args.line,
                "boards": len(boards),
                "conf": line.locator.conf,
                "match_iou": MATCH_IOU,
                "host": platform.node(),
                "command": " ".join(sys.argv),
                "records": records,
            },
            indent=1,
        ),
        encoding="utf-8",
    )


if __name__ == "__main__":
    main()
