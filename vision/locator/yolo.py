"""ultralytics behind the offline switches: the one place that imports YOLO (fonts, settings sync, autoinstall and
threads set first), loads a local checkpoint without running code from it, and names the commands that make each
locator file.

An ultralytics checkpoint is a pickle of whole modules, and ultralytics unpickles it with `weights_only=False` by
default: a crafted file runs whatever it likes when loaded. Every checkpoint this project loads goes through
`check_checkpoint` (sha256 against models/MANIFEST.json for shipped files; the pickle's globals against the model
classes a checkpoint needs, read statically) and is then unpickled by torch's `weights_only` unpickler with
ultralytics' allow-list (`restricted_unpickling`)."""

from __future__ import annotations

import importlib
import logging
import os
import threading
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from defect_agent.errors import ConfigError, DefectAgentError, ModelFileMissing, UnsafeModelFile
from defect_agent.files import verify_model_file

if TYPE_CHECKING:  # heavy import, only for type hints
    from ultralytics import YOLO
    from ultralytics.nn.tasks import DetectionModel

log = logging.getLogger(__name__)


def train_command(line_name: str) -> str:
    return f"defect-agent train locator --line {line_name}"


# the shared base of line adapters is trained on a mix of lines, not by one line's `train locator`
BASE_COMMAND = "defect-agent train base --data <merged data.yaml> (see models/locator/defect_base.md)"


def adapter_command(line_name: str) -> str:
    return f"defect-agent train adapter --line {line_name}"


def configure_threads() -> int:
    """Set torch threads and stop ultralytics from dropping them to 1 again in its `select_device`."""
    from defect_agent.runtime import ensure_threads

    n = ensure_threads()
    try:
        import ultralytics.utils.torch_utils as tu

        # select_device() calls torch.set_num_threads(NUM_THREADS) (cores - 1 = 1 here) on every predictor / trainer
        # set-up; the module attribute is what it reads.
        tu.NUM_THREADS = n
    except ImportError:
        pass
    return n


def import_yolo() -> type[YOLO]:
    """Import ultralytics' YOLO class with the offline environment in place (font, settings sync, autoinstall)."""
    from defect_agent.runtime import configure_offline, silence_ultralytics

    configure_offline()
    from ultralytics import YOLO

    silence_ultralytics()
    _place_fonts()
    configure_threads()
    return YOLO


def _place_fonts() -> None:
    """ultralytics looks for Arial.ttf in USER_CONFIG_DIR = $YOLO_CONFIG_DIR/Ultralytics (one level below where
    configure_offline() puts it) and otherwise sends a HEAD request and a download on every train / val."""
    import shutil

    from ultralytics.utils import USER_CONFIG_DIR

    from defect_agent.runtime import yolo_config_dir

    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        target = Path(USER_CONFIG_DIR) / name
        if target.exists():
            continue
        source = next(
            (p for p in (yolo_config_dir() / name, Path(os.environ.get("YOLO_CONFIG_DIR", "")) / name) if p.is_file()),
            None,
        )
        if source is None:
            try:
                import matplotlib

                source = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
            except ImportError:
                return
        if source.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)


# Globals a YOLO checkpoint may reference besides module classes: the data types ultralytics pickles and the legacy
# names its restricted loader maps to current classes (ultralytics.nn.tasks._SafeLoad._build). `builtins.getattr` is
# bound there to a getattr limited to module classes' attributes (`Detect.forward`), never the builtin.
_DATA_GLOBALS = frozenset(
    {
        "builtins.getattr",
        "numpy.dtype",
        "numpy.core.multiarray.scalar",
        "numpy._core.multiarray.scalar",
        "ultralytics.utils.IterableSimpleNamespace",
        "ultralytics.yolo.utils.IterableSimpleNamespace",
        "ultralytics.nn.modules.block.Silence",
        "ultralytics.nn.tasks.YOLOv10DetectionModel",
        "ultralytics.utils.loss.v10DetectLoss",
        *(f"{m}.{c}" for m in ("pathlib", "pathlib._local") for c in ("PosixPath", "WindowsPath")),
    }
)
# a loss / assigner object rides along in some checkpoints (model.criterion); plain classes, no code on unpickling
_CLASS_MODULES = frozenset({"ultralytics.utils.loss", "ultralytics.utils.tal"})


def _allowed_global(name: str) -> bool:
    """A module class of torch.nn / ultralytics.nn (or a loss class), or one of the known data globals. Only
    modules of those two packages are imported to tell: a checkpoint cannot make this import anything else."""
    if name in _DATA_GLOBALS:
        return True
    module, _, attr = name.rpartition(".")
    if not (module.startswith(("torch.nn.modules.", "ultralytics.nn.")) or module in _CLASS_MODULES):
        return False
    try:
        obj = getattr(importlib.import_module(module), attr, None)
    except (ImportError, ValueError):  # no such module (a crafted name)
        return False
    if not isinstance(obj, type):
        return False
    if module in _CLASS_MODULES:
        return obj.__module__ == module
    from torch import nn

    return issubclass(obj, nn.Module)


