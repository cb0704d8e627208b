"""Normal-only anomaly model (vision.anomaly, PatchCore over EfficientNet-Lite0) on two real lines, and its speed.

    .venv/bin/python benchmarks/bench_anomaly.py [--parts deeppcb,deeppcb_same,elpv,speed] [--size 256]
        [--deeppcb DIR] [--elpv DIR] [--fit 200] [--calib 200] [--max-false-alarm 0.01] [--out PATH]

deeppcb       DeepPCB as a new line: fit on defect-free templates of the TRAIN groups (`--fit`), calibrate on other
              train templates (`--calib`), test on the validation boards (vision.datasets.deeppcb.VAL_GROUPS):
              their `_test` images (defective) against their templates (normal). Image AUROC, false-alarm and miss
              rate at the threshold calibrated at `--max-false-alarm`, region recall against the annotated boxes
              (found: a region with IoU > 0.1 or containing the box centre), seconds per image, fit time.
deeppcb_same  the same on the train boards themselves (fit / calibrate / test on disjoint crops of the same four
              boards): the situation of a line whose own normal parts are available.
elpv          ELPV solar cells (`pip download --no-deps elpv-dataset==1.0.0.post1 -d var/elpv_dl`, unzip into
              var/elpv): fit on `--fit` functional cells (label 0), calibrate on `--calib` others, test the rest of
              the functional cells against the defective ones (label >= 0.5): AUROC, accuracy at the threshold.
speed         ms per image at `--size` px (one image per call, after warm-up) against the backbone alone in the
              same process, and fit seconds for 200 images held in memory.

Writes benchmarks/results/anomaly.json and .md and prints the table. The machine is shared: its load average is
recorded beside the timings."""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DEEPPCB_MM_PER_PX = 1.0 / 48.0  # shared/datasets/README.md: about 48 pixels per millimetre
ELPV_DEFAULT = ROOT / "var" / "elpv"
log = logging.getLogger("bench_anomaly")


def _rates(model, normal: list[float], anomalous: list[float]) -> dict[str, float]:
    fa = sum(s > model.threshold for s in normal) / len(normal)
    miss = sum(s <= model.threshold for s in anomalous) / len(anomalous)
    correct = sum(s <= model.threshold for s in normal) + sum(s > model.threshold for s in anomalous)
    return {
        "false_alarm": round(fa, 4),
        "miss": round(miss, 4),
        "accuracy": round(correct / (len(normal) + len(anomalous)), 4),
    }


def _operating_points(normal_cal: list[float], normal: list[float], anomalous: list[float]) -> dict[str, Any]:
    """Rates on the test set at thresholds calibrated on held-back normals for a few false-alarm targets, and the
    best accuracy any threshold reaches on the test set itself (an optimistic bound, not an operating point)."""
    from vision.embedder.texture import calibrate_threshold

    out: dict[str, Any] = {}
    for target in (0.01, 0.05, 0.10):
        t = calibrate_threshold(normal_cal, target)
        fa = sum(s > t for s in normal) / len(normal)
        miss = sum(s <= t for s in anomalous) / len(anomalous)
        acc = (sum(s <= t for s in normal) + sum(s > t for s in anomalous)) / (len(normal) + len(anomalous))
        out[f"{target:.2f}"] = {"threshold": round(t, 4), "false_alarm": round(fa, 4), "miss": round(miss, 4)}
        out[f"{target:.2f}"]["accuracy"] = round(acc, 4)
    best = 0.0
    for t in sorted(set(normal) | set(anomalous)):
        acc = (sum(s <= t for s in normal) + sum(s > t for s in anomalous)) / (len(normal) + len(anomalous))
        best = max(best, acc)
    out["best_accuracy_oracle"] = round(best, 4)
    return out


def _found(gt, regions) -> bool:
    cx, cy = gt.center
    return any(r.box.iou(gt) > 0.1 or r.box.contains(cx, cy) for r in regions)


def _read_grey(path: Path):
    import cv2

    from defect_agent.errors import ImageReadError

    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise ImageReadError(f"cannot read {path}")
    return image


