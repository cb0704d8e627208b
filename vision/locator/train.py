"""Train an ultralytics YOLO locator from a local model YAML or a local checkpoint, with settings that work on tiny
datasets and offline machines, and leave one small stripped `.pt` at the requested path."""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from defect_agent.errors import ConfigError, EmptyInput
from defect_agent.files import record_model
from defect_agent.paths import data_dir
from vision.datasets.yolo import check_data_yaml, count_split_images

log = logging.getLogger(__name__)

FEW_IMAGES = 100  # below this many training images warm-up would eat a large share of all optimiser steps
YOLOV8_BACKBONE_LAYERS = 10  # YOLOv8 layers 0..9 are the backbone (incl. SPPF); `freeze=10` trains neck + head


class TrainResult(BaseModel):
    """What a training run produced; written beside the weights as `<name>.train.json` by the CLI."""

    weights: Path
    base: str
    data_yaml: Path
    run_dir: Path
    epochs: int
    epochs_run: int
    imgsz: int
    batch: int
    device: str
    freeze: int | None
    seed: int
    train_images: int
    train_seconds: float
    epoch_losses: list[dict[str, float]]  # mean train loss per epoch (box, cls, dfl)
    final_metrics: dict[str, float]  # ultralytics' validation of the best checkpoint (precision, recall, mAP)
    args: dict[str, Any]  # every trainer override actually used

    @property
    def final_loss(self) -> dict[str, float]:
        return self.epoch_losses[-1] if self.epoch_losses else {}


def bundled_model_yaml(name: str) -> Path | None:
    """The model YAML shipped inside the ultralytics package for a name such as `yolov8n.yaml`, else None."""
    from defect_agent.runtime import configure_offline

    configure_offline()
    import ultralytics

    cfg_root = Path(ultralytics.__file__).parent / "cfg" / "models"
    # `yolov8n.yaml` is the scale-`n` variant of `yolov8.yaml`; ultralytics unifies names the same way
    unified = re.sub(r"(\d+)([nslmx])(.+)?$", r"\1\3", Path(name).stem) + Path(name).suffix
    for candidate in (Path(name).name, unified):
        hits = sorted(cfg_root.rglob(candidate))
        if hits:
            return hits[0]
    return None


def resolve_base(base: str | Path) -> str:
    """A local checkpoint / YAML path, or the name of a YAML bundled with ultralytics. Anything else would make
    ultralytics try a download, which this project never does."""
    path = Path(base).expanduser()
    if path.is_file():
        return str(path.resolve())
    if path.suffix in {".yaml", ".yml"} and len(path.parts) == 1 and bundled_model_yaml(path.name) is not None:
        return path.name  # ultralytics reads the scale letter from the name, so pass the name itself
    raise ConfigError(
        f"base model {str(base)!r} is neither a local file nor a model YAML bundled with ultralytics; downloads "
        "are disabled. Use a local checkpoint (e.g. ../shared/weights/yolov8n_from_int8onnx.pt) or a bundled "
        "architecture such as yolov8n.yaml to train from scratch."
    )


def default_workers(device: str) -> int:
    cores = os.cpu_count() or 1
    # on a small CPU box the loader workers compete with the training threads; on a GPU box they feed the GPU
    return min(2, cores) if device == "cpu" else min(8, max(1, cores - 2))


def train_overrides(
    n_train: int,
    epochs: int,
    imgsz: int,
    batch: int,
    device: str,
    freeze: int | None,
    seed: int,
    project: Path,
    name: str,
) -> dict[str, Any]:
    """Trainer settings for small product-line datasets; every entry can be overridden by the caller."""
    args: dict[str, Any] = dict(
        epochs=epochs,
        imgsz=imgsz,
        batch=batch,
        device=device,
        seed=seed,
        deterministic=True,
        nbs=batch,  # the default nominal batch 64 accumulates gradients, leaving few real steps on small sets
        warmup_epochs=0.0 if (n_train < FEW_IMAGES or epochs <= 3) else 3.0,
        amp=False,  # CPU has no AMP; on GPU amp=True runs a check that downloads yolo26n.pt
        plots=False,
        workers=default_workers(device),
        project=str(project),
        name=name,
        exist_ok=True,
        verbose=False,
        val=True,
        cache=False,
        patience=max(epochs, 100),
    )
    if freeze is not None:
        args["freeze"] = int(freeze)
    return args


