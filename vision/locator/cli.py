"""CLI for the YOLO locator: `defect-agent train locator` and `defect-agent eval locator`."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import typer

from defect_agent.errors import ConfigError

log = logging.getLogger(__name__)

PRETRAINED_NAME = (
    "yolov8n_from_int8onnx.pt"  # COCO YOLOv8n rebuilt from ultralytics' ONNX (AGPL-3.0), in ../shared/weights
)
GENERATED_LINES = {"battery_tab"}  # lines whose images the project can generate with exact ground truth
TRAIN_DATA_SEED = 1
EVAL_DATA_SEED = 1234  # far from the training seed: a fresh test set


def default_base() -> str:
    """The COCO-pretrained YOLOv8n beside the checkout when present (fine-tuning beats scratch on small sets),
    else the bundled YOLOv8n architecture from scratch."""
    from defect_agent.paths import project_root

    candidate = project_root().parent / "shared" / "weights" / PRETRAINED_NAME
    return str(candidate) if candidate.is_file() else "yolov8n.yaml"


def generate_dataset(line: str, out_dir: Path, n_train: int, n_val: int, seed: int) -> Path:
    if line not in GENERATED_LINES:
        raise ConfigError(f"no generator for line {line!r}: pass --data DATA_YAML (an ultralytics dataset YAML)")
    try:
        from vision.datasets.synth.dataset import write_yolo_dataset
    except ModuleNotFoundError as exc:
        if exc.name != "vision.datasets.yolo":
            raise
        raise ConfigError("the battery_tab generator (vision/datasets/yolo.py) is not installed; pass --data") from exc
    return Path(write_yolo_dataset(out_dir, n_train=n_train, n_val=n_val, seed=seed))


def render_metrics(m) -> str:
    """Plain-text report of LocatorMetrics."""

    def f(v: float | None, pct: bool = False) -> str:
        if v is None:
            return "-"
        return f"{100 * v:.1f}%" if pct else f"{v:.3f}"

    rows = [
        f"locator {m.locator_version} on {m.data_yaml} [{m.split}]: {m.n_images} images, {m.n_instances} boxes, "
        f"imgsz {m.imgsz}, operating conf {m.conf_operating}",
        f"mAP50 {m.map50:.4f}   mAP50-95 {m.map50_95:.4f}"
        + (
            f"   (square, unpadded input: {m.map50_square:.4f} / {m.map50_95_square:.4f})"
            if m.map50_square is not None
            else ""
        ),
        "",
        f"{'class':<10}{'role':<8}{'boxes':>6}{'AP50':>8}{'AP50-95':>9}{'P@op':>8}{'R@op':>8}{'IoU':>7}{'ctr px':>8}",
    ]
    for c in m.per_class:
        rows.append(
            f"{c.name:<10}{c.role:<8}{c.instances:>6}{f(c.ap50):>8}{f(c.ap50_95):>9}{f(c.precision):>8}"
            f"{f(c.recall):>8}{f(c.mean_iou):>7}{f(c.mean_center_error_px):>8}"
        )
    rows += [
        "",
        f"image-level miss rate {f(m.miss_rate, True)} ({m.missed_images}/{m.images_with_defects} images with a "
        f"defect had no predicted defect at conf >= {m.conf_operating})",
        f"image-level false-alarm rate {f(m.false_alarm_rate, True)} "
        f"({m.false_alarm_images}/{m.images_without_defects} defect-free images)",
        f"({m.seconds:.1f} s)",
    ]
    return "\n".join(rows)


def _report_training(result) -> None:
    """Write the run summary beside ultralytics' run folder and echo the one-line outcome."""
    summary = Path(result.run_dir) / "train_result.json"
    summary.write_text(result.model_dump_json(indent=2), encoding="utf-8")
    fm = result.final_metrics
    typer.echo(
        f"wrote {result.weights} ({result.weights.stat().st_size / 1e6:.1f} MB) after {result.epochs_run} "
        f"epochs in {result.train_seconds:.0f} s; val mAP50 {fm.get('metrics/mAP50(B)', float('nan')):.4f} "
        f"mAP50-95 {fm.get('metrics/mAP50-95(B)', float('nan')):.4f}; run summary {summary}"
    )


