"""The embedder's image tower as ONNX, for line PCs: export (`encode_image(x, normalize=True)` of the loaded model,
dynamic batch, fixed `image_size`) and the onnxruntime session `OnnxImageEmbedder` (vision.embedder.model) runs.
Only the image tower: texts are embedded once per line or query by the torch text tower, crops on every part.
Sessions and their metadata: `vision.onnx_session`, as for every engine."""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from defect_agent.errors import ConfigError
from vision.onnx_session import META_PREFIX

if TYPE_CHECKING:  # heavy imports, only for type hints
    from vision.embedder.model import Embedder

log = logging.getLogger(__name__)

EXPORT_COMMAND = "defect-agent export --line <line> --format onnx"


def image_file_name(model_name: str) -> str:
    return f"{model_name}-image.onnx"


def default_onnx_dir() -> Path:
    """`var/onnx/embedder` (under DEFECT_AGENT_DATA): one embedder serves every line, so its export is not in a
    line's folder."""
    from defect_agent.paths import data_dir

    return data_dir() / "onnx" / "embedder"


def source_of(embedder: Embedder) -> str:
    """What an export must match at load: the torch embedder's version and the input size it was traced at."""
    return f"{embedder.version}@{_transform_size(embedder)}px"


def _transform_size(embedder: Embedder) -> int:
    import numpy as np

    from vision.embedder.preprocess import to_batch

    assert embedder.transform is not None, "a text-only embedder has no image tower"
    return int(to_batch([np.zeros((8, 8, 3), np.uint8)], embedder.transform).shape[-1])


def export_image_tower(embedder: Embedder, target: Path) -> Path:
    """Write `embedder`'s image tower (L2-normalised output) to `target` as ONNX with a dynamic batch; the source
    version goes into the file's metadata. Written beside the target and renamed over it."""
    import onnx
    import torch

    from defect_agent.paths import models_dir

    if embedder.transform is None:
        raise ConfigError("a text-only embedder has no image tower to export")
    target = Path(target).resolve()
    if target.is_relative_to(models_dir().resolve()):
        raise ConfigError(f"refusing to write {target} into models/ (shipped, pinned files): pass --out elsewhere")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.stem}.tmp{target.suffix}")
    size = _transform_size(embedder)

    class _Tower(torch.nn.Module):
        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.model.encode_image(x, normalize=True)

    tower = _Tower(embedder.model).eval()
    # tracing cannot record inference tensors: leave a caller's inference_mode for the export
    with torch.inference_mode(False), torch.no_grad():
        with warnings.catch_warnings():  # TorchScript exporter: deprecated, not removed (below)
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                tower,
                (torch.zeros(1, 3, size, size),),
                str(tmp),
                input_names=["pixels"],
                output_names=["embedding"],
                dynamic_axes={"pixels": {0: "batch"}, "embedding": {0: "batch"}},
                opset_version=17,
                dynamo=False,  # the TorchScript exporter: the dynamo one needs onnxscript, which is not pinned
            )
    model = onnx.load(str(tmp))
    mean, std = _normalisation(embedder.transform)
    for key, value in {
        "kind": "embedder_image",
        "source": source_of(embedder),
        "image_size": str(size),
        # what the torch-free runtime needs to preprocess crops and score textures without the torch model
        "mean": json.dumps(mean),
        "std": json.dumps(std),
        "logit_scale": repr(embedder.logit_scale),
        "torch": torch.__version__,
    }.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = META_PREFIX + key, value
    onnx.save(model, str(tmp))
    os.replace(tmp, target)
    log.info("wrote %s (%.1f MB) from %s", target, target.stat().st_size / 1e6, embedder.version)
    return target


def _normalisation(transform: Any) -> tuple[list[float], list[float]]:
    """mean and std of the eval transform's Normalize step."""
    for step in getattr(transform, "transforms", []):
        if type(step).__name__ == "Normalize":
            return [float(v) for v in step.mean], [float(v) for v in step.std]
    raise ConfigError(f"the embedder's eval transform has no Normalize step: {transform}")