def run_deeppcb(args, root: Path, same_boards: bool) -> dict[str, Any]:
    from vision.anomaly import AnomalyConfig, AnomalyModel
    from vision.datasets.deeppcb import DEEPPCB_CLASSES, parse_annotation, template_pairs
    from vision.embedder.metrics import auroc

    train = template_pairs(root, "train")
    random.Random(args.seed).shuffle(train)
    fit_pairs, cal_pairs = train[: args.fit], train[args.fit : args.fit + args.calib]
    if same_boards:
        test_pairs = train[args.fit + args.calib :][: args.test_max]
        name = "deeppcb_same"
    else:
        test_pairs = template_pairs(root, "val")[: args.test_max]
        name = "deeppcb"
    model = AnomalyModel(AnomalyConfig(image_size=args.pcb_size, stages=tuple(args.pcb_stages), margin=args.pcb_margin))
    t0 = time.perf_counter()
    model.fit([_read_grey(p.template) for p in fit_pairs])  # type: ignore[arg-type]
    fit_s = time.perf_counter() - t0
    cal = model.score_batch([_read_grey(p.template) for p in cal_pairs])  # type: ignore[arg-type]
    model.calibrate([r.score for r in cal], args.max_false_alarm, [r.peak for r in cal])

    from vision.embedder.texture import calibrate_threshold

    # looser map thresholds (calibrated on the same held-back normals): how recall grows with false regions
    loose = {f"{t:.2f}": calibrate_threshold([r.peak for r in cal], t) for t in (0.05, 0.10)}
    loose_counts = {k: {"found": 0, "regions": 0, "matched": 0, "normal_regions": 0} for k in loose}
    normal, anomalous, found, total = [], [], 0, 0
    per_class = {c: [0, 0] for c in DEEPPCB_CLASSES}
    regions_defective, regions_matched, regions_normal = 0, 0, 0
    t0 = time.perf_counter()
    n_scored = 0
    for start in range(0, len(test_pairs), model.config.batch_size):
        chunk = test_pairs[start : start + model.config.batch_size]
        tests = model.score_batch([_read_grey(p.test) for p in chunk])
        temps = model.score_batch([_read_grey(p.template) for p in chunk])  # type: ignore[arg-type]
        n_scored += 2 * len(chunk)
        for pair, rt, rn in zip(chunk, tests, temps):
            anomalous.append(rt.score)
            normal.append(rn.score)
            regs = model.regions(rt, DEEPPCB_MM_PER_PX, min_area_px=args.min_area)
            regions_normal += len(model.regions(rn, DEEPPCB_MM_PER_PX, min_area_px=args.min_area))
            boxes = parse_annotation(pair.annotation.read_text(encoding="utf-8"), str(pair.annotation))
            regions_defective += len(regs)
            regions_matched += sum(any(r.box.iou(b) > 0.1 or r.box.contains(*b.center) for _, b in boxes) for r in regs)
            for key, cut in loose.items():
                counts = loose_counts[key]
                more = model.regions(rt, DEEPPCB_MM_PER_PX, min_area_px=args.min_area, threshold=cut)
                counts["found"] += sum(_found(b, more) for _, b in boxes)
                counts["regions"] += len(more)
                counts["matched"] += sum(
                    any(r.box.iou(b) > 0.1 or r.box.contains(*b.center) for _, b in boxes) for r in more
                )
                counts["normal_regions"] += len(model.regions(rn, DEEPPCB_MM_PER_PX, args.min_area, threshold=cut))
            for k, box in boxes:
                hit = _found(box, regs)
                found += hit
                total += 1
                per_class[DEEPPCB_CLASSES[k]][0] += hit
                per_class[DEEPPCB_CLASSES[k]][1] += 1
    score_s = time.perf_counter() - t0
    result = {
        "name": name,
        "config": model.config.model_dump(mode="json"),
        "normal_fit": len(fit_pairs),
        "normal_calibration": len(cal_pairs),
        "test_defective": len(anomalous),
        "test_normal": len(normal),
        "image_auroc": round(auroc(normal + anomalous, [False] * len(normal) + [True] * len(anomalous)), 4),
        "threshold": round(model.threshold or 0.0, 4),
        "map_threshold": round(model.map_threshold or 0.0, 4),
        **_rates(model, normal, anomalous),
        "operating_points": _operating_points([r.score for r in cal], normal, anomalous),
        "region_recall": round(found / max(total, 1), 4),
        "boxes": total,
        "region_recall_per_class": {c: round(h / n, 4) if n else None for c, (h, n) in per_class.items()},
        "regions_per_defective_image": round(regions_defective / max(len(anomalous), 1), 2),
        "region_precision": round(regions_matched / max(regions_defective, 1), 4),
        "regions_per_normal_image": round(regions_normal / max(len(normal), 1), 3),
        "region_operating_points": {
            key: {
                "map_threshold": round(loose[key], 4),
                "region_recall": round(c["found"] / max(total, 1), 4),
                "region_precision": round(c["matched"] / max(c["regions"], 1), 4),
                "regions_per_defective_image": round(c["regions"] / max(len(anomalous), 1), 2),
                "regions_per_normal_image": round(c["normal_regions"] / max(len(normal), 1), 3),
            }
            for key, c in loose_counts.items()
        },
        "seconds_per_image": round(score_s / max(n_scored, 1), 4),
        "fit_seconds": round(fit_s, 1),
        "fit": model.fit_info,
    }
    log.info("%s: %s", name, {k: v for k, v in result.items() if not isinstance(v, dict)})
    return result


