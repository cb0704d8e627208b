"""LoRA adapters vs full fine-tuning vs head-only on DeepPCB (the `pcb` line), at 50, 200 and all training images.

For every (size, method) it trains from the same base, measures the result on the fixed validation groups with
`vision.locator.eval.evaluate_locator` (mAP50, mAP50-95, per-class P/R, image-level miss rate at the line's operating
confidence) and records trainable parameters, the per-line file size and the training time. Jobs run as parallel
processes (one GPU can train many YOLOv8n at once; the data loaders are the bottleneck). Writes
benchmarks/results/lora.json and benchmarks/results/lora.md.

Methods: lora<r> (rank r over every ordinary conv, class convs in full), lora<r>h<k> (rank k in the Detect
head's convs, r elsewhere), lora<r>b (plus a per-line output bias on every adapted conv, peft `lora_bias`),
lora<r>d (DoRA: plus a per-line magnitude for every output channel of every adapted conv, peft `use_dora`), full
(every weight), fullbn (every weight, BatchNorm running statistics kept at the base's), head (freeze layers 0-21:
only the Detect head trains), frozen_backbone (freeze 0-9: neck + head train). Suffix `_ref`: the
reference-composite dataset (test, template, |difference|) instead of the plain test image. `--rank-pattern p3`
with lora2: the per-module ranks of configs/lora_ranks.yaml.

    python benchmarks/bench_lora.py --device 0 --sizes 50,200,all --parallel 12
    python benchmarks/bench_lora.py --device cpu --sizes 16 --epochs 16:2 --imgsz 320 --methods lora4,full   # smoke

Two-stage schedules (the shipped pcb adapter: 320 px, then 640 px): `--init-from <first run's work>/artifacts`
continues every job from the file of the same method and size there (a full checkpoint becomes the job's base, an
adapter its starting adapter), e.g. `--imgsz 640 --epochs all:10 --lr0 0.0005 --warmup-epochs 0 --init-from
var/bench_lora320/artifacts`. Every job is also validated on square, unpadded input (`map50_square`), the geometry
the agent's predictor uses, besides ultralytics' padded rectangular batches (`map50`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DEFAULT_EPOCHS = {50: 100, 200: 50, "all": 30}
FREEZE = {"head": 22, "frozen_backbone": 10, "full": None, "fullbn": None}


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _patch_polars() -> None:
    """ultralytics reads results.csv back with polars when saving checkpoints; machines without polars (the GPU
    box) get the same dict from the csv module."""
    try:
        import polars  # noqa: F401

        return
    except ImportError:
        pass
    import csv

    from ultralytics.engine.trainer import BaseTrainer

    def read_results_csv(self):  # same output shape as polars' to_dict(as_series=False)
        try:
            with open(self.csv, newline="") as fh:
                rows = list(csv.DictReader(fh))
        except OSError:
            return {}
        out: dict[str, list] = {}
        for row in rows:
            for k, v in row.items():
                try:
                    out.setdefault(k.strip(), []).append(float(v))
                except (TypeError, ValueError):
                    out.setdefault(k.strip(), []).append(v)
        return out

    BaseTrainer.read_results_csv = read_results_csv


def _deadline_callback(deadline: float):
    def stop_if_late(trainer: Any) -> None:
        if time.time() > deadline and not trainer.stop:
            _log(f"deadline reached at epoch {trainer.epoch + 1}/{trainer.epochs}: stopping early")
            trainer.stop = True
            trainer._defect_agent_truncated = True

    return stop_if_late


def _count_trainable(weights: Path, freeze: int | None) -> tuple[int, int]:
    import torch

    ckpt = torch.load(weights, map_location="cpu", weights_only=False)
    model = ckpt.get("ema") or ckpt["model"]
    total = trainable = 0
    for name, p in model.named_parameters():
        total += p.numel()
        layer = int(name.split(".")[1]) if name.startswith("model.") else -1
        if ".dfl" in name or (freeze is not None and layer < freeze):
            continue
        trainable += p.numel()
    return trainable, total


def run_job(spec: dict[str, Any]) -> dict[str, Any]:
    """Train and evaluate one configuration; returns (and writes) its result record."""
    os.environ.setdefault("DEFECT_AGENT_THREADS", "2")
    from defect_agent.runtime import configure_offline

    configure_offline()
    from vision.locator.model import Locator, import_yolo

    import_yolo()
    _patch_polars()
    from ultralytics.utils import callbacks as ucb

    from defect_agent.config import load_line, load_rank_allocation
    from vision.locator.eval import evaluate_locator

    work = Path(spec["work"])
    job_id = spec["id"]
    out_dir = work / "artifacts"
    out_dir.mkdir(parents=True, exist_ok=True)
    deadline = float(spec.get("deadline") or 0)
    if deadline:
        ucb.default_callbacks["on_train_epoch_end"].append(_deadline_callback(deadline))
    line = load_line("pcb")
    common = dict(workers=spec["workers"], val=False, deterministic=False, plots=False)
    if spec.get("amp"):
        common["amp"] = spec["amp"]
    if spec.get("lr0"):
        common["lr0"] = spec["lr0"]
        if not spec["method"].startswith(("lora", "dora")):
            common["optimizer"] = "AdamW"  # ultralytics' 'auto' optimizer ignores lr0
    if spec.get("warmup_epochs") is not None:
        common["warmup_epochs"] = spec["warmup_epochs"]
    if spec.get("cache"):
        common["cache"] = spec["cache"]
    if spec[
        "reference"
    ]:  # composite channels (test, template, difference): no hue / saturation jitter, as in train_adapter
        common.update(hsv_h=0.0, hsv_s=0.0)
    method = spec["method"]
    base = Path(spec["base"])
    init = Path(spec["init"]) if spec.get("init") else None
    if init is not None and init.suffix == ".pt":
        base = init  # full / head fine-tuning continues from the first stage's checkpoint
    started = time.time()
    record: dict[str, Any] = {
        k: spec[k] for k in ("id", "method", "rank", "size", "n_train", "epochs", "batch", "imgsz", "reference", "base")
    }
    record["head_rank"] = spec.get("head_rank")
    record["rank_pattern"] = spec.get("rank_pattern") or None  # a named allocation of configs/lora_ranks.yaml
    # None: ultralytics' auto AdamW (0.001 for six classes) for full / head; LoRA records the rate it trained at
    record["lr0"] = spec.get("lr0") or None
    record["head_lr0"] = spec.get("head_lr0") or None  # main() sets it for LoRA jobs only
    record["init"] = str(init) if init else None
    record["warmup_epochs"] = spec.get("warmup_epochs")
    if method in ("lora", "lora_bias", "dora"):
        from vision.locator.adapter_train import train_adapter
        from vision.locator.lora import load_adapted_yolo

        adapter = out_dir / f"{job_id}.safetensors"
        res = train_adapter(
            spec["data"],
            base,
            adapter,
            rank=spec["rank"],
            lora_bias=method == "lora_bias",
            dora=method == "dora",
            head_rank=spec.get("head_rank"),
            rank_pattern=load_rank_allocation(spec["rank_pattern"]) if spec.get("rank_pattern") else None,
            head_lr0=spec.get("head_lr0") or None,
            init_adapter=init if init is not None and init.suffix == ".safetensors" else None,
            epochs=spec["epochs"],
            imgsz=spec["imgsz"],
            batch=spec["batch"],
            device=spec["device"],
            seed=spec["seed"],
            line="pcb",
            reference="template" if spec["reference"] else "none",
            run_dir=work / "runs",
            **common,
        )
        yolo = load_adapted_yolo(base, adapter)
        from vision.locator.model import _version_of

        locator = Locator(
            yolo,
            f"{_version_of(base)}+{_version_of(adapter)}",
            line.class_names,
            imgsz=spec["imgsz"],
            conf=line.locator.conf,
            iou=line.locator.iou,
            device=spec["device"],
        )
        from vision.locator.lora import read_adapter_meta

        record["lr0"] = read_adapter_meta(adapter).provenance.get("lr0")  # the default when --lr0 is not given
        record.update(
            trainable_params=res.trainable["trainable"],
            lora_params=res.trainable["lora"],
            head_params=res.trainable["head"],
            base_params=res.trainable["base"],
            file=adapter.name,
            file_bytes=res.adapter_bytes,
            base_bytes=res.base_bytes,
            train_seconds=res.train_seconds,
            epochs_run=res.epochs_run,
            ultralytics_final=res.final_metrics,
        )
    else:
        from vision.locator.train import train_locator

        weights = out_dir / f"{job_id}.pt"
        freeze = FREEZE[method]
        res = train_locator(
            spec["data"],
            base,
            weights,
            epochs=spec["epochs"],
            imgsz=spec["imgsz"],
            batch=spec["batch"],
            device=spec["device"],
            freeze=freeze,
            seed=spec["seed"],
            run_dir=work / "runs",
            freeze_bn_stats=method == "fullbn",
            **common,
        )
        trainable, total = _count_trainable(weights, freeze)
        locator = Locator.from_weights(
            weights,
            line.class_names,
            imgsz=spec["imgsz"],
            conf=line.locator.conf,
            iou=line.locator.iou,
            device=spec["device"],
        )
        record.update(
            trainable_params=trainable,
            base_params=total,
            file=weights.name,
            file_bytes=weights.stat().st_size,
            base_bytes=base.stat().st_size,
            train_seconds=res.train_seconds,
            epochs_run=res.epochs_run,
            ultralytics_final=res.final_metrics,
        )
    record["truncated"] = record["epochs_run"] < spec["epochs"]
    record["delta_bytes_fp16"] = 2 * int(record["trainable_params"])  # what a line needs beyond the shared base
    metrics = evaluate_locator(
        locator,
        spec["data"],
        split="val",
        line=line,
        imgsz=spec["imgsz"],
        device=spec["device"],
        json_out=out_dir / f"{job_id}.metrics.json",
        square=True,
    )
    # image-level false alarms on the validation boards' defect-free templates (DeepPCB has no defect-free test
    # images); the miss rate alone says nothing when a detector fires everywhere
    import cv2
    import yaml as _yaml

    data = _yaml.safe_load(Path(spec["data"]).read_text())
    neg_dir = Path(data["path"]) / data.get("negatives", "images/val_negatives")
    negs = sorted(neg_dir.iterdir()) if neg_dir.is_dir() else []
    fired = 0
    for start in range(0, len(negs), 16):
        batch = [cv2.imread(str(p), cv2.IMREAD_COLOR) for p in negs[start : start + 16]]
        fired += sum(1 for dets in locator.predict(batch) if dets)
    record.update(negatives=len(negs), false_alarm_images=fired, false_alarm_rate=fired / len(negs) if negs else None)
    record.update(
        map50=metrics.map50,
        map50_95=metrics.map50_95,
        map50_square=metrics.map50_square,
        map50_95_square=metrics.map50_95_square,
        miss_rate=metrics.miss_rate,
        missed_images=metrics.missed_images,
        images=metrics.n_images,
        conf_operating=metrics.conf_operating,
        per_class={
            c.name: {"ap50": c.ap50, "ap50_95": c.ap50_95, "precision": c.precision, "recall": c.recall}
            for c in metrics.per_class
        },
        wall_seconds=round(time.time() - started, 1),
    )
    (work / "results").mkdir(parents=True, exist_ok=True)
    (work / "results" / f"{job_id}.json").write_text(json.dumps(record, indent=1), encoding="utf-8")
    _log(
        f"{job_id}: mAP50 {record['map50']:.4f} mAP50-95 {record['map50_95']:.4f} miss {record['miss_rate']:.4f} "
        f"epochs {record['epochs_run']}/{record['epochs']} train {record['train_seconds']:.0f}s"
    )
    return record


def prepare_data(src: Path, work: Path, sizes: list, reference: bool, seed: int) -> dict[str, dict[Any, str]]:
    """Convert DeepPCB (plain and, if asked, reference composites) and write the subset YAMLs."""
    from vision.datasets.deeppcb import convert_deeppcb, subset_data_yaml

    yamls: dict[str, dict[Any, str]] = {}
    for ref in [False, True] if reference else [False]:
        key = "ref" if ref else "plain"
        ds = work / f"deeppcb_{key}"
        if not (ds / "data.yaml").is_file():
            convert_deeppcb(src, ds, reference=ref, progress=False)
        yamls[key] = {}
        for size in sizes:
            yamls[key][size] = (
                str(ds / "data.yaml") if size == "all" else str(subset_data_yaml(ds / "data.yaml", int(size), seed))
            )
    return yamls


def first_stage_file(init_dir: Path, method_name: str, size: Any, rank_pattern: str = "") -> Path:
    """The artifact an earlier run wrote for the same method and size (its job id before any per-run suffix but the
    rank pattern's): an adapter for LoRA methods, a checkpoint otherwise."""
    lora = method_name.startswith("lora")
    stem = f"{method_name}_n{size}" + (f"_{rank_pattern}" if rank_pattern and lora else "")
    path = Path(init_dir) / (stem + (".safetensors" if lora else ".pt"))
    if not path.is_file():
        raise SystemExit(f"--init-from: {path} not found (the first stage's file for {method_name} at size {size})")
    return path


LORA_METHOD = re.compile(r"^lora(\d+)(?:h(\d+))?([bd]?)$")  # rank, head rank, bias / DoRA


def head_rank_of(name: str) -> int | None:
    """`lora2h8_ref` -> 8: the rank of the Detect head's convolutions, None when it is the method's rank."""
    match = LORA_METHOD.match(name.split("_")[0])
    return int(match.group(2)) if match and match.group(2) else None


def parse_method(name: str) -> tuple[str, int | None, bool, bool]:
    """`lora8_ref_alt` -> ('lora', 8, reference, alternative base)."""
    parts = name.split("_")
    alt = parts[-1] == "alt"
    parts = parts[:-1] if alt else parts
    ref = parts[-1] == "ref"
    core = "_".join(parts[:-1] if ref else parts)
    if core.startswith("lora"):
        match = LORA_METHOD.match(core)
        if not match:
            raise SystemExit(f"unknown method {name!r}")
        kind = {"b": "lora_bias", "d": "dora"}.get(match.group(3), "lora")
        return kind, int(match.group(1)), ref, alt
    if core not in FREEZE:
        raise SystemExit(f"unknown method {name!r}")
    return core, None, ref, alt


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def markdown_table(records: list[dict[str, Any]]) -> str:
    def size_key(r):
        return (10**9 if r["size"] == "all" else int(r["size"]), r["id"])

    rows = [
        "| train images | method | mAP50 | mAP50-95 | mAP50 (square) | mAP50-95 (square) | miss rate | false alarms | "
        "trainable params | per-line file | epochs | train time |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    bases = sorted({Path(r["base"]).name for r in records})
    for r in sorted(records, key=size_key):
        name = {"lora": f"lora{r['rank']}", "lora_bias": f"lora{r['rank']} +bias", "dora": f"dora{r['rank']}"}.get(
            r["method"], r["method"]
        )
        name += f" head r{r['head_rank']}" if r.get("head_rank") else ""
        name += f" ranks {r['rank_pattern']}" if r.get("rank_pattern") else ""
        name += " +ref" if r["reference"] else ""
        name += f" lr0 {r['lr0']:g}" if r.get("lr0") else ""
        name += f" head {r['head_lr0']:g}" if r.get("head_lr0") else ""
        name += f", continued from {Path(r['init']).name}" if r.get("init") else ""
        if len(bases) > 1:
            name += f" [{Path(r['base']).stem}]"
        share = 100.0 * r["trainable_params"] / max(1, r["base_params"])
        rows.append(
            f"| {r['n_train']} | {name} | {r['map50']:.4f} | {r['map50_95']:.4f} | {_fmt(r.get('map50_square'))} | "
            f"{_fmt(r.get('map50_95_square'))} | {100 * r['miss_rate']:.1f}% | "
            f"{'-' if r.get('false_alarm_rate') is None else format(100 * r['false_alarm_rate'], '.1f') + '%'} | "
            f"{r['trainable_params'] / 1e3:.0f} k ({share:.1f}%) | {r['file_bytes'] / 1e6:.2f} MB | "
            f"{r['epochs_run']}{'*' if r['truncated'] else ''} | {r['train_seconds']:.0f} s |"
        )
    return "\n".join(rows) + "\n"


def write_results(summary: dict[str, Any], out: Path) -> str:
    """`out` (.json) and its .md table; returns the table."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=1), encoding="utf-8")
    table = markdown_table(summary["records"])
    out.with_suffix(".md").write_text(
        f"DeepPCB validation (groups 44000, 50600, 77000; 200 images), base {summary['base']}, imgsz "
        f"{summary['imgsz']}, device {summary['device']}; * = stopped early by the time budget.\n\n" + table,
        encoding="utf-8",
    )
    return table


def combine_results(parts: list[Path], out: Path) -> None:
    """One table from several runs of this script (e.g. the small sizes and `all` run one after the other)."""
    runs = [json.loads(p.read_text(encoding="utf-8")) for p in parts]
    for key in ("base", "imgsz", "device"):
        if len({str(r[key]) for r in runs}) > 1:
            raise SystemExit(f"cannot combine runs with different {key}: {[r[key] for r in runs]}")
    summary = dict(
        runs[0],
        records=[rec for r in runs for rec in r["records"]],
        failed=[f for r in runs for f in r["failed"]],
        wall_seconds=round(sum(r["wall_seconds"] for r in runs), 1),
        command=[r["command"] for r in runs],
        combined_from=[str(p) for p in parts],
    )
    print(write_results(summary, out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--job", help=argparse.SUPPRESS)
    ap.add_argument("--src", default=None, help="DeepPCB folder (default ../shared/datasets/deeppcb)")
    ap.add_argument(
        "--base",
        default=str(ROOT / "models" / "locator" / "defect_base.pt"),
        help="shared base checkpoint (the shipped multi-line base detector)",
    )
    ap.add_argument(
        "--alt-base",
        default=None,
        help="second base for methods ending in _alt (default: the COCO YOLOv8n in ../shared/weights)",
    )
    ap.add_argument("--work", default=str(ROOT / "var" / "bench_lora"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--sizes", default="50,200,all")
    ap.add_argument("--methods", default="lora4,lora8,lora16,full,head")
    ap.add_argument(
        "--extra",
        default="frozen_backbone@all,full_ref@all,lora8_ref@all",
        help="further method@size jobs, comma-separated ('' for none)",
    )
    ap.add_argument("--epochs", default="", help="size:epochs overrides, e.g. 50:100,200:50,all:30")
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2, help="data-loader workers per job")
    ap.add_argument("--parallel", type=int, default=1, help="jobs at once")
    ap.add_argument("--amp", default="", help="'bf16' on GPUs (no AMP self-check download)")
    ap.add_argument(
        "--lr0",
        type=float,
        default=0.0,
        help="initial learning rate for every job (default: each method's own); job ids get an _lr<value> suffix",
    )
    ap.add_argument(
        "--rank-pattern",
        default="",
        help="LoRA jobs: a named per-module rank allocation of configs/lora_ranks.yaml; job ids get an _<name> suffix",
    )
    ap.add_argument(
        "--head-lr0",
        type=float,
        default=0.0,
        help="LoRA jobs: initial learning rate of the class "
        "convolutions (default: lr0, as the LoRA matrices); job ids get an _hlr<value> suffix",
    )
    ap.add_argument(
        "--init-from",
        default="",
        help="artifacts folder of an earlier run: continue each job from its "
        "method's and size's file there (second stage of a two-stage schedule); job ids get _init",
    )
    ap.add_argument(
        "--warmup-epochs", type=float, default=None, help="warm-up epochs for every job (default: the trainer's)"
    )
    ap.add_argument("--cache", default="", help="'ram' keeps decoded images in memory (small CPU boxes)")
    ap.add_argument("--budget", type=float, default=0, help="seconds from start after which jobs stop training")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "lora.json"))
    ap.add_argument(
        "--combine",
        default="",
        help="comma-separated result JSONs of earlier runs: write one table of "
        "all their records to --out (.json and .md) without training",
    )
    args = ap.parse_args()

    if args.job:
        run_job(json.loads(args.job))
        return
    if args.combine:
        combine_results([Path(p) for p in args.combine.split(",") if p], Path(args.out))
        return

    from defect_agent.paths import project_root

    shared = project_root().parent / "shared"
    src = Path(args.src or shared / "datasets" / "deeppcb")
    base = Path(args.base).resolve()
    alt_base = Path(args.alt_base or shared / "weights" / "yolov8n_from_int8onnx.pt").resolve()
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    started = time.time()
    sizes: list[Any] = [s if s == "all" else int(s) for s in args.sizes.split(",") if s]
    epochs = dict(DEFAULT_EPOCHS)
    for item in filter(None, args.epochs.split(",")):
        k, v = item.split(":")
        epochs[k if k == "all" else int(k)] = int(v)
    jobs_spec = [(m, s) for s in sizes for m in args.methods.split(",") if m]
    for item in filter(None, args.extra.split(",")):
        m, s = item.split("@")
        jobs_spec.append((m, s if s == "all" else int(s)))
    need_ref = any(parse_method(m)[2] for m, _ in jobs_spec)
    for m, _ in jobs_spec:
        parse_method(m)  # fail on a typo before any work
    if args.rank_pattern:
        from defect_agent.config import load_rank_allocation

        load_rank_allocation(args.rank_pattern)
    all_sizes = sorted({s for _, s in jobs_spec}, key=lambda s: 10**9 if s == "all" else s)
    yamls = prepare_data(src, work, all_sizes, need_ref, args.seed)
    _log(f"data ready in {time.time() - started:.0f} s: {yamls}")
    n_all = sum(1 for _ in (work / "deeppcb_plain" / "images" / "train").iterdir())

    jobs = []
    init_dir = Path(args.init_from).resolve() if args.init_from else None
    for m, s in jobs_spec:
        method, rank, ref, alt = parse_method(m)
        lora = m.startswith("lora")
        init = first_stage_file(init_dir, m, s, args.rank_pattern) if init_dir is not None else None
        jobs.append(
            {
                "init": str(init) if init else "",
                "warmup_epochs": args.warmup_epochs,
                "id": f"{m}_n{s}"
                + ("_init" if init else "")
                + (f"_lr{args.lr0:g}" if args.lr0 else "")
                + (f"_hlr{args.head_lr0:g}" if args.head_lr0 and lora else "")
                + (f"_{args.rank_pattern}" if args.rank_pattern and lora else ""),
                "lr0": args.lr0,
                "head_lr0": args.head_lr0 if lora else 0.0,
                "method": method,
                "rank": rank,
                "head_rank": head_rank_of(m),
                "rank_pattern": args.rank_pattern if lora else "",
                "size": s,
                "reference": ref,
                "n_train": n_all if s == "all" else int(s),
                "epochs": epochs.get(s, 30),
                "batch": args.batch,
                "imgsz": args.imgsz,
                "device": args.device,
                "seed": args.seed,
                "workers": args.workers,
                "amp": args.amp,
                "cache": args.cache,
                "base": str(alt_base if alt else base),
                "work": str(work),
                "data": yamls["ref" if ref else "plain"][s],
                "deadline": started + args.budget if args.budget else 0,
            }
        )
    # longest first, so that the short jobs fill in at the end
    jobs.sort(key=lambda j: -j["n_train"] * j["epochs"])
    running: list[tuple[dict, subprocess.Popen, Any]] = []
    failed = []
    (work / "logs").mkdir(exist_ok=True)
    pending = list(jobs)
    while pending or running:
        while pending and len(running) < args.parallel:
            job = pending.pop(0)
            log = open(work / "logs" / f"{job['id']}.log", "w")
            env = dict(os.environ, PYTHONUNBUFFERED="1")
            proc = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--job", json.dumps(job)],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=str(ROOT),
                env=env,
            )
            running.append((job, proc, log))
            _log(f"started {job['id']} ({job['n_train']} images x {job['epochs']} epochs)")
        time.sleep(2)
        for item in list(running):
            job, proc, log = item
            if proc.poll() is not None:
                log.close()
                running.remove(item)
                res = work / "results" / f"{job['id']}.json"
                if proc.returncode != 0 or not res.is_file():
                    failed.append(job["id"])
                    _log(f"FAILED {job['id']} (exit {proc.returncode}); see {work / 'logs' / (job['id'] + '.log')}")
                else:
                    _log(f"done {job['id']}: {json.loads(res.read_text())['map50']:.4f}")

    records = [
        json.loads((work / "results" / f"{j['id']}.json").read_text())
        for j in jobs
        if (work / "results" / f"{j['id']}.json").is_file()
    ]
    import platform

    device_name = args.device
    try:
        import torch

        if args.device != "cpu" and torch.cuda.is_available():
            device_name = torch.cuda.get_device_name(0)
    except Exception:
        pass
    summary = {
        "benchmark": "bench_lora",
        "dataset": "DeepPCB trainval, split by group (see deeppcb_plain/split.json)",
        "base": base.name,
        "device": device_name,
        "host": platform.node(),
        "imgsz": args.imgsz,
        "batch": args.batch,
        "parallel_jobs": args.parallel,
        "amp": args.amp or False,
        "seed": args.seed,
        "wall_seconds": round(time.time() - started, 1),
        "failed": failed,
        "records": records,
        "command": " ".join(sys.argv),
    }
    out = Path(args.out)
    print(write_results(summary, out))
    _log(f"wrote {out} and {out.with_suffix('.md')} ({len(records)} results, {len(failed)} failed)")


if __name__ == "__main__":
    main()
