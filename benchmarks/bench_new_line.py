"""A new line brought up with `line new` (no boxes drawn), then inspected by the agent, on real data; and a defect
type the battery_tab detector never saw.

    .venv/bin/python benchmarks/bench_new_line.py [--parts elpv,deeppcb,unseen] [--shots 0,1,5,20] [--out PATH]

elpv     ELPV solar cells (var/elpv, see benchmarks/bench_anomaly.py): `line new elpv_cell` from `--normal` functional
         cells (a quarter held back to calibrate at 1 % false alarms), then `Inspector.inspect` on held-out test
         cells (`--test` functional + `--test` defective, probability >= 0.5): image AUROC of the anomaly score, and
         at the stored threshold the part verdict's false alarms (normal not `pass`), misses (defective `pass`) and
         accuracy; seconds per image through the whole agent; fit seconds. Then few-shot: k defective cells filed as
         examples (`line add-examples`) and k functional cells marked normal (`line mark-normal`), k = `--shots`
         cumulative, the same test set re-inspected each time.
deeppcb  DeepPCB as a new line: `line new pcb_new` from train-board templates (320 px, blocks 1 + 2, margin 8),
         inspected on the validation boards' test images (defective) and their templates (normal): the same rates,
         and region recall against the annotated boxes (a region with IoU > 0.1 or containing the box centre).
unseen   battery_tab with its shipped anomaly model beside the detector: `--unseen` normal cells and the same cells
         with a foreign particle (vision.datasets.synth.unseen; no class of the line describes it): the share of
         particle cells sent to review or fail, with and without the anomaly model in the same process, and what the
         anomaly model costs on normal cells (their verdicts, ms per image).

Writes benchmarks/results/new_line.json and .md. A scratch project root (configs copied, models linked, own var/)
keeps the real configs/ and var/ untouched. The machine is shared: load averages are recorded."""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

log = logging.getLogger("bench_new_line")
DEEPPCB_MM_PER_PX = 1.0 / 48.0
QUERY = "find every anomaly"


def _scratch_home() -> Path:
    home = Path(tempfile.mkdtemp(prefix="bench-new-line-"))
    shutil.copytree(ROOT / "configs", home / "configs")
    (home / "models").symlink_to(ROOT / "models")
    os.environ.setdefault("DEFECT_AGENT_SHARED", str(ROOT.parent / "shared"))  # still beside the real checkout
    os.environ["DEFECT_AGENT_HOME"] = str(home)
    os.environ["DEFECT_AGENT_DATA"] = str(home / "var")
    from defect_agent.config import load_line

    load_line.cache_clear()
    return home


