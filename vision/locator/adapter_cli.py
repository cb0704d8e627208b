"""CLI for per-line LoRA adapters and DeepPCB: `defect-agent train adapter`, `defect-agent export --line L --merge`
(or `--format onnx`: the line's engines for onnxruntime), `defect-agent data deeppcb`."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal, cast

import typer

from defect_agent.errors import ConfigError

log = logging.getLogger(__name__)


def register(app: typer.Typer, train: typer.Typer, eval: typer.Typer, data: typer.Typer) -> None:  # noqa: A002
    @train.command("adapter")
    def train_adapter_cmd(
        line: str = typer.Option(..., help="product line whose adapter to train (its classes must match --data)"),
        data_yaml: Path = typer.Option(..., "--data", help="ultralytics dataset YAML (e.g. from `data deeppcb`)"),
        base: Path | None = typer.Option(None, help="shared base checkpoint (default: the line's locator.base)"),
        rank: int = typer.Option(8, help="LoRA rank"),
        head_rank: int | None = typer.Option(
            None, help="LoRA rank of the Detect head's convolutions (default: --rank)"
        ),
        rank_pattern: str | None = typer.Option(
            None,
            "--rank-pattern",
            help="a named per-module rank allocation of configs/lora_ranks.yaml (e.g. p3 with --rank 2)",
        ),
        alpha: float | None = typer.Option(None, help="LoRA alpha (default 2 x rank)"),
        lora_bias: bool = typer.Option(
            False,
            "--lora-bias",
            help="also train a per-line output bias on every "
            "adapted convolution (BatchNorm is folded and frozen in the base)",
        ),
        dora: bool = typer.Option(
            False,
            "--dora",
            help="DoRA: also train a per-line magnitude for every output "
            "channel of every adapted convolution (not with --lora-bias)",
        ),
        epochs: int = typer.Option(60),
        imgsz: int | None = typer.Option(None, help="default: the line's locator.imgsz"),
        batch: int = typer.Option(16),
        lr0: float | None = typer.Option(
            None,
            help="AdamW learning rate (default: LORA_LR0 of "
            "vision/locator/adapter_train.py; LoRA wants ~10x full fine-tuning's)",
        ),
        head_lr0: float | None = typer.Option(
            None, "--head-lr0", help="learning rate of the line's class convolutions, trained in full (default: --lr0)"
        ),
        device: str = typer.Option("cpu", help="cpu, or a CUDA index such as 0"),
        workers: int | None = typer.Option(None, help="data-loader workers"),
        time_hours: float | None = typer.Option(
            None,
            help="wall-clock budget in hours: ultralytics fits the "
            "learning-rate schedule to it and stops (overrides --epochs)",
        ),
        cache: bool = typer.Option(False, help="keep decoded training images in RAM (faster epochs on CPU)"),
        warmup_epochs: float | None = typer.Option(
            None, help="learning-rate warm-up epochs (default: 3, or 0 on tiny sets); short CPU budgets want less"
        ),
        seed: int = typer.Option(0),
        init: Path | None = typer.Option(
            None, help="continue training this adapter file (warm start; its rank and alpha are kept)"
        ),
        keep: str = typer.Option(
            "best",
            help="checkpoint written as the adapter: best (ultralytics' fitness, "
            "mostly mAP50-95) or last (the end of the schedule)",
        ),
        out: Path | None = typer.Option(None, help="adapter file (default: the line's locator.adapter)"),
    ) -> None:
        """Train a LoRA adapter of a line over the shared base (only LoRA + class head are trained)."""
        from defect_agent.config import load_line, load_rank_allocation
        from defect_agent.paths import resolve
        from vision.datasets.yolo import require_line_classes
        from vision.locator.adapter_train import train_adapter

        cfg = load_line(line)
        ranks = load_rank_allocation(rank_pattern) if rank_pattern else None
        require_line_classes(data_yaml, line, cfg.class_names)
        base_path = resolve(base) if base else (resolve(cfg.detector.base) if cfg.detector.base else None)
        if base_path is None:
            raise ConfigError(f"line {line!r} has no locator.base; pass --base")
        target = resolve(out) if out else (resolve(cfg.detector.adapter) if cfg.detector.adapter else None)
        if target is None:
            raise ConfigError(f"line {line!r} has no locator.adapter; pass --out")
        extra: dict = {} if lr0 is None else {"lr0": lr0}
        if workers is not None:
            extra["workers"] = workers
        if time_hours is not None:
            extra["time"] = time_hours
        if cache:
            extra["cache"] = "ram"
        if warmup_epochs is not None:
            extra["warmup_epochs"] = warmup_epochs
        result = train_adapter(
            data_yaml,
            base_path,
            target,
            rank=rank,
            alpha=alpha,
            lora_bias=lora_bias,
            dora=dora,
            head_rank=head_rank,
            rank_pattern=ranks,
            epochs=epochs,
            imgsz=imgsz or cfg.detector.imgsz,
            batch=batch,
            device=device,
            seed=seed,
            line=line,
            reference=cfg.detector.reference,
            init_adapter=init,
            head_lr0=head_lr0,
            keep=cast(Literal["best", "last"], keep),  # train_adapter rejects other values
            **extra,
        )
        summary = Path(result.run_dir) / "adapter_result.json"
        summary.write_text(result.model_dump_json(indent=2), encoding="utf-8")
        fm = result.final_metrics
        typer.echo(
            f"wrote {result.adapter} ({result.adapter_bytes / 1e3:.0f} kB = "
            f"{100 * result.adapter_bytes / result.base_bytes:.1f}% of the base) after {result.epochs_run} "
            f"epochs in {result.train_seconds:.0f} s; trainable {result.trainable}; val mAP50 "
            f"{fm.get('metrics/mAP50(B)', float('nan')):.4f}; summary {summary}"
        )

    @data.command("deeppcb")
    def data_deeppcb_cmd(
        src: Path = typer.Argument(..., help="DeepPCB folder holding PCBData (e.g. ../shared/datasets/deeppcb)"),
        out: Path = typer.Argument(..., help="output dataset folder"),
        reference: bool = typer.Option(False, "--reference", help="write (test, template, |difference|) composites"),
    ) -> None:
        """Convert DeepPCB to a YOLO dataset, split by group folder (val: groups 44000, 50600, 77000)."""
        from vision.datasets.deeppcb import convert_deeppcb

        summary = convert_deeppcb(src, out, reference=reference)
        typer.echo(
            f"wrote {summary.data_yaml}: {summary.images} images, boxes {summary.boxes}; split {summary.split_json}"
        )

    @data.command("neu-det")
    def data_neu_det_cmd(
        src: Path = typer.Argument(
            ..., help="NEU-DET folder holding IMAGES/ and ANNOTATIONS/ (../shared/datasets/neu-det)"
        ),
        out: Path = typer.Argument(..., help="output dataset folder"),
        val_fraction: float = typer.Option(0.2, min=0.0, max=0.9, help="share of each class held out for validation"),
        seed: int = typer.Option(0, help="split seed"),
    ) -> None:
        """Convert NEU-DET to a YOLO dataset with a seeded split stratified by class (boxes rescaled to the JPEGs)."""
        from vision.datasets.neu_det import convert_neu_det

        summary = convert_neu_det(src, out, val_fraction=val_fraction, seed=seed)
        typer.echo(
            f"wrote {summary.data_yaml}: {summary.images} images, boxes {summary.boxes}; split {summary.split_json}"
        )

    @data.command("merge")
    def data_merge_cmd(
        out: Path = typer.Argument(..., help="output dataset folder"),
        part: list[str] = typer.Option(..., "--part", help="PREFIX=data.yaml, repeated; classes become PREFIX/class"),
    ) -> None:
        """Merge YOLO datasets into one (e.g. the training mix of a shared base detector); images are symlinked."""
        from vision.datasets.yolo import merge_yolo_datasets

        parts: dict[str, Path] = {}
        for spec in part:
            prefix, sep, path = spec.partition("=")
            if not sep or not prefix or not path:
                raise ConfigError(f"--part {spec!r}: expected PREFIX=path/to/data.yaml")
            if prefix in parts:
                raise ConfigError(f"--part prefix {prefix!r} given twice")
            parts[prefix] = Path(path)
        typer.echo(f"wrote {merge_yolo_datasets(parts, out)}")