def batchnorm_eval(model: Any) -> int:
    """Put every BatchNorm of `model` in eval mode (running statistics no longer update); returns how many."""
    import torch.nn as nn

    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in layers:
        m.eval()
    return len(layers)


def train_locator(
    data_yaml: Path,
    base: str | Path,
    out: Path,
    epochs: int,
    imgsz: int,
    batch: int,
    device: str = "cpu",
    freeze: int | None = None,
    seed: int = 0,
    run_dir: Path | None = None,
    freeze_bn_stats: bool = False,
    **overrides: Any,
) -> TrainResult:
    """Train and copy the best (optimizer-stripped) checkpoint to `out` (a `.pt` path, or a folder that gets
    `best.pt`). ultralytics' run folder goes to `run_dir` (default `var/runs/locator/<out stem>`).

    `freeze_bn_stats` keeps every BatchNorm's running mean / variance at the base's values (BatchNorm in eval mode
    while its affine weights still train): a shared base then carries no domain statistics into the adapters."""
    from vision.locator.yolo import import_yolo, load_yolo

    data_yaml = Path(data_yaml).resolve()
    check_data_yaml(data_yaml)
    n_train = count_split_images(data_yaml, "train")
    count_split_images(data_yaml, "val")
    if n_train == 0:
        raise EmptyInput(f"{data_yaml}: the train split has no images")
    base_spec = resolve_base(base)
    out = Path(out)
    weights_out = out if out.suffix == ".pt" else out / "best.pt"
    run_root = Path(run_dir) if run_dir else (data_dir() / "runs" / "locator")
    name = weights_out.stem if out.suffix == ".pt" else out.name
    args = train_overrides(n_train, epochs, imgsz, batch, device, freeze, seed, run_root, name)
    args.update(overrides)

    YOLO = import_yolo()
    if base_spec.endswith(".pt"):  # a checkpoint: loaded without running code from it, like every locator file
        model = load_yolo(Path(base_spec), "a local ultralytics checkpoint you trust", what="base checkpoint")
    else:
        model = YOLO(base_spec, task="detect")
    losses: list[dict[str, float]] = []

    def _record_loss(trainer: Any) -> None:
        tloss = trainer.tloss
        if isinstance(tloss, dict):
            losses.append({k: float(v) for k, v in tloss.items()})
        elif tloss is not None:
            items = trainer.label_loss_items(tloss, prefix="train")
            losses.append({k.split("/")[-1]: float(v) for k, v in items.items()})
        log.info("epoch %d/%d loss %s", trainer.epoch + 1, trainer.epochs, losses[-1] if losses else None)

    model.add_callback("on_train_epoch_end", _record_loss)
    if freeze_bn_stats:
        # per batch: the trainer puts the whole model back in train mode at every epoch start, after the callbacks
        model.add_callback("on_train_batch_start", lambda trainer: batchnorm_eval(trainer.model))
    log.info("training %s on %s (%d train images): %s", base_spec, data_yaml, n_train, args)
    started = time.perf_counter()
    model.train(data=str(data_yaml), **args)
    seconds = time.perf_counter() - started

    # a BaseTrainer once train() ran; ultralytics declares the attribute (and several of the trainer's) as None
    trainer: Any = model.trainer
    best = Path(trainer.best) if Path(trainer.best).is_file() else Path(trainer.last)
    if not best.is_file():
        raise RuntimeError(f"training finished without a checkpoint in {trainer.save_dir}")
    weights_out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(best, weights_out)
    record_model(weights_out)  # training into models/ accepts the new file in models/MANIFEST.json
    metrics = {k: float(v) for k, v in (trainer.metrics or {}).items() if isinstance(v, (int, float))}
    return TrainResult(
        weights=weights_out.resolve(),
        base=str(base),
        data_yaml=data_yaml,
        run_dir=Path(trainer.save_dir),
        epochs=epochs,
        epochs_run=len(losses),
        imgsz=imgsz,
        batch=batch,
        device=device,
        freeze=freeze,
        seed=seed,
        train_images=n_train,
        train_seconds=round(seconds, 2),
        epoch_losses=losses,
        final_metrics=metrics,
        args={**args, "freeze_bn_stats": freeze_bn_stats},
    )
