"""The YOLO locator: loads a local ultralytics checkpoint (optionally with a per-line LoRA adapter) and turns BGR
images into `Detection`s in original pixel coordinates. Nothing here may touch the network."""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from defect_agent.config import LineConfig
from defect_agent.errors import ConfigError, ImageReadError, ModelFileMissing
from defect_agent.files import file_sha256
from defect_agent.paths import resolve
from vision.detection import Box, Detection
from vision.locator.yolo import (
    BASE_COMMAND,
    adapter_command,
    import_yolo,
    load_yolo,
    train_command,
)

if TYPE_CHECKING:  # heavy import, only for type hints
    from ultralytics import YOLO

    from vision.locator.lora import AdapterBank
    from vision.locator.onnx_engine import Engine, OnnxDetector

log = logging.getLogger(__name__)

PREDICT_BATCH = 16  # images per forward pass: bounds memory on long lists


def checkpoint_class_names(model: YOLO) -> list[str]:
    names = model.names
    if isinstance(names, dict):
        return [str(names[i]) for i in sorted(names)]
    return [str(n) for n in names]


def _as_bgr(image: np.ndarray, index: int) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise ImageReadError(f"image {index}: expected a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ImageReadError(f"image {index}: expected uint8 pixels, got {image.dtype}")
    if image.ndim == 2:
        return np.ascontiguousarray(np.repeat(image[:, :, None], 3, axis=2))
    if image.ndim == 3 and image.shape[2] == 3:
        return image
    if image.ndim == 3 and image.shape[2] == 1:
        return np.ascontiguousarray(np.repeat(image, 3, axis=2))
    raise ImageReadError(f"image {index}: expected an HxWx3 BGR or HxW grey array, got shape {image.shape}")


class Locator:
    """A loaded detector. Use `from_line` for a product line or `from_weights` for a checkpoint file."""

    def __init__(
        self,
        model: YOLO,
        version: str,
        class_names: list[str],
        imgsz: int = 640,
        conf: float = 0.25,
        iou: float = 0.5,
        device: str = "cpu",
        weights_path: Path | None = None,
        bank: AdapterBank | None = None,
        bank_line: str | None = None,
        adapter_version: str | None = None,
    ) -> None:
        self.model = model
        self._bank = (
            bank  # shared base (vision.locator.lora.AdapterBank) and this locator's adapter in it (None: the base)
        )
        self._bank_line = bank_line
        self._version = version
        self._adapter_version = adapter_version
        self._class_names = list(class_names)
        self.imgsz = imgsz
        self.conf = conf
        self.iou = iou
        self.device = device
        self.weights_path = weights_path

    @classmethod
    def from_weights(
        cls,
        path: str | Path,
        class_names: Sequence[str] | None = None,
        *,
        imgsz: int = 640,
        conf: float = 0.25,
        iou: float = 0.5,
        device: str = "cpu",
        make_command: str = "defect-agent train locator --line <line>",
    ) -> Locator:
        """Load a checkpoint. `class_names`, when given, must equal the checkpoint's names in class-id order."""
        path = resolve(path)
        model = load_yolo(path, make_command)
        names = checkpoint_class_names(model)
        if class_names is not None and list(class_names) != names:
            raise ConfigError(
                f"class names of {path} are {names}, expected {list(class_names)} (same names in the same id order). "
                f"Train a locator for these classes ({make_command}) or fix the line's class list."
            )
        return cls(model, _version_of(path), names, imgsz=imgsz, conf=conf, iou=iou, device=device, weights_path=path)

    @classmethod
    def from_line(
        cls,
        line: LineConfig,
        device: str = "cpu",
        *,
        engine: Engine = "torch",
        onnx_dir: str | Path | None = None,
        threads: int | None = None,
        fold_adapter: bool = False,
    ) -> Locator:
        """The line's detector: `locator.weights`, or `locator.base` (default: weights) plus `locator.adapter`
        (`fold_adapter`: merged into the base's convolutions, faster per call, for a process serving this line only).

        `engine="onnx"`: the file `defect-agent export --line L --format onnx` wrote (base + adapter merged) in
        `onnx_dir` (default var/onnx/<line>), run by onnxruntime on the CPU with `threads` intra-op threads (default:
        the app config's); `device` is then ignored. Same `predict`, boxes within the tolerance of
        tests/test_onnx_parity.py."""
        from vision.locator.onnx_engine import check_engine

        if check_engine(engine) == "onnx":
            return OnnxLocator.load(line, onnx_dir=onnx_dir, threads=threads)
        cfg = line.detector
        make = train_command(line.name)
        if cfg.adapter is None:
            return cls.from_weights(
                cfg.weights,
                line.class_names,
                imgsz=cfg.imgsz,
                conf=cfg.conf,
                iou=cfg.iou,
                device=device,
                make_command=make,
            )
        base_path = resolve(cfg.base or cfg.weights)
        adapter_path = resolve(cfg.adapter)
        if not base_path.is_file():
            raise ModelFileMissing(base_path, BASE_COMMAND if cfg.base else make, what="locator base weights")
        if not adapter_path.exists():
            raise ModelFileMissing(adapter_path, adapter_command(line.name), what="LoRA adapter")
        import_yolo()  # offline set-up before the adapter code imports ultralytics
        try:
            from vision.locator.lora import load_adapted_yolo, load_merged_yolo
        except ModuleNotFoundError as exc:
            if exc.name not in {"vision.locator.lora", "peft"}:
                raise
            raise ConfigError(
                f"line {line.name!r} sets locator.adapter={cfg.adapter!r} but the LoRA loader is unavailable "
                f"({exc}); install the project with its LoRA support (vision/locator/lora.py, peft) or remove "
                f"locator.adapter from configs/lines/{line.name}.yaml"
            ) from exc
        _check_reference(line, adapter_path)
        model = (load_merged_yolo if fold_adapter else load_adapted_yolo)(base_path, adapter_path)
        names = _checked_names(line, checkpoint_class_names(model), f"{base_path} + {adapter_path}")
        adapter_version = _version_of(adapter_path)
        return cls(
            model,
            f"{_version_of(base_path)}+{adapter_version}",
            names,
            imgsz=cfg.imgsz,
            conf=cfg.conf,
            iou=cfg.iou,
            device=device,
            weights_path=base_path,
            adapter_version=adapter_version,
        )

    @property
    def version(self) -> str:
        """`<file name>@<first 12 hex of sha256>` (base+adapter for adapted lines): recorded in every verdict."""
        return self._version

    @property
    def adapter_version(self) -> str | None:
        """The line's LoRA adapter alone, `<file name>@<first 12 hex of sha256>`; None without one (the verdict's
        `model_versions.adapter`)."""
        return self._adapter_version

    @property
    def class_names(self) -> list[str]:
        return list(self._class_names)

    def predict(self, images: list[np.ndarray], conf: float | None = None) -> list[list[Detection]]:
        """Detections per image (BGR uint8 arrays), boxes in the image's own pixel coordinates."""
        if self._bank is None:
            return self._predict(images, conf)
        with self._bank.lock:  # one base serves several lines: activate ours for the whole call
            self._bank.use(self._bank_line)
            return self._predict(images, conf)

    def _predict(self, images: list[np.ndarray], conf: float | None) -> list[list[Detection]]:
        conf = self.conf if conf is None else conf
        bgr = [_as_bgr(img, i) for i, img in enumerate(images)]
        out: list[list[Detection]] = []
        for start in range(0, len(bgr), PREDICT_BATCH):
            chunk = bgr[start : start + PREDICT_BATCH]
            results = self.model.predict(
                chunk,
                conf=conf,
                iou=self.iou,
                imgsz=self.imgsz,
                device=self.device,
                verbose=False,
                batch=len(chunk),
            )
            out.extend(self._to_detections(r, img.shape) for r, img in zip(results, chunk))
        return out

    def _to_detections(self, result: Any, shape: tuple[int, ...]) -> list[Detection]:
        boxes = result.boxes
        if boxes is None or len(boxes) == 0:
            return []
        xyxy = boxes.xyxy.cpu().numpy().astype(float)
        confs = boxes.conf.cpu().numpy().astype(float)
        cls_ids = boxes.cls.cpu().numpy().astype(int)
        return self._detections(xyxy, confs, cls_ids, shape)

    def _detections(
        self, xyxy: np.ndarray, confs: np.ndarray, cls_ids: np.ndarray, shape: tuple[int, ...]
    ) -> list[Detection]:
        h, w = shape[:2]
        dets = []
        for (x1, y1, x2, y2), c, k in zip(xyxy, confs, cls_ids):
            x1, x2 = float(np.clip(x1, 0, w)), float(np.clip(x2, 0, w))
            y1, y2 = float(np.clip(y1, 0, h)), float(np.clip(y2, 0, h))
            dets.append(
                Detection(
                    defect_class=self._class_names[k],
                    class_id=int(k),
                    box=Box(x1=x1, y1=y1, x2=max(x1, x2), y2=max(y1, y2)),
                    confidence=float(np.clip(c, 0.0, 1.0)),
                )
            )
        dets.sort(key=lambda d: -d.confidence)
        return dets


class OnnxLocator(Locator):
    """A line's detector exported to ONNX (`defect-agent export --line L --format onnx`: base and adapter merged,
    then ultralytics' exporter), run by onnxruntime on the CPU. `predict` takes and returns what the torch
    `Locator`'s does: ultralytics' letterbox and NMS run around the session (vision.locator.onnx_engine). No
    ultralytics model is held (`model` is None): evaluation and training take the torch engine."""

    def __init__(
        self,
        detector: OnnxDetector,
        version: str,
        class_names: list[str],
        imgsz: int = 640,
        conf: float = 0.25,
        iou: float = 0.5,
        weights_path: Path | None = None,
        adapter_version: str | None = None,
    ) -> None:
        super().__init__(
            cast("YOLO", None),  # no ultralytics model behind this engine (see the class docstring)
            version,
            class_names,
            imgsz=imgsz,
            conf=conf,
            iou=iou,
            device="cpu",
            weights_path=weights_path,
            adapter_version=adapter_version,
        )
        self.detector = detector
        self.engine = "onnx"

    @classmethod
    def load(cls, line: LineConfig, onnx_dir: str | Path | None = None, threads: int | None = None) -> OnnxLocator:
        """`<onnx_dir>/locator.onnx` (default var/onnx/<line>), checked against the line's classes and, where the
        torch files are on this PC, against the base / adapter / weights it was exported from."""
        from vision.locator.onnx_engine import LOCATOR_FILE, default_onnx_dir, onnx_version, require_file

        folder = resolve(onnx_dir) if onnx_dir is not None else default_onnx_dir(line.name)
        path = require_file(folder / LOCATOR_FILE, line.name, "ONNX locator")
        return cls.from_detector(line, _onnx_detector(path, threads), onnx_version(path))

    @classmethod
    def from_detector(cls, line: LineConfig, detector: OnnxDetector, file_version: str) -> OnnxLocator:
        from vision.locator.onnx_engine import check_source

        source, adapter_version = line_source_versions(line)
        recorded = detector.meta.get("source")
        check_source(recorded, source, detector.path, line.name)
        names = _checked_names(line, detector.class_names, str(detector.path))
        cfg = line.detector
        return cls(
            detector,
            f"{recorded}|{file_version}",
            names,
            imgsz=cfg.imgsz,
            conf=cfg.conf,
            iou=cfg.iou,
            weights_path=detector.path,
            adapter_version=detector.meta.get("adapter_version") or adapter_version,
        )

    def _predict(self, images: list[np.ndarray], conf: float | None) -> list[list[Detection]]:
        conf = self.conf if conf is None else conf
        bgr = [_as_bgr(img, i) for i, img in enumerate(images)]
        out: list[list[Detection]] = []
        for start in range(0, len(bgr), PREDICT_BATCH):
            chunk = bgr[start : start + PREDICT_BATCH]
            found = self.detector.detect(chunk, conf=conf, iou=self.iou, imgsz=self.imgsz)
            out.extend(self._detections(xyxy, c, k, img.shape) for (xyxy, c, k), img in zip(found, chunk))
        return out


_DETECTORS: dict[tuple[Path, int, int, tuple[str, str]], OnnxDetector] = {}
_DETECTORS_LOCK = threading.Lock()


def _onnx_detector(path: Path, threads: int | None) -> OnnxDetector:
    """One session per file, its modification time, thread count and runtime: a pool's lines, or a server's requests,
    share it (sessions are safe to run from several threads)."""
    from defect_agent.runtime import chosen_onnx_backend
    from vision.locator.onnx_engine import OnnxDetector
    from vision.onnx_session import default_threads

    key = (path.resolve(), path.stat().st_mtime_ns, default_threads(threads), chosen_onnx_backend())
    with _DETECTORS_LOCK:
        if key not in _DETECTORS:
            _DETECTORS[key] = OnnxDetector(path, threads=key[2])
        return _DETECTORS[key]


def line_source_versions(line: LineConfig) -> tuple[str | None, str | None]:
    """(the version `from_line` gives the line's torch locator, its adapter's version) from the files on disk; None
    where a file is absent (an ONNX-only line PC)."""
    cfg = line.detector
    if cfg.adapter is None:
        weights = resolve(cfg.weights)
        return (_version_of(weights) if weights.is_file() else None), None
    base, adapter = resolve(cfg.base or cfg.weights), resolve(cfg.adapter)
    adapter_version = _version_of(adapter) if adapter.exists() else None
    if not base.is_file() or adapter_version is None:
        return None, adapter_version
    return f"{_version_of(base)}+{adapter_version}", adapter_version


def _version_of(path: Path) -> str:
    if path.is_dir():  # a peft adapter folder: hash its files in name order
        digest = hashlib.sha256()
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(f.relative_to(path).as_posix().encode())
            digest.update(file_sha256(f).encode())
        return f"{path.name}@{digest.hexdigest()[:12]}"
    return f"{path.name}@{file_sha256(path)[:12]}"


def _check_reference(line: LineConfig, adapter_path: Path) -> None:
    from vision.locator.lora import read_adapter_meta

    trained_on = read_adapter_meta(adapter_path).reference
    if trained_on != line.detector.reference:
        raise ConfigError(
            f"{adapter_path} was trained on reference={trained_on!r} inputs but configs/lines/{line.name}.yaml "
            f"sets locator.reference={line.detector.reference!r}: set it to {trained_on!r} or retrain the adapter "
            f"({adapter_command(line.name)})"
        )


def _checked_names(line: LineConfig, names: list[str], source: str) -> list[str]:
    if names != line.class_names:
        raise ConfigError(
            f"class names of {source} are {names}, but line {line.name!r} lists {line.class_names}; retrain "
            f"({adapter_command(line.name) if line.detector.adapter else train_command(line.name)}) or fix the "
            "line config"
        )
    return names


class LocatorPool:
    """Lines whose locators share a base file share one model in memory (vision.locator.lora.AdapterBank): the first
    locator of a base loads it, each line's adapter is added once, and a line's locator switches the bank to its
    adapter (the plain base for a line without one) when it predicts. Detections equal those of a fresh load."""

    def __init__(self) -> None:
        self._banks: dict[Path, AdapterBank] = {}
        self._lock = threading.Lock()

    def locator(
        self,
        line: LineConfig,
        device: str = "cpu",
        *,
        engine: Engine = "torch",
        onnx_dir: str | Path | None = None,
        threads: int | None = None,
    ) -> Locator:
        """The line's locator; `engine`, `onnx_dir` and `threads` as in `Locator.from_line` (ONNX files hold the
        adapter merged: nothing is shared but the session of a file several callers load)."""
        from vision.locator.onnx_engine import check_engine

        if check_engine(engine) == "onnx":
            return OnnxLocator.load(line, onnx_dir=onnx_dir, threads=threads)
        cfg = line.detector
        base_path = resolve(cfg.base or cfg.weights) if cfg.adapter else resolve(cfg.weights)
        if not base_path.is_file():
            raise ModelFileMissing(
                base_path,
                BASE_COMMAND if cfg.adapter and cfg.base else train_command(line.name),
                what="locator base weights",
            )
        adapter_path = resolve(cfg.adapter) if cfg.adapter else None
        if adapter_path is not None and not adapter_path.exists():
            raise ModelFileMissing(adapter_path, adapter_command(line.name), what="LoRA adapter")
        import_yolo()
        from vision.locator.lora import AdapterBank

        with self._lock:
            bank = self._banks.get(base_path)
            if bank is None:
                bank = self._banks[base_path] = AdapterBank(base_path)
            if adapter_path is not None:
                _check_reference(line, adapter_path)
                if line.name not in bank.lines:
                    with bank.lock:
                        bank.add(line.name, adapter_path)
        adapter = line.name if adapter_path is not None else None
        names = _checked_names(
            line, bank.class_names(adapter), f"{base_path}" + (f" + {adapter_path}" if adapter_path else "")
        )
        adapter_version = _version_of(adapter_path) if adapter_path else None
        version = _version_of(base_path) + (f"+{adapter_version}" if adapter_version else "")
        return Locator(
            bank.yolo,
            version,
            names,
            imgsz=cfg.imgsz,
            conf=cfg.conf,
            iou=cfg.iou,
            device=device,
            weights_path=base_path,
            bank=bank,
            bank_line=adapter,
            adapter_version=adapter_version,
        )


_POOL: LocatorPool | None = None


def shared_pool() -> LocatorPool:
    """The process-wide pool the Inspector uses."""
    global _POOL
    if _POOL is None:
        _POOL = LocatorPool()
    return _POOL
