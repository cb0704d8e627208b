"""Why ultralytics val and the agent's predict path disagree on the same pcb weights: ultralytics' validator runs
NMS multi-label (`DetectionValidator.postprocess` passes `multi_label=True`: a box survives once per class above the
threshold) at IoU 0.7, the predictor the agent runs single-label at the line's IoU. This scores each locator's own
detections (Locator.predict on the DeepPCB validation composites, conf 0.001) under the four combinations, in one
process. Multi-label is switched on by wrapping `ultralytics.utils.nms.non_max_suppression` for the run (the
predictor has no argument for it); the agent itself stays single-label.

    python benchmarks/bench_nms_protocol.py \\
        --models shipped=models/locator/pcb_adapter.safetensors,full800=var/bench_lora/artifacts/full_ref_nall.pt

Writes benchmarks/results/nms_protocol_pcb.json."""

from __future__ import annotations

import argparse
import functools
import json
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="shipped=models/locator/pcb_adapter.safetensors")
    ap.add_argument("--line", default="pcb")
    ap.add_argument("--src", default=None, help="DeepPCB folder (default ../shared/datasets/deeppcb)")
    ap.add_argument("--max-boards", type=int, default=None)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "nms_protocol_pcb.json"))
    args = ap.parse_args()

    from bench_verifier import _locator, deeppcb_source, validation_boards

    from defect_agent.config import load_line
    from defect_agent.paths import resolve
    from defect_agent.runtime import configure_offline
    from vision.verifier.eval import score_detections

    configure_offline()
    import ultralytics.utils.nms as nms

    line = load_line(args.line)
    boards = validation_boards(deeppcb_source(args.src), args.max_boards)
    original = nms.non_max_suppression
    records = []
    try:
        for item in args.models.split(","):
            name, _, path = item.partition("=")
            locator = _locator(line, resolve(path))
            for multi in (False, True):
                nms.non_max_suppression = functools.partial(original, multi_label=multi)
                for iou in (0.5, 0.7):
                    locator.iou = iou
                    per = [(locator.predict([c], conf=0.001)[0], t) for c, t in boards]
                    s = score_detections(per, locator.class_names, line.locator.conf)
                    records.append(
                        {
                            "id": name,
                            "path": path,
                            "multi_label": multi,
                            "nms_iou": iou,
                            "map50": s.map50,
                            "map50_95": s.map50_95,
                        }
                    )
                    print(
                        f"{name}: multi_label {multi} NMS IoU {iou}: mAP50 {s.map50:.4f} mAP50-95 {s.map50_95:.4f}",
                        flush=True,
                    )
    finally:
        nms.non_max_suppression = original
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "benchmark": "nms_protocol",
                "line": args.line,
                "boards": len(boards),
                "imgsz": line.locator.imgsz,
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