def _link_all(paths: list[Path], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, p in enumerate(paths):
        (folder / f"{i:05d}_{p.name}").symlink_to(p.resolve())
    return folder


def _inspect(line: str, images: list[Path], kb: Path) -> tuple[list[Any], float]:
    from agent.pipeline import Inspector

    inspector = Inspector.from_config(line=line, kb_dir=kb)
    query = inspector.parse(QUERY)
    t0 = time.perf_counter()
    verdicts = [inspector.inspect_image(query, str(p)) for p in images]
    return verdicts, (time.perf_counter() - t0) / max(len(images), 1)


def _rates(normal: list[Any], defective: list[Any]) -> dict[str, Any]:
    from vision.embedder.metrics import auroc

    scores = [v.anomaly.score for v in normal + defective]
    labels = [False] * len(normal) + [True] * len(defective)
    fa = sum(v.verdict != "pass" for v in normal) / len(normal)
    miss = sum(v.verdict == "pass" for v in defective) / len(defective)
    return {
        "image_auroc": round(auroc(scores, labels), 4),
        "false_alarm": round(fa, 4),
        "false_alarm_fail_only": round(sum(v.verdict == "fail" for v in normal) / len(normal), 4),
        "miss": round(miss, 4),
        "accuracy": round(1 - (fa * len(normal) + miss * len(defective)) / (len(normal) + len(defective)), 4),
        "review_share": round(sum(v.verdict == "review" for v in normal + defective) / len(labels), 4),
        "anomaly_ms_p50": round(
            sorted(v.timings_ms.get("anomaly", 0.0) for v in normal + defective)[len(labels) // 2], 1
        ),
    }


def run_elpv(args, home: Path) -> dict[str, Any]:
    from bench_anomaly import _elpv_labels

    from agent.lines import add_examples, create_line, mark_normal

    labels = _elpv_labels(args.elpv)
    functional = [p for p, prob, _ in labels if prob == 0.0]
    defective = [p for p, prob, _ in labels if prob >= 0.5]
    random.Random(args.seed).shuffle(functional)
    random.Random(args.seed).shuffle(defective)
    normal_dir = _link_all(functional[: args.normal], home / "data" / "elpv" / "normal")
    test_ok = functional[args.normal : args.normal + args.test]
    test_bad = defective[: args.test]
    shot_ok = functional[args.normal + args.test :]
    shot_bad = defective[args.test :]
    kb = home / "var" / "kb_elpv"
    t0 = time.perf_counter()
    card = create_line("elpv_cell", normal_dir, title="电池片/solar cell", mm_per_px=0.52, kb_dir=kb, progress=False)
    create_s = time.perf_counter() - t0
    result: dict[str, Any] = {
        "line_new_seconds": round(create_s, 1),
        "card": card.model_dump(mode="json"),
        "test_normal": len(test_ok),
        "test_defective": len(test_bad),
        "shots": {},
    }
    previous = 0
    for k in args.shots:
        if k > previous:
            ex = home / "data" / "elpv" / f"examples_{k}" / "defective"
            _link_all(shot_bad[previous:k], ex)
            add_examples("elpv_cell", ex.parent, kb_dir=kb)
            mark_normal("elpv_cell", [str(p) for p in shot_ok[previous:k]], kb_dir=kb)
            previous = k
        verdicts, s_per_image = _inspect("elpv_cell", test_ok + test_bad, kb)
        row = _rates(verdicts[: len(test_ok)], verdicts[len(test_ok) :])
        row["seconds_per_image"] = round(s_per_image, 4)
        result["shots"][str(k)] = row
        log.info("elpv k=%d: %s", k, row)
    result["published_supervised_cnn_accuracy"] = 0.884
    return result


def run_deeppcb(args, home: Path) -> dict[str, Any]:
    from agent.lines import create_line
    from defect_agent.paths import shared_dataset
    from vision.datasets.deeppcb import parse_annotation, template_pairs

    root = args.deeppcb or shared_dataset("deeppcb")
    if root is None:
        raise SystemExit("DeepPCB not found: pass --deeppcb or put ../shared/datasets beside the checkout")
    train = template_pairs(root, "train")
    random.Random(args.seed).shuffle(train)
    normal_dir = _link_all([p.template for p in train[: args.pcb_normal]], home / "data" / "pcb" / "normal")
    val = template_pairs(root, "val")[: args.test]
    kb = home / "var" / "kb_pcb"
    t0 = time.perf_counter()
    card = create_line(
        "pcb_new",
        normal_dir,
        title="电路板/board",
        mm_per_px=DEEPPCB_MM_PER_PX,
        image_size=320,
        stages=(1, 2),
        margin=8,
        kb_dir=kb,
        progress=False,
    )
    create_s = time.perf_counter() - t0
    tests, s1 = _inspect("pcb_new", [p.test for p in val], kb)
    temps, s2 = _inspect("pcb_new", [p.template for p in val], kb)
    found = total = 0
    for pair, v in zip(val, tests):
        regions = [d.box for d in v.defects if d.verdict != "pass"]
        for _, box in parse_annotation(pair.annotation.read_text(encoding="utf-8"), str(pair.annotation)):
            total += 1
            found += any(r.iou(box) > 0.1 or r.contains(*box.center) for r in regions)
    row = _rates(temps, tests)
    return {
        "line_new_seconds": round(create_s, 1),
        "card": card.model_dump(mode="json"),
        "test_boards": len(val),
        **row,
        "region_recall": round(found / max(total, 1), 4),
        "boxes": total,
        "seconds_per_image": round((s1 + s2) / 2, 4),
        "anchor": "the pcb line's own detector: mAP50 0.990, no defective board missed, no template flagged",
    }


def run_unseen(args, home: Path) -> dict[str, Any]:
    import cv2

    from agent.pipeline import Inspector
    from vision.datasets.synth.battery_tab import image_seed
    from vision.datasets.synth.unseen import foreign_particle, normal_cell

    folder = home / "data" / "unseen"
    (folder / "normal").mkdir(parents=True)
    (folder / "particle").mkdir(parents=True)
    boxes = {}
    for i in range(args.unseen):
        seed = image_seed(args.seed, i, 9)
        img, truth = normal_cell(seed)
        cv2.imwrite(str(folder / "normal" / f"{i:04d}.png"), img)
        dirty, box = foreign_particle(img, truth, seed)
        cv2.imwrite(str(folder / "particle" / f"{i:04d}.png"), dirty)
        boxes[f"{i:04d}.png"] = box
    with_model = Inspector.from_config(line="battery_tab", use_kb=False)
    if with_model.anomaly is None:
        raise SystemExit("battery_tab has no anomaly: block; fit it with `defect-agent line anomaly battery_tab ...`")
    query = with_model.parse("find every defect")
    out: dict[str, Any] = {"cells": args.unseen}
    for label, inspector in (("with_anomaly", with_model), ("detector_only", None)):
        if inspector is None:
            inspector = with_model
            saved, inspector.anomaly = inspector.anomaly, None
        rows = {}
        for kind in ("normal", "particle"):
            t0 = time.perf_counter()
            verdicts = [inspector.inspect_image(query, str(p)) for p in sorted((folder / kind).glob("*.png"))]
            seconds = (time.perf_counter() - t0) / len(verdicts)
            counts = {k: sum(v.verdict == k for v in verdicts) for k in ("pass", "review", "fail")}
            located = 0
            if kind == "particle":
                for v in verdicts:
                    box = boxes[Path(v.image).name]
                    located += any(
                        d.verdict != "pass" and (d.box.iou(box) > 0.1 or d.box.contains(*box.center)) for d in v.defects
                    )
            rows[kind] = {
                "verdicts": counts,
                "flagged_share": round((counts["review"] + counts["fail"]) / len(verdicts), 4),
                "particle_located_share": round(located / len(verdicts), 4) if kind == "particle" else None,
                "ms_per_image": round(seconds * 1000, 1),
                "classes": sorted({d.defect_class for v in verdicts for d in v.defects if d.verdict != "pass"}),
            }
        out[label] = rows
        log.info("unseen %s: %s", label, rows)
    with_model.anomaly = saved
    return out


def markdown(results: dict[str, Any]) -> str:
    rows = [
        "| set | image AUROC | false alarms (not pass) | misses | accuracy | s / image | fit / line new |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    if "elpv" in results:
        e = results["elpv"]
        for k, r in e["shots"].items():
            rows.append(
                f"| ELPV, {k} defect + {k} normal examples | {r['image_auroc']:.3f} | {r['false_alarm']:.1%} | "
                f"{r['miss']:.1%} | {r['accuracy']:.1%} | {r['seconds_per_image']:.3f} | "
                f"{e['card']['fit_seconds']:.0f} s / {e['line_new_seconds']:.0f} s |"
            )
    if "deeppcb" in results:
        d = results["deeppcb"]
        rows.append(
            f"| DeepPCB as a new line (region recall {d['region_recall']:.1%}) | {d['image_auroc']:.3f} | "
            f"{d['false_alarm']:.1%} | {d['miss']:.1%} | {d['accuracy']:.1%} | {d['seconds_per_image']:.3f} | "
            f"{d['card']['fit_seconds']:.0f} s / {d['line_new_seconds']:.0f} s |"
        )
    text = "\n".join(rows)
    if "unseen" in results:
        u = results["unseen"]
        text += (
            "\n\n| battery_tab, foreign particle (never trained) | particle cells flagged | located | normal cells "
            "flagged | ms / image |\n|---|---:|---:|---:|---:|\n"
        )
        for label in ("detector_only", "with_anomaly"):
            r = u[label]
            text += (
                f"| {label.replace('_', ' ')} | {r['particle']['flagged_share']:.1%} | "
                f"{r['particle']['particle_located_share']:.1%} | {r['normal']['flagged_share']:.1%} | "
                f"{r['normal']['ms_per_image']:.0f} |\n"
            )
    return text + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="elpv,deeppcb,unseen")
    parser.add_argument("--elpv", type=Path, default=ROOT / "var" / "elpv")
    parser.add_argument("--deeppcb", type=Path, default=None)
    parser.add_argument("--normal", type=int, default=268, help="ELPV functional cells given to line new")
    parser.add_argument("--pcb-normal", type=int, default=200, help="DeepPCB train templates given to line new")
    parser.add_argument("--test", type=int, default=150, help="test images per kind")
    parser.add_argument("--shots", default="0,1,5,20")
    parser.add_argument("--unseen", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "new_line.json")
    args = parser.parse_args()
    args.shots = [int(k) for k in args.shots.split(",")]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for name in ("ultralytics", "vision", "agent", "knowledge_base", "retrieval"):
        logging.getLogger(name).setLevel(logging.WARNING)
    from defect_agent.runtime import configure_offline, set_threads

    configure_offline()
    set_threads(None)
    home = _scratch_home()
    results: dict[str, Any] = {
        "command": " ".join(sys.argv),
        "machine": f"{os.cpu_count()} CPU cores, no GPU",
        "load_average_start": os.getloadavg(),
    }
    runners = {"elpv": run_elpv, "deeppcb": run_deeppcb, "unseen": run_unseen}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    table = ""
    for part in args.parts.split(","):
        results[part] = runners[part](args, home)
        results["load_average_end"] = os.getloadavg()
        # written after each part: a later part's failure keeps what was measured
        previous = json.loads(args.out.read_text(encoding="utf-8")) if args.out.is_file() else {}
        previous.update(results)
        args.out.write_text(json.dumps(previous, indent=1, default=str) + "\n", encoding="utf-8")
        table = markdown(previous)
        args.out.with_suffix(".md").write_text(table, encoding="utf-8")
    print(table)
    shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
