"""The most this machine can give the nightly job with a line's networks: images/s of the exported networks alone -
every session call the agent makes for an image, replayed on the inputs it made them with - against the agent's
one-image-at-a-time loop, in the same invocation. Each figure is a fresh process on the onnx engine (no torch) that
loads the line, runs the agent once over its images (warm-up; the calls' inputs are recorded), waits until every
process of the figure is ready, and times one phase:

- `loop`: one process at 2 threads, `Inspector.inspect_image` per file (the issue's baseline, as `bench_batch
  --parts batch` times it);
- `networks_2t`: one process at 2 threads, the networks alone;
- `networks_2x1t`: two processes at 1 thread, each half the images, the networks alone - two 1-thread streams, the
  split of two cores the networks run fastest on here (`bench_pinning.py`);
- `agent_2x1t`: two processes at 1 thread, each the agent's loop over half the images: what `--engine ray --workers 2
  --threads 1` does past its start, without Ray.

Images/s of a figure: all its images over its slowest process's seconds; each figure taken `--rounds` times, the
configurations taking turns, the best kept. The networks' figures are a ceiling: the pipeline around them (decoding,
letterbox, crops, anomaly regions, measurement, retrieval, fusion, the outputs) costing nothing.

    python benchmarks/bench_ceiling.py --line battery_tab --images 96 --onnx-runtime openvino --onnx-precision bf16
    python benchmarks/bench_ceiling.py --line pcb --images 96 ...          # needs ../shared/datasets/deeppcb

Writes benchmarks/results/ceiling_<line>.json (one key per runtime and precision)."""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

FIGURES: dict[str, tuple[str, int, int]] = {  # name: (phase, processes, threads each)
    "loop": ("agent", 1, 2),
    "networks_2t": ("networks", 1, 2),
    "networks_2x1t": ("networks", 2, 1),
    "agent_2x1t": ("agent", 2, 1),
}


@contextlib.contextmanager
def _recorded_calls(calls: list[tuple[Any, Any, Any]]) -> Iterator[None]:
    """While open, every exported network's run (OpenVINO or onnxruntime session) is appended to `calls` as
    (session, output names, a copy of its feeds)."""
    from bench_batch import session_runs_wrapped

    def recording(original: Callable[..., Any]) -> Callable[..., Any]:
        def run(self: Any, output_names: Any, feeds: Any, *args: Any, **kwargs: Any) -> Any:
            calls.append((self, output_names, copy.deepcopy(feeds)))  # a caller may reuse its buffers
            return original(self, output_names, feeds, *args, **kwargs)

        return run

    with session_runs_wrapped(recording):
        yield


def _worker(line: str, phase: str, threads: int, paths_file: Path, barrier: Path, out: Path) -> None:
    """One process of a figure: load, warm up (recording the network calls), say ready, wait for the go, time the
    phase, write its seconds."""
    import bench_batch

    paths = paths_file.read_text(encoding="utf-8").split("\n")
    inspector = bench_batch._inspector(line, threads, engine="onnx")
    query = inspector.parse(bench_batch.INSTRUCTION[line])
    calls: list[tuple[Any, Any, Any]] = []
    with _recorded_calls(calls):
        for path in paths:
            inspector.inspect_image(query, path)
    (barrier / f"ready_{os.getpid()}").touch()
    while not (barrier / "go").exists():
        time.sleep(0.005)
    t = time.perf_counter()
    if phase == "networks":
        for session, output_names, feeds in calls:
            session.run(output_names, feeds)
    else:
        for path in paths:
            inspector.inspect_image(query, path)
    seconds = time.perf_counter() - t
    out.write_text(json.dumps({"seconds": seconds, "images": len(paths), "network_calls": len(calls)}))


