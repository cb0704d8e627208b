"""Offline runtime: environment switches that keep ultralytics, Hugging Face and open_clip off the network,
and explicit thread counts (ultralytics otherwise drops torch to one thread on small machines)."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

_OFFLINE_ENV = {
    "YOLO_OFFLINE": "1",
    "YOLO_AUTOINSTALL": "false",
    "YOLO_VERBOSE": "false",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
}

_configured = False


def yolo_config_dir() -> Path:
    from defect_agent.paths import data_dir

    return data_dir() / "ultralytics"


def configure_offline() -> None:
    """Set before ultralytics / transformers are imported. Idempotent."""
    global _configured
    if _configured:
        return
    for key, value in _OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    cfg_dir = yolo_config_dir()
    cfg_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("YOLO_CONFIG_DIR", str(cfg_dir))
    _install_local_font(cfg_dir)
    _configured = True


def _install_local_font(cfg_dir: Path) -> None:
    """ultralytics downloads Arial.ttf on every train/val; a local TrueType font under that name stops it."""
    target = cfg_dir / "Arial.ttf"
    if target.exists():
        return
    try:
        import matplotlib

        font = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
        if font.exists():
            shutil.copyfile(font, target)
            shutil.copyfile(font, cfg_dir / "Arial.Unicode.ttf")
    except Exception as exc:  # matplotlib missing is not fatal: plots are off anyway
        log.debug("no local font installed for ultralytics: %s", exc)


def silence_ultralytics() -> None:
    """After import: disable settings sync / analytics in the private config dir."""
    try:
        from ultralytics.utils import SETTINGS

        SETTINGS.update({"sync": False})
    except Exception as exc:
        log.debug("could not update ultralytics settings: %s", exc)


def set_threads(n: int | None = None) -> int:
    """Set torch / OpenMP / faiss threads explicitly; returns the count used."""
    n = n or int(os.environ.get("DEFECT_AGENT_THREADS", 0)) or (os.cpu_count() or 1)
    os.environ["OMP_NUM_THREADS"] = str(n)
    try:
        import torch

        torch.set_num_threads(n)
    except Exception:
        pass
    try:
        import faiss

        faiss.omp_set_num_threads(n)
    except Exception:
        pass
    return n
