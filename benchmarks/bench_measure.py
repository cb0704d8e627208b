"""Weld-offset measurement error on generated battery_tab images, with ground-truth boxes and with boxes jittered
by up to +-3 px per side (a detector's typical error). Prints median / p95 / max absolute error in mm and writes
benchmarks/results/measure.json.

    .venv/bin/python benchmarks/bench_measure.py [--n 200] [--seed 2024] [--jitter 3] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import numpy as np

from defect_agent.config import load_line
from vision.datasets.synth import BatteryTabParams, generate_battery_tab, image_seed
from vision.detection import Box, Detection
from vision.measure import blob_area_px, measure_findings, measure_offset, to_gray

RESULTS = Path(__file__).resolve().parent / "results" / "measure.json"


def jitter(box: Box, px: float, rng: np.random.Generator) -> Box:
    d = rng.uniform(-px, px, size=4)
    return Box(x1=box.x1 + d[0], y1=box.y1 + d[1], x2=box.x2 + d[2], y2=box.y2 + d[3])


def stats(errors: list[float]) -> dict[str, float]:
    a = np.abs(np.asarray(errors))
    return {
        "n": int(a.size),
        "median_mm": round(float(np.median(a)), 4),
        "p95_mm": round(float(np.percentile(a, 95)), 4),
        "max_mm": round(float(a.max()), 4),
        "mean_mm": round(float(a.mean()), 4),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--jitter", type=float, default=3.0)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument(
        "--locator",
        action="store_true",
        help="also measure on the shipped locator's boxes (models/locator/battery_tab.pt)",
    )
    args = ap.parse_args()

    line = load_line("battery_tab")
    locator = None
    if args.locator:
        from defect_agent.runtime import configure_offline

        configure_offline()
        from vision.locator.model import Locator

        locator = Locator.from_line(line)
    err_locator: list[float] = []
    locator_missed = 0
    mm = line.calibration.mm_per_px
    params = BatteryTabParams(force_missing_weld=False, mm_per_px=mm)  # the offset needs a weld
    rng = np.random.default_rng(args.seed)
    err = {"gt_boxes": [], "jittered": [], "box_centres_only": []}
    centre_err = {"tab_px": [], "weld_px": []}
    decisions: dict = {"wrong_side_of_0.3mm": 0, "n": 0, "cases": []}
    refined = 0
    blob_rel: dict[str, list[float]] = {"spatter": [], "crack": [], "burn": []}
    blob_seen = {k: 0 for k in blob_rel}
    t_measure = 0.0
    worst: list[tuple[float, int]] = []
    for i in range(args.n):
        seed = image_seed(args.seed, i, 9)
        img, truth = generate_battery_tab(seed, params)
        tab, weld = truth.boxes("tab")[0], truth.boxes("weld")[0]
        gt = truth.offset_mm
        m = measure_offset(img, weld, tab, mm)
        err["gt_boxes"].append(m.offset_mm - gt)
        jt, jw = jitter(tab, args.jitter, rng), jitter(weld, args.jitter, rng)
        dets = [
            Detection(defect_class="tab", class_id=0, box=jt, confidence=0.9),
            Detection(defect_class="weld", class_id=1, box=jw, confidence=0.9),
        ]
        t0 = time.perf_counter()
        found = measure_findings(img, dets, line)
        t_measure += time.perf_counter() - t0
        off = next(f for f in found if f.defect_class == "weld_offset")
        err["jittered"].append(off.measurements["offset_mm"] - gt)
        worst.append((abs(off.measurements["offset_mm"] - gt), seed))
        refined += int(off.measurements["refined"] == 1.0)
        mj = measure_offset(img, jw, jt, mm)
        centre_err["tab_px"].append(math.dist(mj.outer_center, truth.tab_center_px))
        centre_err["weld_px"].append(math.dist(mj.inner_center, truth.weld_center_px))
        err["box_centres_only"].append(math.dist(jw.center, jt.center) * mm - gt)
        decisions["n"] += 1
        if locator is not None:
            dets = locator.predict([img])[0]
            offs = [f for f in measure_findings(img, dets, line) if f.defect_class == "weld_offset"]
            if offs:
                err_locator.append(max(offs, key=lambda f: f.confidence).measurements["offset_mm"] - gt)
            else:
                locator_missed += 1
        gray = to_gray(img)
        for obj in truth.objects:
            if obj.name in blob_rel and obj.area_px:
                blob_seen[obj.name] += 1
                area = blob_area_px(gray, obj.box)
                if area is not None:
                    blob_rel[obj.name].append(area / obj.area_px - 1.0)
        if (off.measurements["offset_mm"] > 0.3) != (gt > 0.3):
            decisions["wrong_side_of_0.3mm"] += 1
            decisions["cases"].append(
                {"seed": seed, "truth_mm": round(gt, 4), "measured_mm": round(off.measurements["offset_mm"], 4)}
            )
    if locator is not None:
        err["locator_boxes"] = err_locator
    result = {
        "benchmark": "weld offset measurement (vision.measure) on generated battery_tab images",
        "command": f"benchmarks/bench_measure.py --n {args.n} --seed {args.seed} --jitter {args.jitter}",
        "machine": platform.platform(),
        "abs_error": {k: stats(v) for k, v in err.items()},
        "centre_error_px_jittered": {
            k: {"median": round(float(np.median(v)), 3), "p95": round(float(np.percentile(v, 95)), 3)}
            for k, v in centre_err.items()
        },
        "refined_share": round(refined / args.n, 4),
        "locator_missed_tab_or_weld": locator_missed if locator is not None else None,
        "blob_area_vs_rendered_area_gt_boxes": {
            k: {
                "segmented": f"{len(v)}/{blob_seen[k]}",
                "relative_error_p10_p50_p90": [round(float(x), 3) for x in np.percentile(v, [10, 50, 90])]
                if v
                else None,
            }
            for k, v in blob_rel.items()
        },
        "decisions_wrong_at_0.3mm": decisions,
        "measure_findings_ms_per_image": round(1000 * t_measure / args.n, 2),
        "worst_jittered": [{"abs_error_mm": round(e, 4), "seed": s} for e, s in sorted(worst, reverse=True)[:5]],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    for k, v in result["abs_error"].items():
        print(f"{k:18s} n={v['n']}  median {v['median_mm']:.4f} mm  p95 {v['p95_mm']:.4f} mm  max {v['max_mm']:.4f} mm")
    print(f"centre error (jittered boxes, px): {result['centre_error_px_jittered']}")
    print(
        f"refined: {result['refined_share']:.1%}  wrong side of 0.3 mm: {decisions['wrong_side_of_0.3mm']}/{decisions['n']}"
        f"  measure_findings: {result['measure_findings_ms_per_image']} ms/image"
    )
    print(f"worst: {result['worst_jittered']}")
    print(f"blob area vs rendered area: {result['blob_area_vs_rendered_area_gt_boxes']}")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
