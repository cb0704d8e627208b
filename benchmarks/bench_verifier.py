"""The class verifier (vision/verifier.py) behind several pcb locators: each locator's detections on the DeepPCB
validation groups scored as the detector gives them and after the verifier relabels them, in one process, so the
gain is a difference over the same boxes. Locators are full checkpoints (.pt) or LoRA adapters (.safetensors) over
the line's base, e.g. the artifacts of benchmarks/bench_lora.py:

    python benchmarks/bench_verifier.py \\
        --models shipped=models/locator/pcb_adapter.safetensors,full800=var/bench_lora/artifacts/full_ref_nall.pt

Writes benchmarks/results/verifier_pcb.json and .md."""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _locator(line, path: Path):
    from vision.locator import Locator

    cfg = line.locator.model_copy(update={"adapter": str(path), "weights": line.locator.weights}
                                  if path.suffix == ".safetensors" else {"adapter": None, "weights": str(path)})
    return Locator.from_line(line.model_copy(update={"locator": cfg}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="shipped=models/locator/pcb_adapter.safetensors",
                    help="comma-separated id=path (a .pt checkpoint or a .safetensors adapter over the line's base)")
    ap.add_argument("--line", default="pcb")
    ap.add_argument("--src", default=None, help="DeepPCB folder (default ../shared/datasets/deeppcb)")
    ap.add_argument("--max-boards", type=int, default=None)
    ap.add_argument("--verifier", default=None, help="verifier weights (default: the line's locator.verifier)")
    ap.add_argument("--tta", default=None, choices=["on", "off"], help="default: the line's locator.verifier_tta")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "verifier_pcb.json"))
    ap.add_argument("--render", action="store_true", help="only rewrite --out's .md table from its .json")
    args = ap.parse_args()
    if args.render:
        summary = json.loads(Path(args.out).read_text(encoding="utf-8"))
        print(write_table(Path(args.out), summary))
        return

    from defect_agent.config import load_line
    from defect_agent.paths import resolve, shared_dataset
    from defect_agent.runtime import configure_offline
    from vision.verifier import DefectVerifier
    from vision.verifier_eval import evaluate_verifier

    configure_offline()
    line = load_line(args.line)
    updates = {}
    if args.verifier:
        updates["verifier"] = args.verifier
    if args.tta:
        updates["verifier_tta"] = args.tta == "on"
    line = line.model_copy(update={"locator": line.locator.model_copy(update=updates)})
    verifier = DefectVerifier.for_line(line)
    src = Path(args.src) if args.src else shared_dataset("deeppcb")
    if src is None or not src.exists():
        raise SystemExit("DeepPCB not found: pass --src (see ../shared/datasets/README.md)")
    records = []
    for item in args.models.split(","):
        name, _, path = item.partition("=")
        started = time.time()
        report = evaluate_verifier(_locator(line, resolve(path)), verifier, src, "val",
                                   conf_operating=line.locator.conf, max_boards=args.max_boards)
        records.append({"id": name, "path": path, "seconds": round(time.time() - started, 1), **report.model_dump()})
        d, v, m = report.detector, report.verified, report.verified_multilabel
        print(f"{name}: mAP50 {d.map50:.4f} -> {v.map50:.4f} -> {m.map50:.4f} (+alternatives), mAP50-95 "
              f"{d.map50_95:.4f} -> {v.map50_95:.4f} -> {m.map50_95:.4f}, class accuracy {d.class_accuracy:.4f} -> "
              f"{v.class_accuracy:.4f}", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    summary = {"benchmark": "verifier", "line": args.line, "verifier": verifier.version, "tta": verifier.tta,
               "imgsz": line.locator.imgsz,
               "iou": line.locator.iou, "conf": line.locator.conf, "host": platform.node(),
               "command": " ".join(sys.argv), "records": records}
    out.write_text(json.dumps(summary, indent=1), encoding="utf-8")
    print(write_table(out, summary))


def write_table(out: Path, summary: dict) -> str:
    rows = ["| locator | mAP50 | + verifier | + alternatives | mAP50-95 | + verifier | + alternatives | "
            "class accuracy | + verifier |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in summary["records"]:
        d, v = r["detector"], r["verified"]
        m = r.get("verified_multilabel") or {"map50": float("nan"), "map50_95": float("nan")}
        rows.append(f"| {r['id']} | {d['map50']:.4f} | {v['map50']:.4f} | {m['map50']:.4f} | {d['map50_95']:.4f} | "
                    f"{v['map50_95']:.4f} | {m['map50_95']:.4f} | {d['class_accuracy']:.4f} | "
                    f"{v['class_accuracy']:.4f} |")
    table = "\n".join(rows) + "\n"
    out.with_suffix(".md").write_text(
        f"DeepPCB validation (200 boards), verifier {summary['verifier']} (tta {summary.get('tta', False)}); mAP "
        f"from the pipeline's own detections (Locator.predict at imgsz {summary.get('imgsz', 320)}, conf 0.001, NMS "
        f"IoU {summary.get('iou', 0.5)}); + verifier: its classes and refined boxes ranked by the geometric mean of "
        f"detector confidence and verifier probability; + alternatives: each other class the verifier gives >= "
        f"0.05 as one more detection (the multi-label reading ultralytics' validator scores), "
        f"integrated by ultralytics' ap_per_class; ultralytics val (`eval locator`, bench_lora.py) runs the same "
        f"weights through its own batching and letterbox and can differ; class accuracy = detections at conf "
        f"{summary.get('conf', 0.25)} on a defect (IoU >= 0.5) with its class.\n\n" + table, encoding="utf-8")
    return table


if __name__ == "__main__":
    main()
