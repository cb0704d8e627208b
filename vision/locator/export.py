"""ONNX export of a line's locator (`defect-agent export --line L --format onnx`): the line's base and LoRA adapter
are merged in memory (FP32, no fp16 round trip), then ultralytics' own exporter writes the graph with dynamic batch,
height and width (so the runtime letterboxes exactly as the torch predictor does). Nothing is downloaded: the
exporter needs only the `onnx` package (pinned in pyproject.toml), since `simplify=False` skips onnxslim and its
onnxruntime check, and ultralytics' auto-install is off (vision.locator.yolo)."""

from __future__ import annotations

import copy
import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, cast

from defect_agent.config import LineConfig
from defect_agent.errors import ConfigError
from defect_agent.paths import resolve
from vision.locator.model import _checked_names, line_source_versions
from vision.locator.onnx_engine import (
    LOCATOR_FILE,
    replace_atomically,
    stamp_metadata,
    writable_target,
)
from vision.locator.yolo import BASE_COMMAND, adapter_command, load_detection_model, train_command

if TYPE_CHECKING:  # heavy import, only for type hints
    from ultralytics.nn.tasks import DetectionModel

log = logging.getLogger(__name__)


def line_detection_model(line: LineConfig) -> tuple[DetectionModel, str, str | None]:
    """The line's detector as one plain FP32 model (adapter merged), its source version (what the torch locator
    reports) and its adapter's version."""
    from defect_agent.errors import ModelFileMissing

    cfg = line.detector
    source, adapter_version = line_source_versions(line)
    if cfg.adapter is None:
        model = load_detection_model(resolve(cfg.weights), train_command(line.name), what="locator weights")
    else:
        base, adapter = resolve(cfg.base or cfg.weights), resolve(cfg.adapter)
        if not base.is_file():
            raise ModelFileMissing(base, BASE_COMMAND if cfg.base else train_command(line.name), what="locator base")
        if not adapter.exists():
            raise ModelFileMissing(adapter, adapter_command(line.name), what="LoRA adapter")
        from vision.locator.lora import merged_detection_model

        model, _ = merged_detection_model(base, adapter)
    if source is None:  # both files were just read, so this cannot be absent
        raise ConfigError(f"line {line.name!r}: locator files vanished during export")
    names = model.names
    _checked_names(line, [str(names[i]) for i in sorted(names)], source)
    return model, source, adapter_version


def export_detection_model(model: DetectionModel, target: Path, imgsz: int, opset: int | None = None) -> Path:
    """ultralytics' ONNX export of `model` (a copy: the exporter fuses and switches the head to export mode in place)
    to `target`, written beside it first and renamed over it."""
    from ultralytics.engine.exporter import Exporter

    from vision.locator.yolo import import_yolo

    import_yolo()  # offline switches before the exporter's requirement checks
    target = writable_target(target)
    tmp = target.with_name(f".{target.stem}.tmp{target.suffix}")
    model = copy.deepcopy(model)
    # the exporter names its output after the model's checkpoint path: point it beside the target, never at models/
    model.pt_path = str(tmp.with_suffix(".pt"))
    overrides = {
        "format": "onnx",
        "imgsz": imgsz,
        "dynamic": True,
        "simplify": False,
        "batch": 1,
        "device": "cpu",
        "quantize": None,  # FP32: the parity tolerance of tests/test_onnx_parity.py is for FP32
    }
    if opset is not None:
        overrides["opset"] = opset
    with warnings.catch_warnings():
        # ultralytics calls torch's TorchScript-based exporter, deprecated since torch 2.9 in favour of the dynamo one,
        # which needs onnxscript (not pinned); the TorchScript one is what the parity test checks
        warnings.simplefilter("ignore", DeprecationWarning)
        written = Path(cast(str, Exporter(overrides=overrides)(model=model)))
    if written.resolve() != tmp.resolve():
        raise ConfigError(f"ultralytics wrote {written}, expected {tmp}")
    return tmp


def export_locator(line: LineConfig, out_dir: Path) -> Path:
    """Write `<out_dir>/locator.onnx` for the line; returns its path."""
    import torch

    target = writable_target(Path(out_dir) / LOCATOR_FILE)  # refused before seconds of loading
    model, source, adapter_version = line_detection_model(line)
    tmp = export_detection_model(model, target, line.detector.imgsz)
    stamp_metadata(
        tmp,
        {
            "kind": "locator",
            "line": line.name,
            "source": source,
            "adapter_version": adapter_version or "",
            "imgsz": str(line.detector.imgsz),
            "torch": torch.__version__,
        },
    )
    path = replace_atomically(tmp, target)
    log.info("wrote %s (%.1f MB) from %s", path, path.stat().st_size / 1e6, source)
    return path