def _elpv_labels(root: Path) -> list[tuple[Path, float, str]]:
    csv = root / "elpv_dataset" / "data" / "labels.csv"
    if not csv.is_file():
        raise FileNotFoundError(
            f"{csv} not found: pip download --no-deps elpv-dataset==1.0.0.post1 -d var/elpv_dl && "
            "unzip var/elpv_dl/elpv_dataset-1.0.0.post1-py3-none-any.whl -d var/elpv"
        )
    out = []
    for line in csv.read_text(encoding="utf-8").splitlines():
        if line.strip():
            path, prob, kind = line.split()
            out.append((csv.parent / path, float(prob), kind))
    return out


def run_elpv(args, root: Path) -> dict[str, Any]:
    from vision.anomaly import AnomalyConfig, AnomalyModel
    from vision.embedder.metrics import auroc

    labels = _elpv_labels(root)
    functional = [x for x in labels if x[1] == 0.0]
    defective = [x for x in labels if x[1] >= 0.5]
    random.Random(args.seed).shuffle(functional)
    fit, cal, test_ok = (
        functional[: args.fit],
        functional[args.fit : args.fit + args.calib],
        functional[args.fit + args.calib :][: args.test_max],
    )
    random.Random(args.seed).shuffle(defective)
    defective = defective[: args.test_max]
    model = AnomalyModel(AnomalyConfig(image_size=args.size, stages=tuple(args.stages)))
    t0 = time.perf_counter()
    model.fit([_read_grey(p) for p, _, _ in fit])
    fit_s = time.perf_counter() - t0
    cal_r = model.score_batch([_read_grey(p) for p, _, _ in cal])
    model.calibrate([r.score for r in cal_r], args.max_false_alarm)
    t0 = time.perf_counter()
    normal = [r.score for r in model.score_batch([_read_grey(p) for p, _, _ in test_ok])]
    anomalous = [r.score for r in model.score_batch([_read_grey(p) for p, _, _ in defective])]
    score_s = time.perf_counter() - t0
    by_type = {}
    for kind in ("mono", "poly"):
        n = [s for s, x in zip(normal, test_ok) if x[2] == kind]
        a = [s for s, x in zip(anomalous, defective) if x[2] == kind]
        by_type[kind] = round(auroc(n + a, [False] * len(n) + [True] * len(a)), 4)
    result = {
        "name": "elpv",
        "config": model.config.model_dump(mode="json"),
        "normal_fit": len(fit),
        "normal_calibration": len(cal),
        "test_defective": len(anomalous),
        "test_normal": len(normal),
        "image_auroc": round(auroc(normal + anomalous, [False] * len(normal) + [True] * len(anomalous)), 4),
        "image_auroc_by_type": by_type,
        "threshold": round(model.threshold or 0.0, 4),
        **_rates(model, normal, anomalous),
        "operating_points": _operating_points([r.score for r in cal_r], normal, anomalous),
        "seconds_per_image": round(score_s / (len(normal) + len(anomalous)), 4),
        "fit_seconds": round(fit_s, 1),
        "fit": model.fit_info,
        "published_supervised_cnn_accuracy": 0.884,
    }
    log.info("elpv: %s", {k: v for k, v in result.items() if not isinstance(v, dict)})
    return result


