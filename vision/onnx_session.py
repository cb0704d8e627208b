"""Sessions as every ONNX engine of the project opens them (locator, verifier, anomaly model, the embedder's image
tower), and the `defect_agent.*` metadata an export carries. One place, so that the locator and the embedder -
sibling packages that may not import each other - open their sessions the same way, on the runtime the app config
names (`onnx.runtime`: onnxruntime, or OpenVINO over the same files)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from defect_agent.errors import ConfigError

if TYPE_CHECKING:  # heavy import, only for type hints
    import onnxruntime

ORT_PIN = "onnxruntime==1.31.1"
OPENVINO_PIN = "openvino==2026.4.1"
META_PREFIX = "defect_agent."  # our keys in the ONNX file's metadata_props, beside ultralytics' own
# OpenVINO pins a session's threads to the first cores by default: two 1-thread processes (Ray workers, two stations)
# then share core 0 and each runs 2x slower; unpinned, idle latency is the same (benchmarks/bench_pinning.py)
CPU_PINNING = False


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


def open_session(path: Path, threads: int | None = None, precision: str | None = None) -> Any:
    """A CPU session over an exported file on the process's runtime and precision
    (`defect_agent.runtime.chosen_onnx_backend`): `run(output_names, feeds)`, `get_inputs()`, `get_outputs()` as
    onnxruntime's; ConfigError naming the file when it cannot be loaded. `precision="f32"`: float32 whatever the
    process chose, for a graph bfloat16 would break."""
    from defect_agent.runtime import chosen_onnx_backend

    runtime, chosen = chosen_onnx_backend()
    if runtime == "openvino":
        return OpenVinoSession(Path(path), default_threads(threads), precision or chosen)
    return ort_session(Path(path), threads)


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


class _Port:
    """An input or output as onnxruntime describes it: name and shape (None for a free dimension)."""

    def __init__(self, name: str, shape: list[int | None]) -> None:
        self.name = name
        self.shape = shape


class OpenVinoSession:
    """An exported .onnx file compiled by OpenVINO for the CPU, answering the calls the engines make of an
    onnxruntime session. `precision` "bf16" computes in bfloat16 where the CPU has it (AVX512-BF16 / AMX; elsewhere
    OpenVINO keeps float32); "f32" always float32 - OpenVINO's own default on such CPUs is bfloat16, so it is set."""

    def __init__(self, path: Path, threads: int, precision: str = "f32") -> None:
        try:
            import openvino as ov
        except ModuleNotFoundError as exc:
            raise ConfigError(
                f"onnx.runtime openvino needs OpenVINO ({exc}): pip install {OPENVINO_PIN}, or set onnx.runtime "
                "onnxruntime in configs/default.yaml"
            ) from exc
        if precision not in ("f32", "bf16"):
            raise ValueError(f"precision must be f32 or bf16, got {precision!r}")
        self.path = path
        self.precision = precision
        core = ov.Core()
        try:
            model = core.read_model(str(path))
            self.metadata = _openvino_metadata(model)
            self.compiled = core.compile_model(
                model,
                "CPU",
                {
                    "INFERENCE_NUM_THREADS": int(threads),
                    "NUM_STREAMS": 1,
                    "PERFORMANCE_HINT": "LATENCY",
                    "INFERENCE_PRECISION_HINT": precision,
                    "ENABLE_CPU_PINNING": CPU_PINNING,
                },
            )
        except Exception as exc:  # a truncated file, a graph OpenVINO cannot compile
            raise ConfigError(f"cannot load ONNX model {path} with OpenVINO: {exc}") from exc
        self._request = self.compiled.create_infer_request()
        # an infer request is not safe across threads, and a server's request threads share a line's models
        self._lock = threading.Lock()
        self._inputs = [_Port(p.get_any_name(), _shape(p.get_partial_shape())) for p in self.compiled.inputs]
        self._outputs = [_Port(p.get_any_name(), _shape(p.get_partial_shape())) for p in self.compiled.outputs]

    def get_inputs(self) -> list[_Port]:
        return self._inputs

    def get_outputs(self) -> list[_Port]:
        return self._outputs

    def run(self, output_names: list[str] | None, feeds: dict[str, Any]) -> list[Any]:
        import numpy as np

        names = output_names or [p.name for p in self._outputs]
        with self._lock:
            # copied out of the request's buffers, which the next call overwrites
            result = self._request.infer(feeds, share_outputs=False)
            return [np.asarray(result[self.compiled.output(name)]) for name in names]


def _shape(partial: Any) -> list[int | None]:
    return [d.get_length() if d.is_static else None for d in partial]


def _openvino_metadata(model: Any) -> dict[str, str]:
    """The ONNX file's metadata_props, which OpenVINO's ONNX reader keeps under rt_info["framework"]."""
    info = model.get_rt_info()
    if "framework" not in info:
        return {}
    return {str(k): v.astype(str) for k, v in info["framework"].items()}


def session_metadata(session: Any) -> dict[str, str]:
    if isinstance(session, OpenVinoSession):
        return dict(session.metadata)
    return dict(session.get_modelmeta().custom_metadata_map)


def our_metadata(session: Any) -> dict[str, str]:
    """The `defect_agent.*` keys of an exported file, prefix removed."""
    return {k[len(META_PREFIX) :]: v for k, v in session_metadata(session).items() if k.startswith(META_PREFIX)}
