"""What an engine or runtime changes in the verdicts: `defect-agent inspect` over the same images on the torch engine
and on the onnx engine with a given runtime and precision, the records compared field by field.

    python benchmarks/compare_engines.py --line battery_tab --images 200 --runtime openvino --precision bf16
    python benchmarks/compare_engines.py --line pcb --images 200 --runtime openvino --precision bf16  # ../shared

Images as bench_batch's (generated cells; DeepPCB test boards spread over the groups). The files are exported into a
temporary data folder; both runs use the knowledge base of configs/default.yaml (`make demo`'s). Per line: the same
part verdict, instruction answer and defect list (class and source), for findings matched across the runs (same
class and source, IoU >= 0.9) the same nearest knowledge-base case (where it differs: whether the two cases share a
class, and how much closer the reference found its own first case), and the largest probability and mm differences.
Writes benchmarks/results/engines_<line>_<runtime>_<precision>.json."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from bench_batch import CLI, ROOT, _images

INSTRUCTION = {
    "battery_tab": "find cells with weld spatter or a missing weld",
    "pcb": "flag boards with an open circuit or a short",
}
MATCH_IOU = 0.9


def _inspect(line: str, paths: list[str], out: Path, env: dict[str, str]) -> list[dict[str, Any]]:
    cmd = [CLI, "inspect", INSTRUCTION[line], *paths, "--line", line, "--out", str(out)]
    run = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    if run.returncode not in (0, 1):
        raise SystemExit(run.stderr[-2000:])
    return [json.loads(row) for row in out.read_text(encoding="utf-8").splitlines()]


def _iou(a: dict[str, float], b: dict[str, float]) -> float:
    w = max(0.0, min(a["x2"], b["x2"]) - max(a["x1"], b["x1"]))
    h = max(0.0, min(a["y2"], b["y2"]) - max(a["y1"], b["y1"]))
    union = (a["x2"] - a["x1"]) * (a["y2"] - a["y1"]) + (b["x2"] - b["x1"]) * (b["y2"] - b["y1"]) - w * h
    return w * h / union if union > 0 else 0.0


def compare(reference: list[dict[str, Any]], other: list[dict[str, Any]]) -> dict[str, Any]:
    """The figures of the module docstring; `changed_defects` counts findings only one run has, by class and source."""
    kind = lambda d: (d["defect_class"], d["source"])  # noqa: E731
    same = Counter[str]()
    changed: Counter[str] = Counter()
    matched: Counter[str] = Counter()
    top_case: Counter[str] = Counter()
    max_dp = max_dmm = max_swap_gap = 0.0
    swaps_same_class = 0
    for a, b in zip(reference, other, strict=True):
        same["verdict"] += a["verdict"] == b["verdict"]
        same["matches_query"] += a["matches_query"] == b["matches_query"]
        ka, kb = Counter(map(kind, a["defects"])), Counter(map(kind, b["defects"]))
        same["defect_list"] += ka == kb
        for key, count in ((ka - kb) + (kb - ka)).items():
            changed["/".join(key)] += count
        for da in a["defects"]:
            pairs = [(_iou(da["box"], db["box"]), db) for db in b["defects"] if kind(db) == kind(da)]
            iou, db = max(pairs, key=lambda p: p[0], default=(0.0, None))
            if db is None or iou < MATCH_IOU:
                continue
            matched[da["source"]] += 1
            max_dp = max(max_dp, abs(da["probability"] - db["probability"]))
            for key, value in da["measurements"].items():
                if key.endswith("_mm") and key in db["measurements"]:
                    max_dmm = max(max_dmm, abs(value - db["measurements"][key]))
            if da["similar_cases"] and db["similar_cases"]:
                first, other_first = da["similar_cases"][0], db["similar_cases"][0]
                top_case[da["source"]] += first["case_id"] == other_first["case_id"]
                if first["case_id"] != other_first["case_id"]:
                    swaps_same_class += first["defect_class"] == other_first["defect_class"]
                    # how far down the reference's list the other run's first case sat (the whole k if absent)
                    ref_sim = {c["case_id"]: c["similarity"] for c in da["similar_cases"]}
                    floor = min(ref_sim.values())
                    gap = first["similarity"] - ref_sim.get(other_first["case_id"], floor)
                    max_swap_gap = max(max_swap_gap, gap)
            else:
                top_case[da["source"]] += da["similar_cases"] == db["similar_cases"]
    return {
        "images": len(reference),
        "same": dict(same),
        "changed_defects": dict(changed),
        "matched_findings": dict(matched),
        "same_nearest_case": dict(top_case),
        "nearest_case_swaps_same_class": swaps_same_class,
        "largest_swap_similarity_gap": round(max_swap_gap, 4),
        "max_probability_diff": round(max_dp, 4),
        "max_mm_diff": round(max_dmm, 4),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--line", default="battery_tab", choices=sorted(INSTRUCTION))
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--runtime", default="onnxruntime", choices=["onnxruntime", "openvino"])
    ap.add_argument("--precision", default="f32", choices=["f32", "bf16"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="compare-engines-") as tmp:
        paths = _images(args.line, args.images, Path(tmp) / "images", spread=True)
        data = Path(tmp) / "data"
        base = {**os.environ, "DEFECT_AGENT_THREADS": str(args.threads)}
        exported = subprocess.run(
            [CLI, "export", "--line", args.line, "--format", "onnx"],
            env={**base, "DEFECT_AGENT_DATA": str(data)},
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        if exported.returncode != 0:
            raise SystemExit(exported.stderr[-2000:])
        torch_records = _inspect(args.line, paths, Path(tmp) / "torch.jsonl", {**base, "DEFECT_AGENT_ENGINE": "torch"})
        onnx_env = {
            **base,
            "DEFECT_AGENT_DATA": str(data),
            "DEFECT_AGENT_ENGINE": "onnx",
            "DEFECT_AGENT_ONNX_RUNTIME": args.runtime,
            "DEFECT_AGENT_ONNX_PRECISION": args.precision,
        }
        onnx_records = _inspect(args.line, paths, Path(tmp) / "onnx.jsonl", onnx_env)
    result = {
        "benchmark": "compare_engines",
        "line": args.line,
        "host": platform.node(),
        "cpu_count": os.cpu_count(),
        "reference": "torch",
        "other": f"onnx/{args.runtime}-{args.precision}",
        "instruction": INSTRUCTION[args.line],
        **compare(torch_records, onnx_records),
        "command": " ".join(["python", *sys.argv]),
    }
    out = Path(
        args.out or ROOT / "benchmarks" / "results" / f"engines_{args.line}_{args.runtime}_{args.precision}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1), encoding="utf-8")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