def run_speed(args, images: list) -> dict[str, Any]:
    import cv2
    import torch

    from vision.anomaly import AnomalyConfig, AnomalyModel

    small = [cv2.resize(im, (args.size, args.size), interpolation=cv2.INTER_AREA) for im in images[:200]]
    model = AnomalyModel(AnomalyConfig(image_size=args.size, stages=tuple(args.stages)))
    model._features(small[:2])  # build the backbone outside the fit timing (a one-off ~1 s)
    fit_threads = torch.get_num_threads()
    t0 = time.perf_counter()
    model.fit(small)
    fit_s = time.perf_counter() - t0
    probe = small[:40]
    inputs = [torch.from_numpy(x).contiguous(memory_format=torch.channels_last) for x in _inputs(probe, args.size)]
    per_threads = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for im in probe[:3]:
            model.score(im)
        score_ms, backbone_ms = [], []
        for im, x in zip(probe, inputs):
            t = time.perf_counter()
            model.score(im)
            score_ms.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            with torch.inference_mode():
                model._extractor(x)
            backbone_ms.append((time.perf_counter() - t) * 1000)
        med, base = statistics.median(score_ms), statistics.median(backbone_ms)
        per_threads[str(threads)] = {
            "score_ms_median": round(med, 1),
            "score_ms_p90": round(sorted(score_ms)[int(0.9 * len(score_ms))], 1),
            "backbone_ms_median": round(base, 1),
            "score_over_backbone": round(med / base, 2),
        }
    torch.set_num_threads(fit_threads)
    return {
        "size": args.size,
        "config": model.config.model_dump(mode="json"),
        "fit_threads": fit_threads,
        "fit_seconds_200": round(fit_s, 1),
        "fit": model.fit_info,
        "score_by_threads": per_threads,
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def _inputs(images: list, size: int) -> list:
    from vision.anomaly.backbone import preprocess

    return [preprocess([im], size) for im in images]


def markdown(results: dict[str, Any]) -> str:
    rows = [
        "| set | model input, blocks | fit / cal / test (normal + defective) | image AUROC | false alarm | miss "
        "| accuracy | region recall | regions per normal image | s / image | fit s |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key in ("deeppcb", "deeppcb_same", "elpv"):
        r = results.get(key)
        if not r:
            continue
        recall = f"{r['region_recall']:.1%} of {r['boxes']} boxes" if "region_recall" in r else "–"
        cfg = r.get("config", {})
        margin = f", margin {cfg['margin']}" if cfg.get("margin") else ""
        rows.append(
            f"| {key} | {cfg.get('image_size')} px, {cfg.get('stages')}{margin} | {r['normal_fit']} / {r['normal_calibration']} / {r['test_normal']} + {r['test_defective']} "
            f"| {r['image_auroc']:.3f} | {r['false_alarm']:.1%} | {r['miss']:.1%} | {r['accuracy']:.1%} | {recall} "
            f"| {r.get('regions_per_normal_image', '–')} | {r['seconds_per_image']:.3f} | {r['fit_seconds']:.0f} |"
        )
    out = "\n".join(rows)
    ops = []
    for key in ("deeppcb", "deeppcb_same", "elpv"):
        r = results.get(key)
        if r:
            pts = ", ".join(
                f"{t}: FA {v['false_alarm']:.1%} miss {v['miss']:.1%} acc {v['accuracy']:.1%}"
                for t, v in r["operating_points"].items()
                if isinstance(v, dict)
            )
            ops.append(
                f"- {key}: {pts}; best accuracy of any threshold on the test set (oracle) "
                f"{r['operating_points']['best_accuracy_oracle']:.1%}"
            )
    for key in ("deeppcb", "deeppcb_same"):
        r = results.get(key)
        if r and "region_operating_points" in r:
            pts = ", ".join(
                f"{t}: recall {v['region_recall']:.1%}, precision {v['region_precision']:.1%}, "
                f"{v['regions_per_normal_image']} regions per normal image"
                for t, v in r["region_operating_points"].items()
            )
            ops.append(f"- {key} regions at looser map thresholds: {pts}")
    if ops:
        out += "\n\nThresholds calibrated on held-back normals at other false-alarm targets (target: rates on test):\n"
        out += "\n".join(ops)
    s = results.get("speed")
    if s:
        by = "; ".join(
            f"{n} thread(s): score {v['score_ms_median']} ms median (p90 {v['score_ms_p90']}), backbone alone "
            f"{v['backbone_ms_median']} ms (ratio {v['score_over_backbone']})"
            for n, v in s["score_by_threads"].items()
        )
        out += (
            f"\n\nSpeed at {s['size']} px (one image per call): {by}. Fit on 200 images in memory "
            f"({s['fit_threads']} thread(s)): {s['fit_seconds_200']} s (bank {s['fit']['bank']} of "
            f"{s['fit']['patches']} patch features). Load average of the shared machine: {s['load_average']}"
        )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="deeppcb,deeppcb_same,elpv,speed")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--stages", type=lambda s: [int(x) for x in s.split(",")], default=[2, 4])
    parser.add_argument("--pcb-size", type=int, default=320, help="DeepPCB parts: model input size")
    parser.add_argument("--pcb-stages", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2])
    parser.add_argument("--pcb-margin", type=int, default=8, help="DeepPCB: uninspected border, model pixels")
    parser.add_argument("--deeppcb", type=Path, default=None)
    parser.add_argument("--elpv", type=Path, default=ELPV_DEFAULT)
    parser.add_argument("--fit", type=int, default=200)
    parser.add_argument("--calib", type=int, default=200)
    parser.add_argument(
        "--test-max",
        type=int,
        default=2000,
        help="at most this many test pairs per DeepPCB part; ELPV: normal and defective cells each",
    )
    parser.add_argument("--min-area", type=int, default=16)
    parser.add_argument("--max-false-alarm", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--update",
        action="store_true",
        help="keep the other parts' results already in --out (each part records its command)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "anomaly.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    from defect_agent.paths import shared_dataset
    from defect_agent.runtime import configure_offline, set_threads

    configure_offline()
    threads = set_threads()
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    results: dict[str, Any] = {
        "command": "benchmarks/bench_anomaly.py " + " ".join(sys.argv[1:]),
        "size": args.size,
        "stages": args.stages,
        "threads": threads,
        "max_false_alarm": args.max_false_alarm,
        "seed": args.seed,
        "machine": f"{os.cpu_count()} CPU cores (shared), no GPU",
    }
    if args.update and args.out.is_file():
        previous = json.loads(args.out.read_text(encoding="utf-8"))
        for key in ("deeppcb", "deeppcb_same", "elpv", "speed"):
            if key in previous:
                results[key] = {"command": previous.get("command"), "threads": previous.get("threads"), **previous[key]}
    t0 = time.perf_counter()
    deeppcb = args.deeppcb or shared_dataset("deeppcb")
    if {"deeppcb", "deeppcb_same"} & set(parts):
        if deeppcb is None or not Path(deeppcb).is_dir():
            print("DeepPCB not found: pass --deeppcb (the folder holding PCBData)", file=sys.stderr)
            return 2
        for part in ("deeppcb", "deeppcb_same"):
            if part in parts:
                results[part] = run_deeppcb(args, Path(deeppcb), same_boards=part == "deeppcb_same")
                results[part].update(command=results["command"], threads=threads)
    if "elpv" in parts:
        results["elpv"] = run_elpv(args, args.elpv)
        results["elpv"].update(command=results["command"], threads=threads)
    if "speed" in parts:
        if args.elpv.is_dir():
            labels = [p for p, prob, _ in _elpv_labels(args.elpv) if prob == 0.0]
        else:
            from vision.datasets.deeppcb import template_pairs

            labels = [p.template for p in template_pairs(deeppcb, "train")]  # type: ignore[misc]
        results["speed"] = run_speed(args, [_read_grey(p) for p in labels[:200]])
        results["speed"].update(command=results["command"], threads=threads)
    results["seconds"] = round(time.perf_counter() - t0, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1), encoding="utf-8")
    table = markdown(results)
    parts_run = [
        (results[k]["command"], results[k].get("threads"))
        for k in ("deeppcb", "deeppcb_same", "elpv", "speed")
        if k in results
    ]
    commands = ", ".join(f"`{c}` ({t} thread(s))" for c, t in dict.fromkeys(parts_run))
    md = args.out.with_suffix(".md")
    md.write_text(
        "# Normal-only anomaly model (vision.anomaly: PatchCore over EfficientNet-Lite0)\n\n"
        f"Commands: {commands}; {results['machine']}; every figure and each part's config in "
        f"`{args.out.name}`. False alarm / miss / accuracy at the image threshold calibrated on the held-back "
        f"normals at {args.max_false_alarm:.0%} false alarms.\n\n{table}\n",
        encoding="utf-8",
    )
    print(table)
    print(f"{results['seconds']} s; wrote {args.out} and {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
