"""Per-image latency of a line's locator, torch (ultralytics) vs onnxruntime (the file `defect-agent export --line L
--format onnx` writes), at 1 and 2 intra-op threads, in one process; where installed, OpenVINO on the same ONNX file
in float32 and in bfloat16 (computed in bf16 on CPUs with AVX512-BF16 / AMX, as this VM's).

    python benchmarks/bench_onnx.py --line battery_tab --n-images 16 --rounds 3 --threads 1 2

One image per `predict` call (a station inspects one part at a time), generated battery_tab images (640 x 480,
letterboxed to 640 x 480 at imgsz 640 by both engines), after a warm-up. The configurations take turns within each
round so a busy machine slows them alike; ratios are against torch at the same thread count. Boxes are compared
too (lowest IoU, largest confidence difference of matched boxes, unmatched boxes above conf + 0.02).
Writes benchmarks/results/onnx.json."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _compare(reference: list, other: list, conf: float, tol: float = 0.02) -> dict[str, float | int]:
    worst_iou, worst_conf, unmatched = 1.0, 0.0, 0
    for ref_dets, dets in zip(reference, other):
        used: set[int] = set()
        for r in ref_dets:
            best = max(
                ((i, d) for i, d in enumerate(dets) if d.defect_class == r.defect_class and i not in used),
                key=lambda item: r.box.iou(item[1].box),
                default=None,
            )
            if best is None or r.box.iou(best[1].box) < 0.5:
                unmatched += r.confidence >= conf + tol
                continue
            used.add(best[0])
            worst_iou = min(worst_iou, r.box.iou(best[1].box))
            worst_conf = max(worst_conf, abs(r.confidence - best[1].confidence))
        unmatched += sum(d.confidence >= conf + tol for i, d in enumerate(dets) if i not in used)
    return {"min_iou": worst_iou, "max_conf_diff": worst_conf, "unmatched_above_conf_tol": unmatched}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--line", default="battery_tab")
    ap.add_argument("--n-images", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--seed", type=int, default=2024, help="generator seed of the images")
    ap.add_argument("--onnx-dir", help="a folder holding locator.onnx (default: export into a temporary folder)")
    ap.add_argument("--no-openvino", action="store_true", help="skip OpenVINO even where it is installed")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "onnx.json"))
    args = ap.parse_args()

    from defect_agent.runtime import configure_offline

    configure_offline()
    import onnxruntime
    import torch

    from defect_agent.config import load_line
    from vision.datasets.synth.battery_tab import generate_battery_tab, image_seed
    from vision.locator import Locator
    from vision.locator.export import export_locator
    from vision.locator.model import OnnxLocator

    line = load_line(args.line)
    if args.line != "battery_tab":
        raise SystemExit("images are generated for battery_tab only")
    images = [generate_battery_tab(image_seed(args.seed, i, 0))[0] for i in range(args.n_images)]

    tmp = None
    if args.onnx_dir:
        onnx_dir = Path(args.onnx_dir)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="bench-onnx-")
        onnx_dir = Path(tmp.name)
        t = time.perf_counter()
        export_locator(line, onnx_dir)
        print(f"exported {onnx_dir / 'locator.onnx'} in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    onnx_file = onnx_dir / "locator.onnx"

    try:
        import openvino

        openvino_version: str | None = None if args.no_openvino else openvino.__version__
    except ImportError:
        openvino_version = None

    torch_loc = Locator.from_line(line)
    import ultralytics.utils.torch_utils as tu

    configs: dict[str, tuple[str, int, Any]] = {}
    for n in args.threads:
        configs[f"torch/{n}"] = ("torch", n, torch_loc)
        configs[f"onnxruntime/{n}"] = (
            "onnxruntime",
            n,
            Locator.from_line(line, engine="onnx", onnx_dir=onnx_dir, threads=n),
        )
        for precision in ("f32", "bf16") if openvino_version else ():
            ov_loc = OnnxLocator.load(line, onnx_dir=onnx_dir, threads=n)
            # a detector of its own: the shared one (same file, same threads) belongs to the onnxruntime entry
            from vision.locator.onnx_engine import OnnxDetector
            from vision.onnx_session import OpenVinoSession

            ov_loc.detector = OnnxDetector(onnx_file, threads=n)
            ov_loc.detector.session = OpenVinoSession(onnx_file, n, precision)
            configs[f"openvino-{precision}/{n}"] = (f"openvino-{precision}", n, ov_loc)

    def set_torch_threads(n: int) -> None:
        tu.NUM_THREADS = n  # ultralytics' select_device resets torch to this on a predictor set-up
        torch.set_num_threads(n)

    conf = line.locator.conf
    detections: dict[str, list] = {}
    for name, (_engine, n, loc) in configs.items():  # warm-up: predictor set-up, session arenas
        set_torch_threads(n)
        loc.predict(images[:2], conf=conf)
        detections[name] = [loc.predict([im], conf=conf)[0] for im in images]
    load_before = os.getloadavg()  # the machine may be shared: its load says how far to trust 2-thread figures
    timings: dict[str, list[float]] = {name: [] for name in configs}
    # process CPU time as well: at one thread it barely moves when other jobs share the cores, wall time does
    cpu_ms: dict[str, float] = dict.fromkeys(configs, 0.0)
    threads_seen: dict[str, int] = {}
    for _ in range(args.rounds):
        for name, (_engine, n, loc) in configs.items():
            set_torch_threads(n)
            cpu = time.process_time()
            for im in images:
                t = time.perf_counter()
                loc.predict([im], conf=conf)
                timings[name].append((time.perf_counter() - t) * 1000)
            cpu_ms[name] += (time.process_time() - cpu) * 1000
            threads_seen[name] = torch.get_num_threads()

    rows = []
    for name, (engine, n, _) in configs.items():
        median = statistics.median(timings[name])
        torch_median = statistics.median(timings[f"torch/{n}"])
        rows.append(
            {
                "engine": engine,
                "threads": n,
                "ms_per_image_median": round(median, 2),
                "ms_per_image_p90": round(sorted(timings[name])[int(0.9 * (len(timings[name]) - 1))], 2),
                "cpu_ms_per_image": round(cpu_ms[name] / len(timings[name]), 2),
                "speedup_vs_torch_same_threads": round(torch_median / median, 3),
                "torch_threads_during_run": threads_seen[name],
                "parity_vs_torch": None
                if engine == "torch"
                else _compare(detections[f"torch/{n}"], detections[name], conf),
            }
        )
    result = {
        "benchmark": "bench_onnx",
        "line": args.line,
        "host": platform.node(),
        "cpu_count": os.cpu_count(),
        "images": len(images),
        "image_shape": list(images[0].shape),
        "imgsz": line.locator.imgsz,
        "conf": conf,
        "rounds": args.rounds,
        "load_average_1min": {"before": round(load_before[0], 2), "after": round(os.getloadavg()[0], 2)},
        "onnx_file": {"name": onnx_file.name, "bytes": onnx_file.stat().st_size},
        "versions": {
            "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__,
            "openvino": openvino_version,
            "locator": torch_loc.version,
        },
        "rows": rows,
        "command": " ".join(["python", *sys.argv]),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1), encoding="utf-8")
    print(f"{'engine':<14}{'threads':>8}{'ms/img':>9}{'p90':>9}{'cpu ms':>9}{'vs torch':>10}  parity")
    for r in rows:
        p = r["parity_vs_torch"]
        parity = (
            "-"
            if p is None
            else f"IoU>={p['min_iou']:.4f} dconf<={p['max_conf_diff']:.4f} extra {p['unmatched_above_conf_tol']}"
        )
        print(
            f"{r['engine']:<14}{r['threads']:>8}{r['ms_per_image_median']:>9.1f}{r['ms_per_image_p90']:>9.1f}"
            f"{r['cpu_ms_per_image']:>9.1f}"
            f"{r['speedup_vs_torch_same_threads']:>9.2f}x  {parity}"
        )
    print(f"wrote {out}", file=sys.stderr)
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
