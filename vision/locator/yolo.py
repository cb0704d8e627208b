"""ultralytics behind the offline switches: the one place that imports YOLO (fonts, settings sync, autoinstall and
threads set first), loads a local checkpoint, and names the commands that make each locator file."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from defect_agent.config import load_app_config
from defect_agent.errors import ConfigError, ModelFileMissing

if TYPE_CHECKING:  # heavy import, only for type hints
    from ultralytics import YOLO

log = logging.getLogger(__name__)


def train_command(line_name: str) -> str:
    return f"defect-agent train locator --line {line_name}"


# the shared base of line adapters is trained on a mix of lines, not by one line's `train locator`
BASE_COMMAND = "defect-agent train base --data <merged data.yaml> (see models/locator/defect_base.md)"


def adapter_command(line_name: str) -> str:
    return f"defect-agent train adapter --line {line_name}"


def configure_threads() -> int:
    """Set torch threads and stop ultralytics from dropping them to 1 again in its `select_device`."""
    from defect_agent.runtime import set_threads

    n = set_threads(load_app_config().threads)
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


def load_yolo(path: Path, make_command: str) -> YOLO:
    """Load a local checkpoint; a missing file names the command that makes it, never a download."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileMissing(path, make_command, what="locator weights")
    YOLO = import_yolo()
    try:
        return YOLO(str(path), task="detect")
    except Exception as exc:  # corrupt file, not a detection checkpoint, torch version clash
        raise ConfigError(f"cannot load locator weights {path}: {exc}. Re-create them with: {make_command}") from exc