def register(app: typer.Typer, train: typer.Typer, eval: typer.Typer, data: typer.Typer) -> None:  # noqa: A002
    @train.command("locator")
    def train_locator_cmd(
        line: str | None = typer.Option(None, help="product line (default: configs/default.yaml default_line)"),
        data_yaml: Path | None = typer.Option(
            None,
            "--data",
            help="ultralytics dataset YAML; omitted for battery_tab: generate one into var/datasets/battery_tab",
        ),
        base: str | None = typer.Option(
            None,
            help="local checkpoint or bundled model YAML (e.g. yolov8n.yaml); "
            f"default ../shared/weights/{PRETRAINED_NAME} when present",
        ),
        epochs: int = typer.Option(60),
        imgsz: int | None = typer.Option(None, help="default: the line's locator.imgsz"),
        batch: int = typer.Option(16),
        device: str = typer.Option("cpu", help="cpu, or a CUDA index such as 0"),
        freeze: int | None = typer.Option(None, help="freeze layers 0..N-1 (10 = YOLOv8 backbone: head-only)"),
        seed: int = typer.Option(0, help="training seed"),
        n_train: int = typer.Option(600, help="generated training images (no --data)"),
        n_val: int = typer.Option(100, help="generated validation images (no --data)"),
        data_seed: int = typer.Option(TRAIN_DATA_SEED, help="generator seed (no --data)"),
        out: Path | None = typer.Option(None, help="weights file (default: the line's locator.weights)"),
    ) -> None:
        """Train the line's YOLO locator and write one stripped .pt (about 6 MB for YOLOv8n)."""
        from defect_agent.config import load_app_config, load_line
        from defect_agent.paths import data_dir, resolve
        from vision.datasets.yolo import require_line_classes
        from vision.locator.train import train_locator

        cfg = load_line(line or load_app_config().default_line)
        if data_yaml is None:
            ds_dir = data_dir() / "datasets" / cfg.name
            typer.echo(f"generating {n_train}+{n_val} {cfg.name} images (seed {data_seed}) into {ds_dir}", err=True)
            data_yaml = generate_dataset(cfg.name, ds_dir, n_train, n_val, data_seed)
        require_line_classes(data_yaml, cfg.name, cfg.class_names)
        weights = resolve(out) if out else resolve(cfg.detector.weights)
        result = train_locator(
            data_yaml,
            base or default_base(),
            weights,
            epochs=epochs,
            imgsz=imgsz or cfg.detector.imgsz,
            batch=batch,
            device=device,
            freeze=freeze,
            seed=seed,
        )
        _report_training(result)

    @train.command("base")
    def train_base_cmd(
        data_yaml: Path = typer.Option(
            ..., "--data", help="the multi-line training mix (from `defect-agent data merge`)"
        ),
        out: Path = typer.Option(Path("models/locator/defect_base.pt"), help="the base checkpoint to write"),
        base: str | None = typer.Option(None, help=f"start point; default ../shared/weights/{PRETRAINED_NAME}"),
        epochs: int = typer.Option(8, help="few: the base must keep general features for the adapters"),
        imgsz: int = typer.Option(320),
        batch: int = typer.Option(16),
        device: str = typer.Option("cpu", help="cpu, or a CUDA index such as 0"),
        seed: int = typer.Option(0, help="training seed"),
        cache: bool = typer.Option(False, "--cache", help="cache decoded images in RAM"),
        freeze_bn_stats: bool = typer.Option(
            True,
            "--freeze-bn-stats/--train-bn-stats",
            help="keep BatchNorm's "
            "running statistics at the start point's (COCO's: identity): a pcb "
            "adapter over such a base trails full fine-tuning by 0.3 points at 50 "
            "images, not 9.6 (README)",
        ),
    ) -> None:
        """Train the shared base detector that line adapters sit on, on a mix of lines (no line's class check)."""
        from defect_agent.paths import resolve
        from vision.locator.train import train_locator

        extra: dict[str, Any] = {"cache": "ram"} if cache else {}
        result = train_locator(
            data_yaml,
            base or default_base(),
            resolve(out),
            epochs=epochs,
            imgsz=imgsz,
            batch=batch,
            device=device,
            seed=seed,
            freeze_bn_stats=freeze_bn_stats,
            **extra,
        )
        _report_training(result)

    @eval.command("locator")
    def eval_locator_cmd(
        line: str | None = typer.Option(None, help="product line (default: configs/default.yaml default_line)"),
        data_yaml: Path | None = typer.Option(None, "--data", help="ultralytics dataset YAML"),
        generate: int | None = typer.Option(
            None, help="generate a fresh test set of N images (battery_tab; default 200 when --data is omitted)"
        ),
        seed: int = typer.Option(EVAL_DATA_SEED, help="generator seed of the test set (training used 1)"),
        split: str = typer.Option("val"),
        weights: Path | None = typer.Option(None, help="checkpoint to measure (default: the line's locator)"),
        conf: float | None = typer.Option(None, help="operating confidence (default: the line's locator.conf)"),
        imgsz: int | None = typer.Option(None),
        device: str = typer.Option("cpu"),
        json_out: Path | None = typer.Option(None, "--json", help="write the metrics as JSON here"),
        square: bool = typer.Option(
            False,
            "--square",
            help="also validate on square, unpadded input (how the agent "
            "feeds the model) besides ultralytics' padded rectangular batches",
        ),
    ) -> None:
        """mAP50, mAP50-95, per-class AP / precision / recall, box accuracy and the image-level miss rate."""
        from defect_agent.config import load_app_config, load_line
        from defect_agent.paths import data_dir
        from vision.locator.eval import evaluate_locator
        from vision.locator.model import Locator

        cfg = load_line(line or load_app_config().default_line)
        if data_yaml is None:
            n = generate or 200
            ds_dir = data_dir() / "datasets" / f"{cfg.name}-test-s{seed}-n{n}"
            typer.echo(f"generating a {n}-image {cfg.name} test set (seed {seed}) into {ds_dir}", err=True)
            # the generator's validation split is the test set; the training split is left empty
            data_yaml = generate_dataset(cfg.name, ds_dir, 0, n, seed)
            split = "val"
        elif generate is not None:
            raise ConfigError("give either --data or --generate, not both")
        locator = (
            Locator.from_weights(
                weights,
                cfg.class_names,
                imgsz=imgsz or cfg.detector.imgsz,
                conf=cfg.detector.conf,
                iou=cfg.detector.iou,
                device=device,
            )
            if weights
            else Locator.from_line(cfg, device=device)
        )
        metrics = evaluate_locator(
            locator,
            data_yaml,
            split=split,
            conf_operating=conf,
            imgsz=imgsz,
            line=cfg,
            device=device,
            json_out=json_out,
            square=square,
        )
        typer.echo(render_metrics(metrics))
        if json_out:
            typer.echo(f"metrics JSON: {json_out}", err=True)
