"""Offline runtime: environment switches that keep ultralytics, Hugging Face and open_clip off the network,
and explicit thread counts (ultralytics otherwise drops torch to one thread on small machines)."""

from __future__ import annotations

import functools
import logging
import os
import shutil
import sys
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


# The process's intra-op thread count once chosen (set_threads): modules that build a model later re-apply it
# instead of re-reading the config, so a caller's choice (a batch's tuner, a benchmark) is not undone.
_chosen_threads: int | None = None
# 'auto' picks one thread when other processes keep at least this share of a core busy (1-min load average per
# core): measured on this 2-core VM, with a second process busy the detector at 2 threads ran 6-18x slower than at 1,
# while idle 2 threads were 1.5x faster (benchmarks/bench_batch.py, docs/results.md)
BUSY_LOAD_PER_CORE = 0.5


def resolve_threads(setting: int | str | None = None, engine: str = "torch") -> int:
    """The intra-op thread count a setting means: an int is itself; else DEFECT_AGENT_THREADS when set (an operator's
    override); else 'auto': on the torch engine every core on an idle machine, 1 when others keep the cores busy
    (`BUSY_LOAD_PER_CORE`: torch's OpenMP threads spin on cores others hold), on the onnx engine every core (its
    sessions do not spin: beside a busy process every core measured 1.5x faster than one, docs/results.md; on
    OpenVINO 1 thread beat every core in two runs of four: no rule to apply);
    None: every core."""
    if isinstance(setting, int) and not isinstance(setting, bool) and setting > 0:
        return setting
    if setting not in (None, "auto"):
        raise ValueError(f"threads must be a positive integer, 'auto' or null, got {setting!r}")
    env = os.environ.get("DEFECT_AGENT_THREADS", "")
    if env:
        return max(int(env), 1)
    cores = os.cpu_count() or 1
    if setting == "auto" and engine != "onnx":
        return 1 if machine_busy() else cores
    return cores


def threads_pinned() -> bool:
    """DEFECT_AGENT_THREADS is set: no tuning, that count."""
    return bool(os.environ.get("DEFECT_AGENT_THREADS", ""))


def machine_busy() -> bool:
    """Whether other processes keep the cores busy now (1-min load average per core over BUSY_LOAD_PER_CORE).
    Meant before this process starts its own work: the load average counts this process too."""
    try:
        load = os.getloadavg()[0]
    except OSError:  # not on this platform
        return False
    return load / (os.cpu_count() or 1) >= BUSY_LOAD_PER_CORE


_blas_single = False


def set_threads(n: int | str | None = None, engine: str = "torch") -> int:
    """Set torch / OpenMP / faiss intra-op threads (a setting as in `resolve_threads`), the count onnxruntime
    sessions built from now on take; returns the count used."""
    global _chosen_threads
    n = resolve_threads(n, engine)
    _chosen_threads = n
    # a library imported later reads the count from the environment; one already loaded is told directly. Never
    # imported here: the onnx engine's process has no torch, and importing it costs a second
    os.environ["OMP_NUM_THREADS"] = str(n)
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != n:
        torch.set_num_threads(n)
    faiss = sys.modules.get("faiss")
    if faiss is not None:
        faiss.omp_set_num_threads(n)
    _single_thread_blas()
    return n


def _single_thread_blas() -> None:
    """numpy's BLAS at one thread: its products here are small (measurement fits, fusion, knowledge-base
    prototypes), and its idle threads spin on the cores the models' thread pools need next (onnx engine, battery_tab:
    the sessions took 125 ms per image beside 2 BLAS threads, 73 ms beside 1; docs/results.md)."""
    global _blas_single
    if _blas_single:
        return
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")
    _blas_single = True


def chosen_threads() -> int:
    """The count `set_threads` chose for this process, else what the app config's `threads` means now."""
    if _chosen_threads is not None:
        return _chosen_threads
    from defect_agent.config import load_app_config

    app = load_app_config()
    return resolve_threads(app.threads, app.engine)


def ensure_threads() -> int:
    """Re-apply the process's chosen count (a model's first use; ultralytics resets torch's in select_device)."""
    return set_threads(chosen_threads())


_onnx_backend: tuple[str, str] | None = None


def set_onnx_backend(runtime: str, precision: str = "f32") -> None:
    """What opens the onnx engine's sessions from now on (`onnx:` of configs/default.yaml): settled with the threads,
    before any model loads, because a session keeps the runtime it was opened with. bf16 on a CPU without bfloat16
    becomes f32 (with a warning): OpenVINO would compute in float32 anyway, and versions must say so."""
    global _onnx_backend
    _onnx_backend = (runtime, _precision_here(runtime, precision))


def chosen_onnx_backend() -> tuple[str, str]:
    """(runtime, precision) `set_onnx_backend` chose for this process, else the app config's."""
    if _onnx_backend is not None:
        return _onnx_backend
    from defect_agent.config import load_app_config

    onnx = load_app_config().onnx
    return onnx.runtime, _precision_here(onnx.runtime, onnx.precision)


def _precision_here(runtime: str, precision: str) -> str:
    if runtime == "openvino" and precision == "bf16" and not _openvino_has_bf16():
        return "f32"
    return precision


@functools.cache
def _openvino_has_bf16() -> bool:
    """Whether OpenVINO's CPU plugin computes bfloat16 here (AVX512-BF16 or AMX); True when OpenVINO is missing, so
    that opening a session reports that instead."""
    try:
        import openvino as ov
    except ModuleNotFoundError:
        return True
    capabilities = list(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    if "BF16" in capabilities:
        return True
    log.warning(
        "onnx.precision bf16: this CPU has no bfloat16 (OpenVINO's capabilities: %s); running float32",
        ", ".join(capabilities),
    )
    return False
