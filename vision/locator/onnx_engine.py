"""The ONNX engine of the locator on a line PC: onnxruntime sessions (CPU, threads set explicitly), the metadata an
exported file carries (`defect_agent.*` keys beside ultralytics' own) and `OnnxDetector`, which runs an exported
detector with ultralytics' letterbox, non-maximum suppression and box scaling redone in numpy, so its boxes are the
torch predictor's without importing torch. Export lives in `vision.locator.export`; this module imports neither the
exporter nor `onnx`.

Sessions and their metadata are opened by `vision.onnx_session`, as for every engine."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from defect_agent.errors import ConfigError, ModelFileMissing
from vision.onnx_session import META_PREFIX, open_session, our_metadata, session_metadata

if TYPE_CHECKING:  # heavy import, only for type hints
    pass

log = logging.getLogger(__name__)

Engine = Literal["torch", "onnx"]
ENGINES: tuple[str, ...] = ("torch", "onnx")
LOCATOR_FILE = "locator.onnx"
VERIFIER_FILE = "verifier.onnx"


def export_command(line_name: str) -> str:
    return f"defect-agent export --line {line_name} --format onnx"


def check_engine(engine: str) -> Engine:
    if engine not in ENGINES:
        raise ConfigError(f"engine {engine!r} is not one of {', '.join(ENGINES)}")
    return engine  # type: ignore[return-value]  # checked against ENGINES just above


def default_onnx_dir(line_name: str) -> Path:
    """`var/onnx/<line>` (under DEFECT_AGENT_DATA): never models/, whose files are pinned in its manifest."""
    from defect_agent.paths import data_dir

    return data_dir() / "onnx" / line_name


def onnx_version(path: Path) -> str:
    """`onnx@<first 12 hex of sha256>` of an exported file (appended to the source model's version), with
    `+openvino-<precision>` where OpenVINO runs it: a verdict names what computed it, and a resumed batch does not
    mix bfloat16 results into a float32 run."""
    from defect_agent.files import file_sha256
    from defect_agent.runtime import chosen_onnx_backend

    runtime, precision = chosen_onnx_backend()
    suffix = "" if runtime == "onnxruntime" else f"+{runtime}-{precision}"
    return f"onnx@{file_sha256(path)[:12]}{suffix}"


def require_file(path: Path, line_name: str, what: str) -> Path:
    if not path.is_file():
        raise ModelFileMissing(path, export_command(line_name), what=what)
    return path


def check_source(recorded: str | None, current: str | None, path: Path, line_name: str) -> None:
    """An exported file must come from the model the line configures now: a retrained adapter or verifier makes the
    export stale. `current` None (the torch files are not on this PC): the export is trusted as it is."""
    if current is None:
        log.info("%s: source model files absent, using the export of %s", path, recorded)
        return
    if recorded != current:
        raise ConfigError(
            f"{path} was exported from {recorded}, but the line's model is now {current}: re-export it "
            f"({export_command(line_name)})"
        )


class OnnxDetector:
    """An ultralytics detector exported to ONNX (`vision.locator.export`), run by onnxruntime.

    Pre- and post-processing follow ultralytics' predictor (`rect=True`) in numpy (`vision.locator.yolo_numpy`, so
    that a line PC's process never imports torch): a list of same-sized images is letterboxed to the smallest stride
    multiple, mixed sizes to the square `imgsz`; BGR -> RGB, /255; NMS per class with `max_det` 300; boxes scaled back
    and clipped to the original image. The file is exported with dynamic batch, height and width for that reason."""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        import ast

        self.path = Path(path)
        self.session = open_session(self.path, threads)
        meta = session_metadata(self.session)
        try:
            self.stride = int(meta["stride"])
            names = ast.literal_eval(meta["names"])  # ultralytics writes str(dict): a literal, never code
        except (KeyError, ValueError, SyntaxError) as exc:
            raise ConfigError(f"{path} lacks ultralytics' export metadata (stride, names): {exc}") from exc
        self.class_names = [str(names[i]) for i in sorted(names)]
        self.meta = our_metadata(self.session)
        self.input_name = self.session.get_inputs()[0].name

    def detect(
        self, images: list[np.ndarray], conf: float, iou: float, imgsz: int, max_det: int = 300
    ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per BGR uint8 image: (xyxy float (n, 4) in its own pixels, confidence (n,), class id (n,))."""
        from vision.locator.yolo_numpy import non_max_suppression, scale_boxes, to_input

        x = to_input(images, imgsz, self.stride)
        (raw,) = self.session.run(None, {self.input_name: x})
        out = []
        for pred, im in zip(non_max_suppression(raw, conf, iou, max_det=max_det), images):
            boxes = scale_boxes(x.shape[2:], pred[:, :4], im.shape[:2])
            out.append((boxes, pred[:, 4].astype(float), pred[:, 5].astype(int)))
        return out


def writable_target(path: Path) -> Path:
    """Exports go under var/ or a given folder, never into models/: its files are pinned in models/MANIFEST.json
    and shipped; an export is derived from them and rebuilt at will."""
    from defect_agent.paths import models_dir

    path = Path(path).resolve()
    if path.is_relative_to(models_dir().resolve()):
        raise ConfigError(f"refusing to write {path} into models/ (shipped, pinned files): pass --out elsewhere")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def stamp_metadata(path: Path, values: dict[str, Any]) -> None:
    """Add `defect_agent.<key>` entries (JSON for non-strings) to an ONNX file's metadata_props, in place. Needs the
    `onnx` package (export only; the runtime reads them through onnxruntime)."""
    import onnx

    model = onnx.load(str(path))
    for key, value in values.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = META_PREFIX + key, value if isinstance(value, str) else json.dumps(value)
    onnx.save(model, str(path))


def replace_atomically(tmp: Path, target: Path) -> Path:
    """A reader never sees half a file: the export is written beside the target and renamed over it."""
    os.replace(tmp, target)
    return target
