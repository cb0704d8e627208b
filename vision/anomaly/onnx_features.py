"""The anomaly model's patch-feature extractor (vision.anomaly.backbone) as an ONNX file run by onnxruntime, so that
a line PC scores anomalies without importing torch or timm. The memory bank and its nearest-neighbour search stay
as they are (numpy on this engine, `vision.anomaly.memory.nearest_distance_np`).

One file per line (`<onnx_dir>/anomaly_features.onnx`, written by `defect-agent export --line L --format onnx`);
it records what it was traced from - the backbone file's sha256 and the config that shapes the features - and
`AnomalyModel.load(..., engine="onnx")` refuses a file that no longer matches the model it serves."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from vision.anomaly.model import AnomalyConfig

log = logging.getLogger(__name__)

FEATURES_FILE = "anomaly_features.onnx"


def features_source(config: AnomalyConfig, backbone_sha256: str) -> str:
    """What the features depend on: the backbone weights and the config fields the extractor is built from."""
    from vision.embedder import towers

    stages = ",".join(str(s) for s in sorted(config.stages))
    return (
        f"{towers.TIMM_NAME}@{backbone_sha256[:12]} stages={stages} pool={config.pool} pad={config.pad} "
        f"size={config.image_size}"
    )


def export_features(config: AnomalyConfig, backbone_sha256: str, target: Path) -> Path:
    """Trace the torch extractor at the config's input size (dynamic batch) into `target`, stamped with its
    source; written beside the target and renamed over it."""
    import warnings

    import torch

    from vision.anomaly import backbone
    from vision.locator.onnx_engine import replace_atomically, stamp_metadata, writable_target

    target = writable_target(Path(target))
    tmp = target.with_name(f".{target.stem}.tmp{target.suffix}")
    module = backbone.build_extractor(config.stages, config.pool, "cpu", config.pad)
    size = config.image_size
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter: deprecated, tracer notes on the fixed input size
        torch.onnx.export(
            module,
            (torch.zeros(1, 3, size, size),),
            str(tmp),
            input_names=["pixels"],
            output_names=["features"],
            dynamic_axes={"pixels": {0: "batch"}, "features": {0: "batch"}},
            opset_version=17,
            dynamo=False,  # the dynamo exporter needs onnxscript, which is not pinned
        )
    stamp_metadata(
        tmp,
        {"kind": "anomaly_features", "source": features_source(config, backbone_sha256), "torch": torch.__version__},
    )
    replace_atomically(tmp, target)
    log.info("wrote %s (%.1f MB)", target, target.stat().st_size / 1e6)
    return target


class OnnxFeatures:
    """The extractor as a session: a float32 (n, 3, S, S) batch in, (n, patches, dim) features out (numpy)."""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        from vision.locator.onnx_engine import ort_session, our_metadata

        self.path = Path(path)
        self.session: Any = ort_session(self.path, threads)
        self.source = our_metadata(self.session).get("source")
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        (features,) = self.session.run(None, {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)})
        return features
