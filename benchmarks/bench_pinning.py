"""OpenVINO's CPU pinning and processes sharing a line PC: the agent (onnx engine, OpenVINO, 1 thread) inspecting
the same images in one process alone, then in two processes at once (two stations, or two Ray workers of
`batch --engine ray --workers 2 --threads 1`), with OpenVINO's default pinning and with it off
(`vision.onnx_session.CPU_PINNING`, what the project runs). Each figure is a process's per-image p50; the baseline
is the one-process run of the same setting, in the same invocation.

    python benchmarks/bench_pinning.py --line battery_tab --images 24 --rounds 2

Exports the line into a temporary data folder first; writes benchmarks/results/pinning_<line>.json."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def _child(line: str, images: int, rounds: int, pinning: bool, out: Path) -> None:
    """One process: build the agent on 1 thread, wait for the start file's time, inspect, write the p50."""
    import bench_batch

    import vision.onnx_session as onnx_session
    from agent.images import read_image

    onnx_session.CPU_PINNING = pinning
    with tempfile.TemporaryDirectory(prefix="bench-pinning-img-") as tmp:
        paths = bench_batch._images(line, images, Path(tmp))
        inspector = bench_batch._inspector(line, 1, engine="onnx")
        query = inspector.parse(bench_batch.INSTRUCTION[line])
        loaded = [read_image(p, inspector.line.image_size) for p in paths]
        inspector.inspect_image_many([query], paths[0], image=loaded[0])  # warm-up
        start = float(os.environ["BENCH_PINNING_START"])
        time.sleep(max(0.0, start - time.time()))  # the processes of a run start inspecting together
        ms = bench_batch._time_ms(bench_batch._inspects(inspector, query), list(zip(paths, loaded)), rounds)
    out.write_text(json.dumps({"p50": round(statistics.median(ms), 1), "images": len(ms)}))


def _run(line: str, images: int, rounds: int, pinning: bool, processes: int, env: dict[str, str]) -> list[float]:
    with tempfile.TemporaryDirectory(prefix="bench-pinning-") as tmp:
        outs = [Path(tmp) / f"p{i}.json" for i in range(processes)]
        start = str(time.time() + 25.0)  # after every child has loaded its models
        procs = [
            subprocess.Popen(
                [sys.executable, __file__, "--line", line, "--images", str(images), "--rounds", str(rounds)]
                + ["--child-out", str(out), "--child-pinning", str(int(pinning))],
                env={**env, "BENCH_PINNING_START": start},
                cwd=ROOT,
            )
            for out in outs
        ]
        for proc in procs:
            if proc.wait() != 0:
                raise SystemExit(f"a child failed ({proc.returncode})")
        return [json.loads(out.read_text())["p50"] for out in outs]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--line", default="battery_tab", choices=["battery_tab", "pcb"])
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--precision", default="bf16", choices=["f32", "bf16"])
    ap.add_argument("--child-out", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-pinning", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()

    from defect_agent.runtime import configure_offline

    configure_offline()
    if args.child_out:
        _child(args.line, args.images, args.rounds, bool(args.child_pinning), Path(args.child_out))
        return
    result: dict[str, Any] = {
        "benchmark": "bench_pinning",
        "line": args.line,
        "host": platform.node(),
        "cpu_count": os.cpu_count(),
        "runtime": f"openvino-{args.precision}",
        "threads_per_process": 1,
        "load_average_1min_before": round(os.getloadavg()[0], 2),
    }
    from bench_batch import onnx_env

    with tempfile.TemporaryDirectory(prefix="bench-pinning-data-") as data:
        env = onnx_env(args.line, data, "openvino", args.precision)
        for pinning in (True, False):
            alone = _run(args.line, args.images, args.rounds, pinning, 1, env)[0]
            both = _run(args.line, args.images, args.rounds, pinning, 2, env)
            key = "pinned" if pinning else "unpinned"
            result[key] = {
                "one_process_p50": alone,
                "two_processes_p50": both,
                "two_over_one": round(max(both) / alone, 2),
                "images_per_s_two_processes": round(sum(1000.0 / p for p in both), 2),
            }
            print(f"{key}: {result[key]}", file=sys.stderr)
    result["load_average_1min_after"] = round(os.getloadavg()[0], 2)
    out = ROOT / "benchmarks" / "results" / f"pinning_{args.line}.json"
    out.write_text(json.dumps(result, indent=1), encoding="utf-8")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
