"""The anomaly model's scoring - patch-feature extractor (vision.anomaly.backbone) and each patch's distance to its
nearest memory-bank feature - as an ONNX file run by onnxruntime, so that a line PC scores anomalies without
importing torch or timm. The bank is an input of the graph, not part of it (`line mark-normal` grows it without a
re-export): the distances run in the session's own thread pool, where a numpy product beside it cost 2x in
contention (docs/results.md).

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
    """Trace the torch extractor and the distances at the config's input size (dynamic batch and bank size) into
    `target`, stamped with its source; written beside the target and renamed over it."""
    import warnings

    import torch

    from vision.anomaly import backbone
    from vision.locator.onnx_engine import replace_atomically, stamp_metadata, writable_target

    target = writable_target(Path(target))
    tmp = target.with_name(f".{target.stem}.tmp{target.suffix}")
    extractor = backbone.build_extractor(config.stages, config.pool, "cpu", config.pad)

    class PatchDistances(torch.nn.Module):
        """Patch features, then min_j |f - b_j| from the bank as `memory.scaled_bank_t` lays it out."""

        def __init__(self) -> None:
            super().__init__()
            self.extractor = extractor

        def forward(self, x: torch.Tensor, scaled_t: torch.Tensor, bank_sq: torch.Tensor) -> torch.Tensor:
            feats = self.extractor(x)
            flat = feats.reshape(-1, feats.shape[-1])
            best = (flat @ scaled_t + bank_sq).min(dim=1).values + (flat * flat).sum(dim=1)
            return best.clamp_min(0.0).sqrt().reshape(feats.shape[0], feats.shape[1])

    size = config.image_size
    dim = backbone.feature_dim(config.stages)
    example = (torch.zeros(1, 3, size, size), torch.zeros(dim, 16), torch.zeros(16))
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter: deprecated, tracer notes on the fixed input size
        torch.onnx.export(
            PatchDistances().eval(),
            example,
            str(tmp),
            input_names=["pixels", "scaled_bank_t", "bank_sq"],
            output_names=["distances"],
            dynamic_axes={
                "pixels": {0: "batch"},
                "scaled_bank_t": {1: "bank"},
                "bank_sq": {0: "bank"},
                "distances": {0: "batch"},
            },
            opset_version=17,
            dynamo=False,  # the dynamo exporter needs onnxscript, which is not pinned
        )
    stamp_metadata(
        tmp,
        {"kind": "anomaly_distances", "source": features_source(config, backbone_sha256), "torch": torch.__version__},
    )
    replace_atomically(tmp, target)
    log.info("wrote %s (%.1f MB)", target, target.stat().st_size / 1e6)
    return target


class OnnxFeatures:
    """The exported scorer as a session: a float32 (n, 3, S, S) batch and the bank (`memory.scaled_bank_t`, squared
    norms) in, (n, patches) nearest-bank distances out (numpy)."""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        from defect_agent.errors import ConfigError
        from vision.onnx_session import open_session, our_metadata

        self.path = Path(path)
        # float32 on every runtime: a normal patch lies a small distance from large bank vectors, and bfloat16
        # features (8-bit mantissa) moved the map by 1.1 % of its peak - faint regions came and went in 62 of 200
        # cells, with the distances alone kept in float32 as well (docs/results.md)
        self.session: Any = open_session(self.path, threads, precision="f32")
        meta = our_metadata(self.session)
        if meta.get("kind") != "anomaly_distances":
            raise ConfigError(
                f"{path} is not an exported anomaly scorer (kind {meta.get('kind')!r}): re-export it "
                "(defect-agent export --line <line> --format onnx)"
            )
        self.source = meta.get("source")

    def distances(self, batch: np.ndarray, scaled_t: np.ndarray, bank_sq: np.ndarray) -> np.ndarray:
        (out,) = self.session.run(
            None,
            {
                "pixels": np.ascontiguousarray(batch, dtype=np.float32),
                "scaled_bank_t": scaled_t,
                "bank_sq": np.ascontiguousarray(bank_sq, dtype=np.float32),
            },
        )
        return out
