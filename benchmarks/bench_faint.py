"""What embedding faint anomaly regions buys and what it costs (`anomaly.embed_faint` of a line): the agent over
generated battery_tab cells with exact truth, each cell inspected with its faint regions embedded and without, the
two ways taking turns per cell in one process, one image per call (a station).

    DEFECT_AGENT_ENGINE=onnx DEFECT_AGENT_ONNX_RUNTIME=openvino DEFECT_AGENT_ONNX_PRECISION=bf16 \
        python benchmarks/bench_faint.py --images 480

A faint region is an anomaly region below the review band on its own: only close knowledge-base cases can lift it
into review or fail, or name it. Per way: p50 / p95 per cell; the faint regions, how many the knowledge base lifted
or named and how many of those lie on a planted defect; part verdicts against the truth (defective: a planted
defect, a missing weld, or a weld offset beyond the line's tolerance); the cells whose part verdict or instruction
answers differ between the ways. The engine is the environment's (files exported into a temporary folder for the
onnx engine); the knowledge base is configs/default.yaml's (`make demo`'s). Writes
benchmarks/results/faint_battery_tab.json."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench_batch import ROOT, _images, _inspector, _pct, onnx_env

LINE = "battery_tab"
PARTS = ("tab", "weld")


def _overlaps(region: dict[str, float], box: dict[str, float]) -> bool:
    """A region on a planted defect: a tenth of the region inside the defect's box, or a third of the box inside
    the region."""
    w = max(0.0, min(region["x2"], box["x2"]) - max(region["x1"], box["x1"]))
    h = max(0.0, min(region["y2"], box["y2"]) - max(region["y1"], box["y1"]))

    def area(b: dict[str, float]) -> float:
        return max((b["x2"] - b["x1"]) * (b["y2"] - b["y1"]), 1e-9)

    return w * h / area(region) > 0.1 or w * h / area(box) > 0.3


def _defective(truth: dict[str, Any], tolerance_mm: float) -> bool:
    return (
        any(o["name"] not in PARTS for o in truth["objects"])
        or bool(truth["missing_weld"])
        or truth["offset_mm"] > tolerance_mm
    )


def run(images: int, threads: int) -> dict[str, Any]:
    from agent.acceptance import review_band
    from agent.images import read_image
    from defect_agent.config import load_app_config

    app = load_app_config()
    engine = app.engine
    with tempfile.TemporaryDirectory(prefix="bench-faint-") as tmp:
        if engine == "onnx":  # this process reads var/onnx under the data folder the files are exported to
            os.environ.update(onnx_env(LINE, tmp, app.onnx.runtime, app.onnx.precision))
        folder = Path(tmp) / "cells"
        paths = _images(LINE, images, folder)
        rows = (folder / "truth.jsonl").read_text(encoding="utf-8").splitlines()
        truth = {row["image"]: row for row in map(json.loads, rows)}
        inspector = _inspector(LINE, threads, engine=engine)
        profile = ROOT / "configs" / "profiles" / f"{LINE}_nightly.yaml"
        from agent.batch.profile import load_profile

        queries = [inspector.parse(i.text) for i in load_profile(profile).instructions]
        line = inspector.line
        assert line.anomaly is not None, f"line {LINE} has no anomaly model"
        ways = {
            way: line.model_copy(update={"anomaly": line.anomaly.model_copy(update={"embed_faint": value})})
            for way, value in (("embedded", True), ("not_embedded", False))
        }
        band = review_band(line, inspector.app.fusion)
        tolerance = next(d.tolerance_mm for d in line.derived if d.rule == "offset")
        pairs = [(p, read_image(p, line.image_size)) for p in paths]
        for p, im in pairs[:2]:  # warm-up
            inspector.inspect_image_many(queries, p, image=im)
        ms: dict[str, list[float]] = {way: [] for way in ways}
        outcome: dict[str, dict[str, Counter]] = {way: {"parts": Counter(), "faint": Counter()} for way in ways}
        differing: list[dict[str, Any]] = []
        for p, im in pairs:
            seen = truth[Path(p).name]
            defective = _defective(seen, tolerance)
            planted = [o["box"] for o in seen["objects"] if o["name"] not in PARTS]
            answers = {}
            for way, way_line in ways.items():
                inspector.line = way_line
                t = time.perf_counter()
                verdicts = inspector.inspect_image_many(queries, p, image=im)
                ms[way].append((time.perf_counter() - t) * 1000)
                part = verdicts[0].verdict
                answers[way] = (part, [v.matches_query for v in verdicts])
                outcome[way]["parts"][f"{part}_{'defective' if defective else 'good'}"] += 1
                for d in verdicts[0].defects:
                    if d.source != "anomaly" or d.confidence >= band[0]:
                        continue
                    counts = outcome[way]["faint"]
                    on_defect = any(_overlaps(d.box.model_dump(), box) for box in planted)
                    counts["regions"] += 1
                    counts["on_planted_defect"] += on_defect
                    if d.probability >= band[0]:
                        counts["lifted"] += 1
                        counts["lifted_on_planted_defect"] += on_defect
                    counts["named"] += d.defect_class != (line.anomaly_class or "anomaly")
            inspector.line = line
            if answers["embedded"] != answers["not_embedded"]:
                differing.append({"image": Path(p).name, "defective": defective, **answers})
    out = {
        "benchmark": "bench_faint",
        "line": LINE,
        "host": platform.node(),
        "cpu_count": os.cpu_count(),
        "engine": engine,
        "runtime": os.environ.get("DEFECT_AGENT_ONNX_RUNTIME"),
        "precision": os.environ.get("DEFECT_AGENT_ONNX_PRECISION"),
        "threads": threads,
        "images": len(paths),
        "instructions": len(queries),
        "review_band": list(band),
        "p50_ms": {way: round(statistics.median(v), 1) for way, v in ms.items()},
        "p95_ms": {way: _pct(v, 95) for way, v in ms.items()},
        "not_embedded_over_embedded_p50": round(
            statistics.median(ms["not_embedded"]) / statistics.median(ms["embedded"]), 3
        ),
        "parts": {way: dict(o["parts"]) for way, o in outcome.items()},
        "faint": {way: dict(o["faint"]) for way, o in outcome.items()},
        "cells_differing": len(differing),
        "differing": differing[:40],
    }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=480)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / f"faint_{LINE}.json"))
    args = ap.parse_args()
    from defect_agent.runtime import configure_offline

    configure_offline()
    out = run(args.images, args.threads)
    Path(args.out).write_text(json.dumps(out, indent=1, ensure_ascii=False), encoding="utf-8")
    print(json.dumps({k: v for k, v in out.items() if k != "differing"}, indent=1, ensure_ascii=False), file=sys.stderr)


if __name__ == "__main__":
    main()
