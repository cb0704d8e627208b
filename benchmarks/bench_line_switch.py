"""Switching product lines in one process (AdapterBank: one base, adapters flipped in place) vs loading a line's
locator fresh (base + adapter from disk), and whether the detections are identical.

    python benchmarks/bench_line_switch.py --base BASE.pt --adapter pcb=A.safetensors --adapter other=B.safetensors \
        --images 'var/datasets/deeppcb/images/val/*.jpg' --n-images 8

Writes benchmarks/results/line_switch.json: per line the fresh-load time, the switch times (median, p95, max over
`--rounds` round trips through all lines, `None` = the plain base included), predict time, and equality of every
detection (class, box, confidence) between the bank and a freshly loaded model."""

from __future__ import annotations

import argparse
import glob
import json
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _detections(yolo, images, imgsz: int, conf: float, device: str):
    out = []
    for img in images:
        r = yolo.predict(img, imgsz=imgsz, conf=conf, iou=0.5, device=device, verbose=False)[0]
        out.append(r.boxes.data.cpu().numpy())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True)
    ap.add_argument("--adapter", action="append", required=True, help="line=path (two or more)")
    ap.add_argument("--images", required=True, help="glob of test images")
    ap.add_argument("--n-images", type=int, default=8)
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--conf", type=float, default=0.25)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "line_switch.json"))
    args = ap.parse_args()

    from defect_agent.runtime import configure_offline

    configure_offline()
    import cv2
    import numpy as np

    from vision.locator.lora import AdapterBank, load_adapted_yolo
    from vision.locator.yolo import import_yolo

    YOLO = import_yolo()
    lines = dict(item.split("=", 1) for item in args.adapter)
    paths = sorted(glob.glob(args.images))[: args.n_images]
    if not paths:
        raise SystemExit(f"no images match {args.images}")
    images = [cv2.imread(p, cv2.IMREAD_COLOR) for p in paths]

    fresh: dict[str | None, list] = {}
    fresh_load_ms: dict[str, float] = {}
    for line, adapter in lines.items():
        t = time.perf_counter()
        yolo = load_adapted_yolo(args.base, adapter)
        fresh_load_ms[line] = (time.perf_counter() - t) * 1000
        fresh[line] = _detections(yolo, images, args.imgsz, args.conf, args.device)
        del yolo
    t = time.perf_counter()
    base_yolo = YOLO(args.base)
    fresh_load_ms["<base>"] = (time.perf_counter() - t) * 1000
    fresh[None] = _detections(base_yolo, images, args.imgsz, args.conf, args.device)

    t = time.perf_counter()
    bank = AdapterBank(args.base)
    for line, adapter in lines.items():
        bank.add(line, adapter)
    bank_load_ms = (time.perf_counter() - t) * 1000

    order: list[str | None] = [*lines, None]
    switch_ms: dict[str, list[float]] = {str(k): [] for k in order}
    predict_ms: list[float] = []
    equal = {str(k): True for k in order}
    max_abs_diff = {str(k): 0.0 for k in order}
    for _ in range(args.rounds):
        for line in order:
            switch_ms[str(line)].append(bank.switch_ms(line))
            t = time.perf_counter()
            got = _detections(bank.yolo, images[:2], args.imgsz, args.conf, args.device)
            predict_ms.append((time.perf_counter() - t) * 1000 / 2)
            for a, b in zip(got, fresh[line][:2]):
                same = a.shape == b.shape and np.array_equal(a, b)
                equal[str(line)] &= bool(same)
                if a.shape == b.shape and a.size:
                    max_abs_diff[str(line)] = max(max_abs_diff[str(line)], float(np.abs(a - b).max()))
    # full image list once per line, after all the switching
    for line in order:
        bank.use(line)
        got = _detections(bank.yolo, images, args.imgsz, args.conf, args.device)
        equal[str(line)] &= all(a.shape == b.shape and np.array_equal(a, b) for a, b in zip(got, fresh[line]))

    def stats(v: list[float]) -> dict[str, float]:
        s = sorted(v)
        return {
            "median": round(statistics.median(s), 3),
            "p95": round(s[int(0.95 * (len(s) - 1))], 3),
            "max": round(s[-1], 3),
        }

    result = {
        "benchmark": "bench_line_switch",
        "device": args.device,
        "host": platform.node(),
        "base": Path(args.base).name,
        "lines": {k: Path(v).name for k, v in lines.items()},
        "images": len(images),
        "imgsz": args.imgsz,
        "rounds": args.rounds,
        "fresh_load_ms": {k: round(v, 1) for k, v in fresh_load_ms.items()},
        "bank_build_ms": round(bank_load_ms, 1),
        "switch_ms": {k: stats(v) for k, v in switch_ms.items()},
        "predict_ms_per_image": stats(predict_ms),
        "detections_identical_to_fresh": equal,
        "max_abs_diff": max_abs_diff,
        "detections_per_image": {str(k): float(np.mean([len(d) for d in fresh[k]])) for k in order},
        "command": " ".join(sys.argv),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1), encoding="utf-8")
    print(json.dumps({k: result[k] for k in ("fresh_load_ms", "switch_ms", "detections_identical_to_fresh")}, indent=1))


if __name__ == "__main__":
    main()
