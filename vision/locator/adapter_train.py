"""Train a line's LoRA adapter over the shared base through ultralytics' own detection trainer.

`LoraDetectionTrainer` is ultralytics' DetectionTrainer with three changes:
- `get_model` returns the prepared base (BatchNorm folded, all frozen) with the LoRA adapter and the line's own
  class convolutions injected, instead of a freshly built model;
- `build_optimizer` runs after the trainer's set-up has marked every floating-point weight trainable: it freezes the
  model again down to the adapter and asserts that only LoRA and class-head parameters remain trainable;
- nothing else: the EMA copy, checkpoints and the final validation of best.pt use the adapted model as it is
  (ultralytics pickles the whole module; it does not fuse it again because BatchNorm is already folded).
After training, the adapter (LoRA matrices + class convolutions, fp16 safetensors) is cut out of best.pt."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Literal, cast

from pydantic import BaseModel

from defect_agent.errors import ConfigError, EmptyInput
from defect_agent.paths import data_dir
from vision.datasets.yolo import data_yaml_names
from vision.locator.lora import (
    AdapterMeta,
    LoraSettings,
    activate,
    adapter_state_dict,
    add_lora,
    assert_adapter_only,
    file_sha256,
    load_adapter,
    load_detection_model,
    make_meta,
    mark_trainable,
    prepare_base,
    save_adapter,
)
from vision.locator.yolo import BASE_COMMAND, check_checkpoint, import_yolo, restricted_unpickling

import_yolo()  # offline environment before ultralytics' trainer modules load

from ultralytics.models.yolo.detect import DetectionTrainer  # noqa: E402
from ultralytics.utils.torch_utils import unwrap_model  # noqa: E402

log = logging.getLogger(__name__)

ADAPTER_NAME = "line"  # name of the adapter inside the training model; files carry no name
# LoRA starts exactly at the base (B = 0) and moves few weights: it wants a far larger step than full fine-tuning
# (ultralytics' auto AdamW 0.001 here). Measured by benchmarks/bench_lora.py on DeepPCB, 200 images, r = 4, mAP50
# at lr0 0.002 / 0.006 / 0.012: 0.731 / 0.801 / 0.819 over the battery_tab detector, - / 0.868 / 0.861 over COCO
# YOLOv8n (benchmarks/results/lora_cpu320.md); over the shipped defect_base.pt 0.012 diverged (class loss 46 in
# epoch 9, NaN after: benchmarks/results/lora_cpu320_bnfrozen_lr012.json), and 0.024 did over battery_tab.
LORA_LR0 = 0.006


def split_head_group(optimizer: Any, model: Any, adapter_name: str, head_lr0: float) -> int:
    """Move the line's class convolutions (trained in full, `modules_to_save`) into their own parameter groups at
    `head_lr0`, keeping each group's other settings (decay, bias warm-up); returns how many tensors moved.
    Why an option: the LoRA matrices want a far larger step than full fine-tuning, and the class convs are full
    weights. Measured on DeepPCB (200 images) it did not pay: class convs at 0.001 under LoRA at 0.012 cost 2.4
    points mAP50, and at 0.006 the LoRA at 0.012 still diverged, so the default keeps one rate for both."""
    head_ids = {id(p) for k, p in model.named_parameters() if f".modules_to_save.{adapter_name}." in k}
    moved = 0
    for group in list(optimizer.param_groups):
        head = [p for p in group["params"] if id(p) in head_ids]
        if not head:
            continue
        group["params"] = [p for p in group["params"] if id(p) not in head_ids]
        settings = {k: v for k, v in group.items() if k not in ("params", "initial_lr")}
        optimizer.add_param_group({**settings, "params": head, "lr": head_lr0})
        moved += len(head)
    optimizer.param_groups[:] = [g for g in optimizer.param_groups if g["params"]]
    return moved


class AdapterTrainResult(BaseModel):
    """What a LoRA adapter training run produced: the adapter file, its base, settings, losses and final metrics."""

    adapter: Path
    base: Path
    base_sha256: str
    data_yaml: Path
    run_dir: Path
    rank: int
    alpha: float
    epochs: int
    epochs_run: int
    imgsz: int
    batch: int
    device: str
    seed: int
    train_images: int
    train_seconds: float
    trainable: dict[str, int]  # lora / head / other (0) / trainable / base parameter counts
    adapter_bytes: int
    base_bytes: int
    epoch_losses: list[dict[str, float]]
    final_metrics: dict[str, float]  # ultralytics' validation of the kept checkpoint (adapter-aware)
    args: dict[str, Any]


class LoraDetectionTrainer(DetectionTrainer):
    """DetectionTrainer whose model is the frozen base plus one trainable LoRA adapter."""

    def __init__(
        self,
        lora: LoraSettings,
        overrides: dict[str, Any],
        _callbacks: dict | None = None,
        init_adapter: Path | None = None,
        head_lr0: float | None = None,
    ) -> None:
        self.lora = lora
        self.head_lr0 = head_lr0  # None: the class convs train at lr0 like the LoRA matrices
        self.init_adapter = init_adapter  # warm start: continue training this adapter instead of a fresh one
        self.adapter_meta: AdapterMeta | None = None
        self.trainable: dict[str, int] = {}
        super().__init__(overrides=overrides, _callbacks=_callbacks)

    def setup_model(self):
        # the trainer unpickles args.model (the base) here: with the restricted unpickler, like every other load
        with restricted_unpickling():
            return super().setup_model()

    def get_model(self, cfg=None, weights=None, verbose: bool = True):
        # setup_model() has already loaded args.model into `weights`; without it (a YAML), there is no base to adapt
        model = weights if weights is not None else load_detection_model(self.args.model)
        model = prepare_base(model)
        names = self.data["names"]
        names = [str(names[i]) for i in sorted(names)] if isinstance(names, dict) else [str(n) for n in names]
        if self.init_adapter is None:
            self.adapter_meta = add_lora(model, ADAPTER_NAME, names, self.lora, trainable=True)
        else:
            self.adapter_meta = load_adapter(model, self.init_adapter, ADAPTER_NAME, file_sha256(self.args.model))
            if self.adapter_meta.names != names:
                raise ConfigError(
                    f"{self.init_adapter} holds classes {self.adapter_meta.names}, the data "
                    f"{names}: warm start needs the same classes"
                )
            activate(model, ADAPTER_NAME, names, trainable=True)
        self.trainable = mark_trainable(model, ADAPTER_NAME)
        log.info("LoRA r=%d over %s: %s", self.lora.rank, self.args.model, self.trainable)
        return model

    def build_optimizer(self, model, *args: Any, **kwargs: Any):
        # _setup_train() has just set requires_grad=True on every floating-point weight: freeze back to the adapter
        self.trainable = mark_trainable(unwrap_model(model), ADAPTER_NAME)
        assert_adapter_only(unwrap_model(model), ADAPTER_NAME)
        optimizer = super().build_optimizer(model, *args, **kwargs)
        if self.head_lr0 is not None:
            moved = split_head_group(optimizer, unwrap_model(model), ADAPTER_NAME, self.head_lr0)
            log.info("class convolutions (%d tensors) at lr0 %g, LoRA at %g", moved, self.head_lr0, self.args.lr0)
        return optimizer


def train_adapter(
    data_yaml: Path | str,
    base: Path | str,
    out: Path | str,
    rank: int = 8,
    alpha: float | None = None,
    lora_bias: bool = False,
    dora: bool = False,
    head_rank: int | None = None,
    rank_pattern: dict[str, int] | None = None,
    epochs: int = 60,
    imgsz: int = 640,
    batch: int = 16,
    device: str = "cpu",
    seed: int = 0,
    line: str | None = None,
    reference: str = "none",
    run_dir: Path | None = None,
    init_adapter: Path | str | None = None,
    head_lr0: float | None = None,
    keep: Literal["best", "last"] = "best",
    **overrides: Any,
) -> AdapterTrainResult:
    """Train a LoRA adapter of `rank` over `base` on `data_yaml` and write it to `out` (.safetensors).
    `lora_bias`: also train a per-line output bias on every adapted convolution (see LoraSettings.bias).
    `head_rank`: a separate LoRA rank for the Detect head's convolutions (LoraSettings.head_rank).
    `rank_pattern`: per-module ranks, module-name regex -> rank (LoraSettings.rank_pattern).
    `dora`: DoRA, a per-line magnitude for every output channel of every adapted convolution (LoraSettings.dora).
    `init_adapter`: continue training that adapter (its rank, head rank, alpha, bias and DoRA) instead of starting
    from B = 0.
    `head_lr0`: a separate initial learning rate for the line's class convolutions (default: lr0, as the LoRA).
    `keep`: which checkpoint becomes the adapter: "best" (ultralytics' fitness, which weighs mAP50-95 nine to one
    against mAP50) or "last" (the end of the schedule; a short warm-started schedule can peak in mAP50-95 early while
    mAP50 still rises)."""
    from vision.datasets.yolo import count_split_images
    from vision.locator.train import train_overrides

    if keep not in ("best", "last"):
        raise ConfigError(f"keep must be 'best' or 'last', not {keep!r}")
    data_yaml = Path(data_yaml).resolve()
    base = Path(base).resolve()
    out = Path(out)
    if not base.is_file():
        from defect_agent.errors import ModelFileMissing

        raise ModelFileMissing(base, BASE_COMMAND, what="locator base weights")
    check_checkpoint(base, BASE_COMMAND, what="locator base weights")  # manifest digest and pickle globals, early
    n_train = count_split_images(data_yaml, "train")
    count_split_images(data_yaml, "val")
    if n_train == 0:
        raise EmptyInput(f"{data_yaml}: the train split has no images")
    data_yaml_names(data_yaml)  # a dataset YAML without class names fails here, before any training
    init_meta = None
    if init_adapter is not None:
        from vision.locator.lora import read_adapter_meta

        init_adapter = Path(init_adapter).resolve()
        init_meta = read_adapter_meta(init_adapter)
        rank, alpha, lora_bias, dora = init_meta.rank, init_meta.alpha, init_meta.bias, init_meta.dora
        head_rank, rank_pattern = init_meta.head_rank, init_meta.rank_pattern
    try:
        settings = LoraSettings(
            rank=rank, alpha=alpha, bias=lora_bias, dora=dora, head_rank=head_rank, rank_pattern=rank_pattern or {}
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    run_root = Path(run_dir) if run_dir else data_dir() / "runs" / "adapter"
    args = train_overrides(n_train, epochs, imgsz, batch, device, None, seed, run_root, out.stem)
    args.update(optimizer="AdamW", lr0=LORA_LR0, warmup_bias_lr=0.0)
    if reference != "none":
        # composite channels carry test / template / difference: a hue or saturation jitter would mix them
        args.update(hsv_h=0.0, hsv_s=0.0)
    args.update(overrides)
    args.update(model=str(base), data=str(data_yaml), task="detect", mode="train")

    trainer = LoraDetectionTrainer(settings, overrides=args, init_adapter=init_adapter, head_lr0=head_lr0)
    losses: list[dict[str, float]] = []

    def _record_loss(tr: Any) -> None:
        if tr.tloss is not None:
            items = tr.label_loss_items(tr.tloss, prefix="train")
            losses.append({k.split("/")[-1]: float(v) for k, v in items.items()})

    trainer.add_callback("on_train_epoch_end", _record_loss)
    log.info("adapter training over %s on %s (%d images): %s", base, data_yaml, n_train, args)
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started

    chosen = Path(trainer.best) if keep == "best" and Path(trainer.best).is_file() else Path(trainer.last)
    if not chosen.is_file():
        raise RuntimeError(f"training finished without a checkpoint in {trainer.save_dir}")
    # the pickled adapted model (EMA weights of that epoch), written by this trainer a moment ago
    adapted = load_detection_model(chosen, own_checkpoint=True)
    assert trainer.adapter_meta is not None
    # ultralytics declares the trainer's metrics None; training leaves a dict there
    metrics = {
        k: float(v) for k, v in cast("dict[str, Any]", trainer.metrics or {}).items() if isinstance(v, (int, float))
    }
    if keep == "last":  # ultralytics' closing validation scored best.pt; the last epoch's row is the kept file's
        metrics = {k: float(v[-1]) for k, v in trainer.read_results_csv().items() if k.startswith("metrics/") and v}
    meta = make_meta(
        trainer.adapter_meta,
        base,
        line=line,
        imgsz=imgsz,
        reference=reference,
        provenance={
            "data": str(data_yaml),
            "train_images": n_train,
            "epochs": epochs,
            "batch": batch,
            "seed": seed,
            "lr0": args.get("lr0"),
            "head_lr0": head_lr0,
            "optimizer": args.get("optimizer"),
            "final_metrics": metrics,
            "checkpoint": keep,
            "trained": time.strftime("%Y-%m-%d"),
            **(
                {
                    "continued_from": {
                        # a Path whenever init_meta was read from it
                        "file": cast(Path, init_adapter).name,
                        "sha256": file_sha256(cast(Path, init_adapter)),
                        "provenance": init_meta.provenance,
                    }
                }
                if init_meta is not None
                else {}
            ),
        },
    )
    # the checkpoint keeps the adapter under the training name; the file stores it name-free
    adapter_state_dict(adapted, ADAPTER_NAME)
    save_adapter(adapted, ADAPTER_NAME, out, meta)
    return AdapterTrainResult(
        adapter=out.resolve(),
        base=base,
        base_sha256=file_sha256(base),
        data_yaml=data_yaml,
        run_dir=Path(trainer.save_dir),
        rank=rank,
        alpha=settings.lora_alpha,
        epochs=epochs,
        epochs_run=len(losses),
        imgsz=imgsz,
        batch=batch,
        device=device,
        seed=seed,
        train_images=n_train,
        train_seconds=round(seconds, 2),
        trainable=trainer.trainable,
        adapter_bytes=out.stat().st_size,
        base_bytes=base.stat().st_size,
        epoch_losses=losses,
        final_metrics=metrics,
        args={k: (str(v) if isinstance(v, Path) else v) for k, v in args.items()},
    )
