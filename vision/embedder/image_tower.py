"""The default embedder's image tower without open_clip: what an inspection runs.

Inspecting embeds crops only (the line's prompt texts come from the prompt cache), yet building the whole
CustomTextCLIP imports open_clip and transformers and loads the MiniLM text tower: about 5 of the 9 s an `inspect`
process spent before its first verdict (issue 23). This module builds the same image tower from timm directly -
the module names and parameter names of open_clip's `TimmModel` (`visual.trunk.*`, `visual.head.mlp.*`), so the
checkpoint's state dict loads unchanged - and the same eval transform from torchvision. `LazyTextEmbedder` builds
the full model on its first `embed_texts`. Equality with open_clip's tower: tests/test_embedder_image_tower.py."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from vision.embedder import towers


def eval_transform(image_size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> Callable:
    """open_clip's `image_transform(is_train=False, resize_mode="shortest", interpolation="bicubic")` for a square
    size: resize the shortest side, centre crop, to tensor, normalise."""
    from torchvision.transforms import CenterCrop, Compose, InterpolationMode, Normalize, Resize, ToTensor

    return Compose(
        [
            Resize(image_size, interpolation=InterpolationMode.BICUBIC),
            CenterCrop((image_size, image_size)),
            ToTensor(),
            Normalize(mean=mean, std=std),
        ]
    )


def build_image_model(model_cfg: dict[str, Any]) -> Any:
    """An nn.Module with `visual` (trunk + head as open_clip builds them for timm_pool 'avg', timm_proj 'mlp'),
    `logit_scale` and `encode_image(x, normalize)`; trunk weights from the ImageNet package, head at random init
    (the checkpoint's state goes on top)."""
    import timm
    import torch
    import torch.nn.functional as F
    from timm.layers import Mlp

    vision = model_cfg["vision_cfg"]
    if vision.get("timm_pool", "avg") != "avg" or vision.get("timm_proj") != "mlp":
        raise ValueError(f"image-only build supports timm_pool 'avg' + timm_proj 'mlp', not {vision}")
    embed_dim = int(model_cfg["embed_dim"])

    class TimmTower(torch.nn.Module):
        """open_clip's TimmModel for pool 'avg' and an MLP projection."""

        def __init__(self) -> None:
            super().__init__()
            trunk: Any = timm.create_model(vision["timm_model_name"], pretrained=False)
            trunk.reset_classifier(0, global_pool="avg")
            self.trunk = trunk
            width = int(trunk.num_features)
            mlp = Mlp(width, 2 * embed_dim, embed_dim, drop=(0.0, 0.0), bias=(True, bool(vision.get("proj_bias"))))
            self.head = torch.nn.Sequential(OrderedDict(mlp=mlp))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.trunk(x))

    class ImageOnlyClip(torch.nn.Module):
        """The CLIP model's image half: `encode_image` as open_clip's, no text tower."""

        def __init__(self) -> None:
            super().__init__()
            self.visual = TimmTower()
            self.logit_scale = torch.nn.Parameter(torch.ones([]) * float(model_cfg.get("init_logit_scale", 0.0)))

        def encode_image(self, image: torch.Tensor, normalize: bool = False) -> torch.Tensor:
            features = self.visual(image)
            return F.normalize(features, dim=-1) if normalize else features

    model = ImageOnlyClip()
    towers.load_image_tower_weights(model.visual.trunk)
    return model


def load_image_state(model: Any, payload: dict[str, Any]) -> None:
    """The checkpoint's image-side parameters (`visual.*`, `logit_scale`) onto the image-only model; any of them it
    lacks is an error (a checkpoint of another architecture)."""
    state = {k: v for k, v in payload["state_dict"].items() if k.startswith("visual.") or k == "logit_scale"}
    own = model.state_dict()
    unknown = [k for k in state if k not in own]
    if unknown:
        raise ValueError(f"embedder checkpoint has image parameters the image tower lacks: {unknown[:5]}")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=False)


class LazyTextTower:
    """Builds the full CLIP model (open_clip + the MiniLM text tower) on first use, once, thread-safe."""

    def __init__(self, build: Callable[[], tuple[Any, Any]]) -> None:
        self._build = build
        self._lock = threading.Lock()
        self._model: Any = None
        self._tokenizer: Any = None

    def get(self) -> tuple[Any, Any]:
        with self._lock:
            if self._model is None:
                self._model, self._tokenizer = self._build()
            return self._model, self._tokenizer
