"""Batch inspection speed on this machine, every figure against a baseline run in the same process:

- `stages`: per-image p50 / p95 / p99 of the whole agent (one image per call, as a station inspects) and of the bare
  ultralytics detector of the same weights on the same input, taking turns per image; stage p50s; at each
  `--threads` count.
- `batch`: the nightly job (`run_batch`: prefetch, `--batch-size` images per model call) vs the one-image loop
  (`Inspector.inspect_image` per file) over the same images: images/s and the ratio.
- `busy`: the agent's p50 at 1 thread and at every core while a second process keeps the cores busy (numpy matrix
  products, 2 threads; `--burner-threads 1`: one core), against the idle figures of `stages`; and what `threads:
  auto`'s tuner picks. `--nice -5` runs the agent at a higher priority than that process (as a station service would
  be set up).
- `cold`: a new `defect-agent inspect` process to its first verdict (wall, two runs), on the torch engine and on the
  onnx engine (`DEFECT_AGENT_ENGINE=onnx`, files exported into var/onnx first).
- `onnx`: the agent with `engine: onnx` (files exported into a temporary folder) vs torch, p50 at each thread count,
  both in this process (their thread pools compete at 2 threads).
- `onnx_stages`: `stages`, `busy` and `batch` on the onnx engine in a child process without torch, against the bare exported
  detector on the same runtime, and the bare ultralytics detector (torch) on the same images in this process before
  and after the child (`agent_over_ultralytics`, the issue's baseline, its p50 over both); `--onnx-runtime openvino
  --onnx-precision bf16` runs them on OpenVINO (results under `onnx_stages_openvino_bf16`). Per image also the time inside the networks themselves
  (`networks_p50`, `networks_over_ultralytics`) and, on a line with an anomaly model, the agent without that stage
  (`without_anomaly_over_ultralytics`: the pipeline the issue measured).
- `ray`: the local engine and `--engine ray` (local Ray, 2 CPUs) over the same images and two instructions: the
  records compared (floats to 3 decimals).
- `ray_scale`: the nightly job as cron runs it (`defect-agent batch`, the line's nightly profile, onnx engine on
  `--onnx-runtime` / `--onnx-precision`) over `--images` and `--scale-images` images, local engine vs `--engine ray
  --workers 2 --threads 1`: images/s past each engine's start, where Ray starts to finish first, records compared.
- `rss`: `defect-agent batch` over `--rss-images` distinct generated images in a child process; its RSS sampled each
  second against the number of results written: RSS at 1 k and at the end.

    python benchmarks/bench_batch.py --line battery_tab --parts stages,batch,busy,cold
    python benchmarks/bench_batch.py --line pcb --parts stages,batch     # needs ../shared/datasets/deeppcb
    python benchmarks/bench_batch.py --line battery_tab --parts rss --rss-images 10000

Writes benchmarks/results/batch_<line>.json (parts merged into what is there) and prints a Markdown table."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CLI = str(Path(sys.executable).with_name("defect-agent"))  # the project's command in this virtual environment
sys.path.insert(0, str(ROOT))
INSTRUCTION = {
    "battery_tab": "找出所有极耳焊接偏移超0.3mm且伴随焊渣飞溅的电芯",
    "pcb": "flag boards with an open circuit or a short",
}


def _pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 1)


def _time_ms(call: Callable[[Any], Any], items: list[Any], rounds: int) -> list[float]:
    """Wall milliseconds of `call(item)` for every item, `rounds` times over."""
    ms = []
    for _ in range(rounds):
        for item in items:
            t = time.perf_counter()
            call(item)
            ms.append((time.perf_counter() - t) * 1000)
    return ms


def _inspects(inspector: Any, query: Any) -> Callable[[tuple[str, np.ndarray]], Any]:
    """One station call on a (path, decoded image) pair, for `_time_ms`."""
    return lambda pair: inspector.inspect_image_many([query], pair[0], image=pair[1])


def _images(line: str, n: int, folder: Path, spread: bool = False) -> list[str]:
    """`n` image files of the line: generated cells for battery_tab, DeepPCB test boards (with their templates
    beside them) for pcb - the first `n`, or with `spread` every k-th so that every group is in."""
    if line == "battery_tab":
        from vision.datasets.synth.battery_tab import generate_batch

        generate_batch(folder, n=n, seed=2323)
        return sorted(str(p) for p in folder.glob("*.png"))[:n]
    boards = sorted((ROOT.parent / "shared" / "datasets" / "deeppcb" / "PCBData").glob("*/*/*_test.jpg"))
    if not boards:
        raise SystemExit("pcb images need ../shared/datasets/deeppcb")
    step = max(len(boards) // n, 1) if spread else 1
    return [str(p) for p in boards[::step][:n]]


def _inspector(line: str, threads: int, engine: str = "torch", onnx_home: Path | None = None) -> Any:
    from agent.pipeline import Inspector
    from defect_agent.config import load_app_config
    from defect_agent.runtime import set_threads

    app = load_app_config().model_copy(update={"threads": threads, "engine": engine})
    inspector = Inspector.from_config(line=line, app=app, single_line=True)  # as batch and inspect load it
    set_threads(threads)
    return inspector


def _bare(inspector: Any) -> Any:
    """The bare ultralytics call on the locator's weights (for an adapter line: base + adapter merged); on the onnx
    engine the bare exported detector (letterbox, session, NMS)."""
    line = inspector.line.detector
    conf = line.conf if inspector.verifier is None else inspector.line.locator.detector_conf
    if getattr(inspector.locator, "engine", "torch") == "onnx":
        detector = inspector.locator.detector
        return lambda seen: detector.detect([seen], conf=conf, iou=line.iou, imgsz=line.imgsz)
    if line.adapter is None:
        model = inspector.locator.model
    else:
        from ultralytics import YOLO

        from defect_agent.paths import resolve
        from vision.locator.lora import merge_adapter

        merged = Path(tempfile.mkdtemp(prefix="bench-batch-")) / "merged.pt"
        merge_adapter(resolve(line.base or line.weights), resolve(line.adapter), merged)
        model = YOLO(str(merged))
    return lambda seen: model.predict([seen], conf=conf, iou=line.iou, imgsz=line.imgsz, verbose=False)


@contextlib.contextmanager
def session_runs_wrapped(wrap: Callable[[Callable[..., Any]], Callable[..., Any]]) -> Iterator[None]:
    """While open, every exported network's session (OpenVINO, and onnxruntime once imported) runs through
    `wrap(original run)`; the original `run` methods are put back on exit."""
    from vision.onnx_session import OpenVinoSession

    classes: list[Any] = [OpenVinoSession]
    if "onnxruntime" in sys.modules:
        classes.append(sys.modules["onnxruntime"].InferenceSession)
    originals = {cls: cls.run for cls in classes}
    for cls, original in originals.items():
        cls.run = wrap(original)
    try:
        yield
    finally:
        for cls, original in originals.items():
            cls.run = original


@contextlib.contextmanager
def _network_clock(spent: dict[str, float]) -> Iterator[dict[str, float]]:
    """While open, every exported network's run (OpenVINO or onnxruntime session) adds its wall milliseconds to
    `spent` under the file's name: what of the agent's time is the networks themselves."""

    def timed(original: Callable[..., Any]) -> Callable[..., Any]:
        def run(self: Any, *args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            try:
                return original(self, *args, **kwargs)
            finally:
                name = Path(str(getattr(self, "path", None) or getattr(self, "_model_path", "?"))).name
                spent[name] = spent.get(name, 0.0) + (time.perf_counter() - t) * 1000

        return run

    with session_runs_wrapped(timed):
        yield spent


@contextlib.contextmanager
def _without_anomaly(inspector: Any) -> Iterator[None]:
    """The inspector without its line's anomaly stage while open: the pipeline the issue measured (detector,
    measure, embed, retrieve, fuse; the anomaly model came with a later issue)."""
    stage, inspector.anomaly = inspector.anomaly, None
    try:
        yield
    finally:
        inspector.anomaly = stage


def part_stages(line: str, paths: list[str], threads: list[int], rounds: int, engine: str = "torch") -> dict[str, Any]:
    from agent.images import read_image
    from defect_agent.runtime import set_threads

    rows = {}
    for n in threads:
        inspector = _inspector(line, n, engine=engine)
        query = inspector.parse(INSTRUCTION[line])
        images = [read_image(p, inspector.line.image_size) for p in paths]
        seen = [inspector.locator_input(p, im) for p, im in zip(paths, images)]
        bare = _bare(inspector)
        set_threads(n)
        for p, im, s in list(zip(paths, images, seen))[:2]:  # warm-up
            bare(s)
            inspector.inspect_image_many([query], p, image=im)
        agent_ms: list[float] = []
        bare_ms: list[float] = []
        plain_ms: list[float] = []  # without the anomaly stage
        networks: list[dict[str, float]] = []  # per image, ms inside each exported network (onnx engine)
        stages: dict[str, list[float]] = {}
        plain = engine == "onnx" and inspector.anomaly is not None
        for _ in range(rounds):
            for p, im, s in zip(paths, images, seen):
                t = time.perf_counter()
                bare(s)
                bare_ms.append((time.perf_counter() - t) * 1000)
                clock: contextlib.AbstractContextManager[dict[str, float]] = (
                    _network_clock({}) if engine == "onnx" else contextlib.nullcontext({})
                )
                with clock as spent:
                    t = time.perf_counter()
                    verdict = inspector.inspect_image_many([query], p, image=im)[0]
                    agent_ms.append((time.perf_counter() - t) * 1000)
                networks.append(spent)
                for key, value in verdict.timings_ms.items():
                    if key != "total":
                        stages.setdefault(key, []).append(value)
                if plain:
                    with _without_anomaly(inspector):
                        t = time.perf_counter()
                        inspector.inspect_image_many([query], p, image=im)
                        plain_ms.append((time.perf_counter() - t) * 1000)
        a50, b50 = statistics.median(agent_ms), statistics.median(bare_ms)
        rows[str(n)] = {
            "agent_p50": round(a50, 1),
            "agent_p95": _pct(agent_ms, 95),
            "agent_p99": _pct(agent_ms, 99),
            "bare_p50": round(b50, 1),
            "bare_p95": _pct(bare_ms, 95),
            "agent_over_bare": round(a50 / b50, 2),
            "p95_over_p50": round(_pct(agent_ms, 95) / a50, 2),
            "stages_p50": {k: round(statistics.median(v), 1) for k, v in stages.items()},
            "images": len(agent_ms),
        }
        if engine == "onnx":
            names = sorted({name for spent in networks for name in spent})
            rows[str(n)]["networks_p50"] = round(statistics.median(sum(spent.values()) for spent in networks), 1)
            rows[str(n)]["network_p50"] = {
                name: round(statistics.median(spent.get(name, 0.0) for spent in networks), 1) for name in names
            }
        if plain_ms:
            rows[str(n)]["agent_without_anomaly_p50"] = round(statistics.median(plain_ms), 1)
        print(f"stages {line} {engine} threads={n}: {rows[str(n)]}", file=sys.stderr)
    return rows


def onnx_env(line: str, data: str, runtime: str, precision: str) -> dict[str, str]:
    """The environment of a process on the onnx engine with `runtime` / `precision` and `data` as its data folder,
    the line's files exported there first (by the project's command, as a line PC does)."""
    env = {
        **os.environ,
        "DEFECT_AGENT_DATA": data,
        "DEFECT_AGENT_ENGINE": "onnx",
        "DEFECT_AGENT_ONNX_RUNTIME": runtime,
        "DEFECT_AGENT_ONNX_PRECISION": precision,
    }
    subprocess.run([CLI, "export", "--line", line, "--format", "onnx"], check=True, env=env, capture_output=True)
    return env


def part_onnx_stages(
    line: str,
    paths: list[str],
    threads: list[int],
    rounds: int,
    runtime: str = "onnxruntime",
    precision: str = "f32",
    burner_threads: int = 2,
) -> dict[str, Any]:
    """`stages` on the onnx engine in a child process that never imports torch (a line PC's), the bare baseline the
    exported detector alone on the same runtime; files exported into a temporary data folder first. In this process,
    before the child and again after it, the bare ultralytics detector on the same images: its p50 over both
    (`agent_over_ultralytics`), so that a change of the machine's speed while the child runs hits the baseline as well
    (`ultralytics_bare_p50_before_after` shows how much it moved)."""
    # the baseline, the bare ultralytics detector of the same weights, in this process (torch), on the same
    # images and thread counts
    before = _ultralytics_bare(line, paths, threads, rounds)
    with tempfile.TemporaryDirectory(prefix="bench-batch-onnx-stages-") as data:
        env = onnx_env(line, data, runtime, precision)
        child_out = Path(data) / "child.json"
        cmd = [sys.executable, __file__, "--line", line, "--parts", "onnx_stages_here", "--out", str(child_out)]
        cmd += ["--images", str(len(paths)), "--rounds", str(rounds), "--threads", *map(str, threads)]
        cmd += ["--burner-threads", str(burner_threads)]
        subprocess.run(cmd, check=True, env=env, cwd=ROOT)
        rows = json.loads(child_out.read_text())["onnx_stages"]
    after = _ultralytics_bare(line, paths, threads, rounds)
    for n, ms in after.items():
        row, both = rows[n], before[n] + ms
        bare_p50 = round(statistics.median(both), 1)
        row["ultralytics_bare_p50"], row["ultralytics_bare_p95"] = bare_p50, _pct(both, 95)
        row["ultralytics_bare_p50_before_after"] = [
            round(statistics.median(before[n]), 1),
            round(statistics.median(ms), 1),
        ]
        row["agent_over_ultralytics"] = round(row["agent_p50"] / bare_p50, 2)
        row["networks_over_ultralytics"] = round(row["networks_p50"] / bare_p50, 2)
        if "agent_without_anomaly_p50" in row:
            row["without_anomaly_over_ultralytics"] = round(row["agent_without_anomaly_p50"] / bare_p50, 2)
        print(
            f"onnx_stages {line} threads={n}: agent {row['agent_p50']} ms, ultralytics {bare_p50} ms "
            f"(before / after {row['ultralytics_bare_p50_before_after']})",
            file=sys.stderr,
        )
    return rows


def _ultralytics_bare(line: str, paths: list[str], threads: list[int], rounds: int) -> dict[str, list[float]]:
    """Milliseconds of the bare ultralytics detector (torch) on each of `paths`, `rounds` times, at each thread
    count."""
    from agent.images import read_image
    from defect_agent.runtime import set_threads

    out = {}
    for n in threads:
        inspector = _inspector(line, n)
        seen = [inspector.locator_input(p, read_image(p, inspector.line.image_size)) for p in paths]
        bare = _bare(inspector)
        set_threads(n)
        for s in seen[:2]:  # warm-up
            bare(s)
        out[str(n)] = _time_ms(bare, seen, rounds)
    return out


def part_batch(
    line: str, paths: list[str], threads: int | None, batch_size: int, engine: str = "torch"
) -> dict[str, Any]:
    from agent.batch import BatchProfile, run_batch
    from agent.batch.threads import tuner_for

    setting = threads if threads else "auto"
    inspector = _inspector(line, threads or (os.cpu_count() or 1), engine=engine)
    query = inspector.parse(INSTRUCTION[line])
    profile = BatchProfile.model_validate(
        {"name": "bench", "line": line, "instructions": [{"id": "q", "text": INSTRUCTION[line]}]}
    )
    inspector.inspect_image(query, paths[0])  # warm-up
    out = {}
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp:
        # the one-image loop and the batch job take turns twice, so that a load change hits both alike
        loop_s, batch_s = [], []
        for r in range(2):
            t = time.perf_counter()
            for p in paths:
                inspector.inspect_image(query, p)
            loop_s.append(time.perf_counter() - t)
            t = time.perf_counter()
            summary = run_batch(
                profile,
                paths,
                Path(tmp) / f"run{r}",
                inspector=inspector,
                report=False,
                batch_size=batch_size,
                threads=tuner_for(setting, engine),
            )
            batch_s.append(time.perf_counter() - t)
            assert summary.inspected == len(paths), summary
        n = len(paths)
        out = {
            "images": n,
            "batch_size": batch_size,
            "threads": setting,
            "loop_images_per_s": round(n / min(loop_s), 2),
            "batch_images_per_s": round(n / min(batch_s), 2),
            "batch_over_loop": round(min(loop_s) / min(batch_s), 2),
            "tuner_ms_per_image": summary.threads,
        }
    print(f"batch {line} {engine}: {out}", file=sys.stderr)
    return out


def _burner(threads: int = 2) -> subprocess.Popen:
    """The competing process on `threads` threads, at the default priority whatever `--nice` gave this one."""
    code = (
        f"import os; os.environ['OMP_NUM_THREADS']='{threads}'\n"
        "import numpy as np\na=np.random.rand(700,700)\nwhile True: a=(a@a)/700.0"
    )
    return subprocess.Popen([sys.executable, "-c", code], preexec_fn=lambda: os.setpriority(os.PRIO_PROCESS, 0, 0))


def part_busy(
    line: str,
    paths: list[str],
    threads: list[int],
    rounds: int,
    idle: dict[str, Any],
    engine: str = "torch",
    burner_threads: int = 2,
) -> dict[str, Any]:
    from agent.images import read_image
    from defect_agent.runtime import set_threads

    rows: dict[str, Any] = {}
    burner = _burner(burner_threads)
    time.sleep(3)
    try:
        inspector = _inspector(line, 1, engine=engine)
        query = inspector.parse(INSTRUCTION[line])
        pairs = [(p, read_image(p, inspector.line.image_size)) for p in paths]
        for n in threads:
            if engine == "onnx":  # a session keeps the thread count it was built with
                inspector = _inspector(line, n, engine=engine)
            set_threads(n)
            inspector.inspect_image_many([query], pairs[0][0], image=pairs[0][1])  # warm-up
            ms = _time_ms(_inspects(inspector, query), pairs, rounds)
            p50 = statistics.median(ms)
            idle_p50 = idle.get(str(n), {}).get("agent_p50")
            rows[str(n)] = {
                "agent_p50_busy": round(p50, 1),
                "agent_p50_idle": idle_p50,
                "busy_over_idle": round(p50 / idle_p50, 2) if idle_p50 else None,
            }
            print(f"busy {line} {engine} threads={n}: {rows[str(n)]}", file=sys.stderr)
        best_idle = min((v["agent_p50"] for v in idle.values() if isinstance(v, dict)), default=None)
        best_busy = min(v["agent_p50_busy"] for v in rows.values())
        rows["best_busy_over_best_idle"] = round(best_busy / best_idle, 2) if best_idle else None
        rows["burner_threads"] = burner_threads
    finally:
        burner.kill()
    return rows


def _first_verdict_s(line: str, path: str, runs: int = 2, **env: str) -> list[float]:
    """Wall seconds of a new `defect-agent inspect` process on one image, `runs` times (`env` added to its
    environment)."""
    out_file = Path(tempfile.mkdtemp(prefix="bench-cold-")) / "one.jsonl"
    seconds = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(
            [CLI, "inspect", INSTRUCTION[line], path, "--line", line, "--out", str(out_file)],
            check=True,
            capture_output=True,
            cwd=ROOT,
            env={**os.environ, **env},
        )
        seconds.append(round(time.perf_counter() - t, 2))
    return seconds


def part_cold(line: str, paths: list[str]) -> dict[str, Any]:
    runs = _first_verdict_s(line, paths[0])
    code = (
        "import time,sys; t=time.perf_counter(); import torch; a=time.perf_counter()-t; import torch._dynamo; "
        "print(a, time.perf_counter()-t-a)"
    )
    torch_s, dynamo_s = map(
        float, subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.split()
    )
    # the onnx engine: files exported where a line PC keeps them (var/onnx), the same command with
    # DEFECT_AGENT_ENGINE=onnx; its process imports no torch (tests/test_onnx_parity.py)
    subprocess.run([CLI, "export", "--line", line, "--format", "onnx"], check=True, capture_output=True, cwd=ROOT)
    onnx_runs = _first_verdict_s(line, paths[0], DEFECT_AGENT_ENGINE="onnx")
    out = {
        "inspect_first_verdict_s": runs,
        "onnx_engine_inspect_first_verdict_s": onnx_runs,
        "import_torch_s": round(torch_s, 2),
        "import_torch_dynamo_s": round(dynamo_s, 2),
    }
    print(f"cold {line}: {out}", file=sys.stderr)
    return out


def part_onnx(line: str, paths: list[str], threads: list[int], rounds: int) -> dict[str, Any]:
    from agent.images import read_image
    from defect_agent.config import load_line
    from defect_agent.runtime import set_threads

    rows = {}
    with tempfile.TemporaryDirectory(prefix="bench-batch-onnx-") as data:
        os.environ["DEFECT_AGENT_DATA"] = data  # the engine reads var/onnx/<line> under the data dir
        subprocess.run(
            [CLI, "export", "--line", line, "--format", "onnx"],
            check=True,
            cwd=ROOT,
            env={**os.environ},
            capture_output=True,
        )
        load_line(line)
        for n in threads:
            engines = {e: _inspector(line, n, engine=e) for e in ("torch", "onnx")}
            query = engines["torch"].parse(INSTRUCTION[line])
            images = [read_image(p, engines["torch"].line.image_size) for p in paths]
            ms: dict[str, list[float]] = {e: [] for e in engines}
            same = 0
            for insp in engines.values():
                set_threads(n)
                insp.inspect_image_many([query], paths[0], image=images[0])
            for _ in range(rounds):
                for p, im in zip(paths, images):
                    verdicts = {}
                    for engine, insp in engines.items():
                        set_threads(n)
                        t = time.perf_counter()
                        verdicts[engine] = insp.inspect_image_many([query], p, image=im)[0]
                        ms[engine].append((time.perf_counter() - t) * 1000)
                    same += verdicts["torch"].verdict == verdicts["onnx"].verdict
            t50, o50 = statistics.median(ms["torch"]), statistics.median(ms["onnx"])
            rows[str(n)] = {
                "torch_p50": round(t50, 1),
                "onnx_p50": round(o50, 1),
                "onnx_speedup": round(t50 / o50, 2),
                "same_part_verdict": f"{same}/{len(ms['torch'])}",
            }
            print(f"onnx {line} threads={n}: {rows[str(n)]}", file=sys.stderr)
    return rows


def _max_float_diff(a: Any, b: Any) -> float | None:
    """The largest |a - b| over the numbers of two records of the same shape; None where anything but a number
    differs (a class, a verdict, a reason, a different number of findings)."""
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return None
        diffs = [_max_float_diff(a[k], b[k]) for k in a]
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return None
        diffs = [_max_float_diff(x, y) for x, y in zip(a, b)]
    elif isinstance(a, float | int) and isinstance(b, float | int) and not isinstance(a, bool):
        return abs(float(a) - float(b))
    else:
        return 0.0 if a == b else None
    known = [d for d in diffs if d is not None]
    return None if len(known) < len(diffs) else max(known, default=0.0)


def part_ray(line: str, paths: list[str], batch_size: int, workers: int) -> dict[str, Any]:
    """The same profile over the same images by the local engine and by `--engine ray` (local Ray, `workers`
    CPUs): records compared one by one."""
    from agent.batch import BatchProfile, run_batch
    from agent.batch.ledger import comparable
    from agent.batch.ray_engine import run_batch_ray

    profile = BatchProfile.model_validate(
        {
            "name": "bench",
            "line": line,
            "instructions": [{"id": "q", "text": INSTRUCTION[line]}, {"id": "any", "text": "find every defect"}],
        }
    )
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp:
        t = time.perf_counter()
        local = run_batch(profile, paths, Path(tmp) / "local", report=False, batch_size=batch_size)
        local_s = time.perf_counter() - t
        t = time.perf_counter()
        remote = run_batch_ray(profile, paths, Path(tmp) / "ray", batch_size=batch_size, workers=workers, report=False)
        ray_s = time.perf_counter() - t

        def records(name: str) -> list[Any]:
            text = (Path(tmp) / name / "verdicts.jsonl").read_text(encoding="utf-8")
            return [comparable(json.loads(row), digits=None) for row in text.splitlines()]

        a, b = records("local"), records("ray")
        a3, b3 = [comparable(r) for r in a], [comparable(r) for r in b]
    out = {
        "images": len(paths),
        "instructions": 2,
        "records_local": len(a),
        "records_ray": len(b),
        "records_equal_3_decimals": sum(x == y for x, y in zip(a3, b3)),
        # everything but numbers equal (verdicts, classes, reasons, findings), and the numbers' largest difference
        "records_equal_but_float_noise": sum(_max_float_diff(x, y) is not None for x, y in zip(a, b)),
        "max_number_diff": max((d for x, y in zip(a, b) if (d := _max_float_diff(x, y)) is not None), default=0.0),
        "part_verdicts_local": local.verdicts,
        "part_verdicts_ray": remote.verdicts,
        "seconds_local": round(local_s, 1),
        "seconds_ray_with_start": round(ray_s, 1),
        "workers": workers,
    }
    print(f"ray {line}: {out}", file=sys.stderr)
    return out


def part_ray_scale(line: str, small: int, large: int, runtime: str, precision: str, workers: int = 2) -> dict:
    """The nightly job as cron runs it - `defect-agent batch` with the line's nightly profile, a new process, the onnx
    engine - over `small` and then `large` images, by the local engine and by `--engine ray --workers W --threads 1`:
    wall seconds, each engine's images/s past its start ((large - small) / the difference in wall time), where Ray
    starts to finish first, and the large runs' records compared."""
    from agent.batch.ledger import comparable

    profile = ROOT / "configs" / "profiles" / f"{line}_nightly.yaml"
    with tempfile.TemporaryDirectory(prefix="bench-ray-scale-") as tmp:
        env = onnx_env(line, tmp, runtime, precision)
        paths = _images(line, large, Path(tmp) / "all", spread=True)
        manifests = {}
        for n in (small, large):
            manifests[n] = Path(tmp) / f"images_{n}.txt"
            manifests[n].write_text("\n".join(paths[:n]) + "\n", encoding="utf-8")
        engines = {"local": [], "ray": ["--engine", "ray", "--workers", str(workers), "--threads", "1"]}
        wall: dict[str, dict[int, float]] = {name: {} for name in engines}
        for n in (small, large):
            for name, extra in engines.items():
                folder = Path(tmp) / f"out_{name}_{n}"
                t = time.perf_counter()
                done = subprocess.run(
                    [CLI, "batch", "--profile", str(profile), str(manifests[n]), "--out", str(folder), *extra],
                    env=env,
                    capture_output=True,
                    text=True,
                )
                wall[name][n] = round(time.perf_counter() - t, 1)
                if done.returncode not in (0, 1):
                    raise SystemExit(f"batch {name} over {n} images failed ({done.returncode}): {done.stderr[-2000:]}")

        def records(name: str) -> dict[str, Any]:
            rows = (Path(tmp) / f"out_{name}_{large}" / "verdicts.jsonl").read_text(encoding="utf-8").splitlines()
            return {json.loads(row)["key"]: comparable(json.loads(row)) for row in rows}

        local, ray = records("local"), records("ray")
    rate = {name: round((large - small) / (wall[name][large] - wall[name][small]), 2) for name in engines}
    start = {name: round(wall[name][small] - small / rate[name], 1) for name in engines}
    out = {
        "images": [small, large],
        "workers": workers,
        "runtime": f"{runtime}-{precision}",
        "wall_s": {name: {str(n): s for n, s in by_n.items()} for name, by_n in wall.items()},
        "images_per_s_past_start": rate,
        "start_s": start,
        "ray_over_local_past_start": round(rate["ray"] / rate["local"], 2),
        # where the two wall-time lines cross: start_ray + n / rate_ray = start_local + n / rate_local
        "ray_first_from_images": (
            round((start["ray"] - start["local"]) / (1 / rate["local"] - 1 / rate["ray"]))
            if rate["ray"] > rate["local"]
            else None
        ),
        "records": [len(local), len(ray)],
        "records_equal_3_decimals": sum(local[k] == ray.get(k) for k in local),
    }
    print(f"ray_scale {line}: {out}", file=sys.stderr)
    return out


def _rss_kb(pid: int) -> int:
    for row in Path(f"/proc/{pid}/status").read_text().splitlines():
        if row.startswith("VmRSS:"):
            return int(row.split()[1])
    return 0


def part_rss(line: str, n: int, batch_size: int) -> dict[str, Any]:
    """Distinct images (a base image with one pixel changed per copy: the results key is the content hash)."""
    import cv2

    from agent.images import read_image

    with tempfile.TemporaryDirectory(prefix="bench-rss-") as tmp:
        base = _images(line, 24, Path(tmp) / "base")
        folder = Path(tmp) / "images"
        folder.mkdir()
        bases = [read_image(p) for p in base]
        for i in range(n):
            image = bases[i % len(bases)].copy()
            image[i // 640 % image.shape[0], i % 640] ^= 0xFF
            cv2.imwrite(str(folder / f"img_{i:06d}.png"), image, [cv2.IMWRITE_PNG_COMPRESSION, 1])
        profile = Path(tmp) / "profile.yaml"
        profile.write_text(
            json.dumps({"name": "rss", "line": line, "instructions": [{"id": "q", "text": INSTRUCTION[line]}]}),
            encoding="utf-8",
        )
        out = Path(tmp) / "out"
        cmd = [CLI, "batch", str(folder), "--profile", str(profile)]
        cmd += ["--out", str(out), "--no-kb", "--batch-size", str(batch_size)]
        child = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        samples: list[tuple[int, int]] = []
        results = out / "verdicts.jsonl"
        t0 = time.monotonic()
        while child.poll() is None:
            time.sleep(1.0)
            try:
                done = sum(1 for _ in results.open("rb")) if results.exists() else 0
                samples.append((done, _rss_kb(child.pid)))
            except (FileNotFoundError, ProcessLookupError):
                break
        seconds = time.monotonic() - t0

    def at(count: int) -> float:
        near = [rss for done, rss in samples if done >= count and rss]
        return round(near[0] / 1024, 1) if near else float("nan")

    last = [rss for _, rss in samples if rss]
    at_1k, at_end = at(min(1000, n)), at(n)  # at_end: when the last result was written (the report comes after)
    out_row: dict[str, Any] = {
        "images": n,
        "exit_code": child.returncode,
        "seconds": round(seconds, 1),
        "rss_mb_at_1k": at_1k,
        "rss_mb_at_end": at_end,
        "rss_mb_max": round(max(last) / 1024, 1) if last else None,
        "samples": samples[:: max(1, len(samples) // 60)],
    }
    if last:
        out_row["end_over_1k"] = round(at_end / at_1k, 3)
    print(f"rss {line}: { {k: v for k, v in out_row.items() if k != 'samples'} }", file=sys.stderr)
    return out_row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--line", default="battery_tab", choices=["battery_tab", "pcb"])
    ap.add_argument("--parts", default="stages,batch,busy,cold")
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--batch-threads", type=int, default=0, help="threads of the batch part (0: auto)")
    ap.add_argument("--rss-images", type=int, default=10000)
    ap.add_argument("--scale-images", type=int, default=480, help="ray_scale: the large run (the small: --images)")
    ap.add_argument("--onnx-runtime", default="onnxruntime", choices=["onnxruntime", "openvino"], help="onnx_stages")
    ap.add_argument("--onnx-precision", default="f32", choices=["f32", "bf16"], help="onnx_stages (bf16: openvino)")
    ap.add_argument(
        "--nice",
        type=int,
        default=0,
        help="run the agent at this priority (negative needs root; the busy part's competing process stays at 0)",
    )
    ap.add_argument(
        "--burner-threads", type=int, default=2, help="busy: the competing process's threads (2: both cores busy)"
    )
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.nice:
        os.setpriority(os.PRIO_PROCESS, 0, args.nice)  # before any thread starts: children inherit it

    from defect_agent.runtime import configure_offline

    configure_offline()
    out_path = Path(args.out or ROOT / "benchmarks" / "results" / f"batch_{args.line}.json")
    result: dict[str, Any] = json.loads(out_path.read_text()) if out_path.exists() else {}
    result.update(
        benchmark="bench_batch",
        line=args.line,
        host=platform.node(),
        cpu_count=os.cpu_count(),
        load_average_1min_before=round(os.getloadavg()[0], 2),
    )
    parts = args.parts.split(",")
    with tempfile.TemporaryDirectory(prefix="bench-batch-img-") as tmp:
        paths = _images(args.line, args.images, Path(tmp)) if set(parts) - {"rss"} else []
        if "stages" in parts:
            result["stages"] = part_stages(args.line, paths, args.threads, args.rounds)
        if "batch" in parts:
            result["batch"] = part_batch(args.line, paths, args.batch_threads, args.batch_size)
        if "busy" in parts:
            result["busy"] = part_busy(
                args.line,
                paths,
                args.threads,
                args.rounds,
                result.get("stages", {}),
                burner_threads=args.burner_threads,
            )
        if "cold" in parts:
            result["cold"] = part_cold(args.line, paths)
        if "onnx" in parts:
            result["onnx"] = part_onnx(args.line, paths, args.threads, args.rounds)
        if "onnx_stages" in parts:
            key = "onnx_stages"
            if args.onnx_runtime != "onnxruntime":
                key += f"_{args.onnx_runtime}_{args.onnx_precision}"
            if args.nice:
                key += f"_nice{args.nice}"
            if args.burner_threads != 2:
                key += f"_burner{args.burner_threads}"
            result[key] = part_onnx_stages(
                args.line, paths, args.threads, args.rounds, args.onnx_runtime, args.onnx_precision, args.burner_threads
            )
        if "onnx_stages_here" in parts:  # the child of onnx_stages
            stages = part_stages(args.line, paths, args.threads, args.rounds, engine="onnx")
            stages["busy"] = part_busy(
                args.line, paths, args.threads, args.rounds, stages, engine="onnx", burner_threads=args.burner_threads
            )
            stages["batch"] = part_batch(args.line, paths, args.batch_threads, args.batch_size, engine="onnx")
            stages["torch_imported"] = "torch" in sys.modules
            from defect_agent.runtime import chosen_onnx_backend

            stages["runtime"] = "-".join(chosen_onnx_backend())
            result["onnx_stages"] = stages
        if "ray" in parts:
            result["ray"] = part_ray(args.line, paths, args.batch_size, workers=2)
        if "ray_scale" in parts:
            key = f"ray_scale_{args.onnx_runtime}_{args.onnx_precision}"
            result[key] = part_ray_scale(
                args.line, args.images, args.scale_images, args.onnx_runtime, args.onnx_precision
            )
        if "rss" in parts:
            result["rss"] = part_rss(args.line, args.rss_images, args.batch_size)
    result["load_average_1min_after"] = round(os.getloadavg()[0], 2)
    out_path.write_text(json.dumps(result, indent=1, ensure_ascii=False), encoding="utf-8")
    print(json.dumps({k: v for k, v in result.items() if k != "rss"}, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