def check_checkpoint(path: Path, make_command: str, what: str = "locator weights") -> str:
    """Refuse a checkpoint before anything unpickles it; returns its sha256.

    1. A file under models/ must match its sha256 in models/MANIFEST.json (`ModelDigestMismatch`, which says how to
       accept a retrained file).
    2. It must be a torch.save zip archive: a raw or legacy pickle is refused (`ConfigError`); ultralytics has written
       zip archives since torch 1.6.
    3. Every global its pickle references (read statically, nothing runs) must be a torch.nn / ultralytics.nn module
       class or a known data type (`UnsafeModelFile`, naming what it references). The `weights_only` unpickler
       enforces the same at load time (`restricted_unpickling`); this names the culprit early."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise ModelFileMissing(path, make_command, what=what)
    digest = verify_model_file(path)
    if not zipfile.is_zipfile(path):
        raise ConfigError(
            f"cannot load {what} {path}: not a torch.save archive (raw or legacy pickles are not loaded: they can run "
            f"code). Re-create them with: {make_command}"
        )
    try:
        referenced = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception as exc:  # a TorchScript archive, a damaged zip, an opcode the scanner does not know
        raise ConfigError(f"cannot load {what} {path}: {exc}. Re-create them with: {make_command}") from exc
    refused = sorted(n for n in referenced if not _allowed_global(n))
    if refused:
        raise UnsafeModelFile(path, refused, make_command)
    return digest


_restricted_lock = threading.Lock()
_restricted_depth = 0


@contextmanager
def restricted_unpickling() -> Iterator[None]:
    """ultralytics loads checkpoints inside the block with torch's `weights_only` unpickler and its allow-list of
    model classes (its own `ULTRALYTICS_SAFE_LOAD` switch, read at call time from `ultralytics.nn.tasks.SAFE_LOAD`).

    Scoped rather than process-wide: ultralytics' trainers re-load their own checkpoints (best.pt of a LoRA run holds
    peft objects outside the allow-list). Nested and concurrent blocks are counted; while one is open, loads in other
    threads are restricted too, which is only stricter. Fails closed where this ultralytics or torch lacks the
    switch (ultralytics would silently fall back to a full unpickle on torch < 2.6)."""
    global _restricted_depth
    import torch
    import ultralytics.nn.tasks as tasks
    import ultralytics.utils as ul_utils

    if not hasattr(tasks, "SAFE_LOAD") or not hasattr(torch.serialization, "get_unsafe_globals_in_checkpoint"):
        raise ConfigError(
            "this ultralytics / torch cannot load checkpoints without running code from them (needs ultralytics "
            "8.4 with ULTRALYTICS_SAFE_LOAD and torch >= 2.6): install the versions pinned in pyproject.toml"
        )
    with _restricted_lock:
        _restricted_depth += 1
        tasks.SAFE_LOAD = True
    try:
        yield
    finally:
        with _restricted_lock:
            _restricted_depth -= 1
            if _restricted_depth == 0:
                tasks.SAFE_LOAD = ul_utils.SAFE_LOAD  # the process's own setting (env ULTRALYTICS_SAFE_LOAD)


def _refused_or_config_error(exc: Exception, path: Path, make_command: str, what: str) -> DefectAgentError:
    if isinstance(exc, DefectAgentError):
        return exc
    blocked = UnsafeModelFile.blocked_by_weights_only(exc)
    if blocked is not None:
        return UnsafeModelFile(path, [blocked], make_command)
    # corrupt file, not a detection checkpoint, torch version clash
    return ConfigError(f"cannot load {what} {path}: {exc}. Re-create them with: {make_command}")


def load_yolo(path: Path, make_command: str, what: str = "locator weights") -> YOLO:
    """Load a local checkpoint without running code from it (`check_checkpoint`, then `restricted_unpickling`); a
    missing file names the command that makes it, never a download."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileMissing(path, make_command, what=what)
    YOLO = import_yolo()
    check_checkpoint(path, make_command, what)
    try:
        with restricted_unpickling():
            return YOLO(str(path), task="detect")
    except Exception as exc:
        raise _refused_or_config_error(exc, path, make_command, what) from exc


def load_detection_model(path: Path, make_command: str, what: str = "locator base weights") -> DetectionModel:
    """A checkpoint's model as FP32 in eval mode (ultralytics' `load_checkpoint`), loaded like `load_yolo`."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileMissing(path, make_command, what=what)
    import_yolo()
    check_checkpoint(path, make_command, what)
    from ultralytics.nn.tasks import load_checkpoint

    try:
        with restricted_unpickling():
            model, _ = load_checkpoint(str(path))
    except Exception as exc:
        raise _refused_or_config_error(exc, path, make_command, what) from exc
    return model
