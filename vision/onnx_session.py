"""onnxruntime sessions as every ONNX engine of the project opens them (locator, verifier, anomaly model, the
embedder's image tower), and the `defect_agent.*` metadata an export carries. One place, so that the locator and
the embedder - sibling packages that may not import each other - open their sessions the same way."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from defect_agent.errors import ConfigError

if TYPE_CHECKING:  # heavy import, only for type hints
    import onnxruntime

ORT_PIN = "onnxruntime==1.31.1"
META_PREFIX = "defect_agent."  # our keys in the ONNX file's metadata_props, beside ultralytics' own


def default_threads(threads: int | None = None) -> int:
    """Intra-op threads: the argument, else the count the process settled on (`defect_agent.runtime.chosen_threads`:
    `threads` of configs/default.yaml, DEFECT_AGENT_THREADS overriding), without touching torch."""
    if threads:
        return int(threads)
    from defect_agent.runtime import chosen_threads

    return chosen_threads()


def import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ModuleNotFoundError as exc:
        raise ConfigError(
            f"the onnx engine needs onnxruntime ({exc}): pip install {ORT_PIN}, or use engine='torch'"
        ) from exc
    return onnxruntime


def ort_session(path: Path, threads: int | None = None) -> onnxruntime.InferenceSession:
    """A CPU session with `threads` intra-op threads and one inter-op thread: onnxruntime's default takes every core,
    which fights the torch / faiss threads of the same process (../shared/STACK-NOTES.md)."""
    ort = import_onnxruntime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = default_threads(threads)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # a line's sessions run one after another, each with its own pool: a pool spinning after its run takes the core
    # the next session needs (2 threads measured slower than 1 per image, bench_batch onnx_stages)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # a truncated file, a graph this onnxruntime cannot run
        raise ConfigError(f"cannot load ONNX model {path}: {exc}") from exc


def session_metadata(session: onnxruntime.InferenceSession) -> dict[str, str]:
    return dict(session.get_modelmeta().custom_metadata_map)


def our_metadata(session: onnxruntime.InferenceSession) -> dict[str, str]:
    """The `defect_agent.*` keys of an exported file, prefix removed."""
    return {k[len(META_PREFIX) :]: v for k, v in session_metadata(session).items() if k.startswith(META_PREFIX)}