def _figure(line: str, name: str, paths: list[str], env: dict[str, str], work: Path) -> dict[str, Any]:
    """One figure: its processes started, released together, their seconds gathered."""
    phase, processes, threads = FIGURES[name]
    barrier = Path(tempfile.mkdtemp(prefix=f"ceiling-{name}-", dir=work))
    children, outs = [], []
    for k in range(processes):
        share = barrier / f"paths_{k}.txt"
        share.write_text("\n".join(paths[k::processes]), encoding="utf-8")
        outs.append(barrier / f"out_{k}.json")
        cmd = [sys.executable, __file__, "--line", line, "--worker", phase, "--worker-threads", str(threads)]
        cmd += ["--worker-paths", str(share), "--worker-barrier", str(barrier), "--worker-out", str(outs[-1])]
        children.append(subprocess.Popen(cmd, env=env, cwd=ROOT))
    while len(list(barrier.glob("ready_*"))) < processes:
        if any(c.poll() not in (None, 0) for c in children):
            raise SystemExit(f"a worker of {name} failed")
        time.sleep(0.05)
    (barrier / "go").touch()
    for child in children:
        if child.wait() != 0:
            raise SystemExit(f"a worker of {name} failed ({child.returncode})")
    rows = [json.loads(out.read_text()) for out in outs]
    seconds = max(row["seconds"] for row in rows)
    return {
        "images_per_s": round(sum(row["images"] for row in rows) / seconds, 2),
        "seconds": round(seconds, 2),
        "network_calls": sum(row["network_calls"] for row in rows),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--line", default="battery_tab", choices=["battery_tab", "pcb"])
    ap.add_argument("--images", type=int, default=96)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--onnx-runtime", default="openvino", choices=["onnxruntime", "openvino"])
    ap.add_argument("--onnx-precision", default="bf16", choices=["f32", "bf16"])
    ap.add_argument("--out", default=None)
    ap.add_argument("--worker", default=None, choices=["agent", "networks"], help=argparse.SUPPRESS)
    ap.add_argument("--worker-threads", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--worker-paths", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--worker-barrier", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()

    from defect_agent.runtime import configure_offline

    configure_offline()
    if args.worker:
        _worker(
            args.line,
            args.worker,
            args.worker_threads,
            Path(args.worker_paths),
            Path(args.worker_barrier),
            Path(args.worker_out),
        )
        return

    import bench_batch

    key = f"{args.onnx_runtime}_{args.onnx_precision}"
    best: dict[str, dict[str, Any]] = {}
    load_before = round(os.getloadavg()[0], 2)
    with tempfile.TemporaryDirectory(prefix="bench-ceiling-") as tmp:
        work = Path(tmp)
        env = bench_batch.onnx_env(args.line, str(work), args.onnx_runtime, args.onnx_precision)
        paths = bench_batch._images(args.line, args.images, work / "images", spread=True)
        for r in range(args.rounds):
            for name in FIGURES if r % 2 == 0 else reversed(FIGURES):
                row = _figure(args.line, name, paths, env, work)
                print(f"ceiling {args.line} {key} round {r} {name}: {row}", file=sys.stderr, flush=True)
                if name not in best or row["images_per_s"] > best[name]["images_per_s"]:
                    best[name] = row
    loop = best["loop"]["images_per_s"]
    result = {
        "images": len(paths),
        "rounds": args.rounds,
        "figures": {name: {**row, "over_loop": round(row["images_per_s"] / loop, 2)} for name, row in best.items()},
        "load_average_1min": [load_before, round(os.getloadavg()[0], 2)],
        "date": time.strftime("%Y-%m-%d"),
    }
    out_path = Path(args.out or ROOT / "benchmarks" / "results" / f"ceiling_{args.line}.json")
    saved: dict[str, Any] = json.loads(out_path.read_text()) if out_path.exists() else {}
    saved.update(benchmark="bench_ceiling", line=args.line, host=platform.node(), cpu_count=os.cpu_count())
    saved[key] = result
    out_path.write_text(json.dumps(saved, indent=1, ensure_ascii=False), encoding="utf-8")
    print("| figure | processes x threads | images/s | over the loop |")
    print("|---|---|---:|---:|")
    for name, row in result["figures"].items():
        _, processes, threads = FIGURES[name]
        print(f"| {name} | {processes} x {threads} | {row['images_per_s']} | {row['over_loop']} |")


if __name__ == "__main__":
    main()
