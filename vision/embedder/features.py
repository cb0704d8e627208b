"""Frozen-tower features, computed once and cached on disk, so that LiT-style training only runs the small trainable
heads (seconds per epoch on a CPU) instead of the towers.

Image side: for every crop, the input of EfficientNet-Lite0's last stage (`blocks[6]`, 192 x 7 x 7 at 224 px, fp16)
and the frozen pooled trunk feature (1280-d). The maps allow training with the last stage unlocked; the pooled
feature serves the default (all locked) training. Text side: MiniLM mean-pooled token features (384-d) of texts
without added tokens (English); texts with added tokens are recomputed in the loop because their token rows train."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
from tqdm import tqdm

from defect_agent.paths import data_dir
from vision.embedder import towers
from vision.embedder.preprocess import open_clip_transform, to_batch
from vision.embedder.samples import CropSet

log = logging.getLogger(__name__)

FEATURE_VERSION = 1
LAST_STAGE = 6  # index of EfficientNet-Lite0's last block stage


def cache_dir() -> Path:
    return data_dir() / "embedder" / "features"


def _key(crops: CropSet, image_size: int) -> str:
    ident = {
        "v": FEATURE_VERSION,
        "set": crops.name,
        "n": len(crops),
        "size": image_size,
        "tower": towers.tower_files()["image"].sha256,
        "labels": hashlib.sha1(json.dumps([crops.kinds, crops.sources]).encode()).hexdigest(),
        "pixels": hashlib.sha1(
            b"".join(c.tobytes()[:4096] for c in crops.crops[:: max(1, len(crops) // 64)])
        ).hexdigest(),
    }
    return hashlib.sha1(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def trunk_stem(trunk, x):
    """EfficientNet forward up to (not including) the last stage."""
    x = trunk.bn1(trunk.conv_stem(x))
    for i, block in enumerate(trunk.blocks):
        if i == LAST_STAGE:
            break
        x = block(x)
    return x


def trunk_head(trunk, maps):
    """The last stage, head conv and global pool: maps (n, 192, 7, 7) -> pooled (n, 1280)."""
    x = trunk.blocks[LAST_STAGE](maps)
    x = trunk.bn2(trunk.conv_head(x))
    return trunk.global_pool(x)


def image_features(
    model, crops: CropSet, image_size: int = 224, batch_size: int = 48, progress: bool = True, use_cache: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """(maps fp16 (n, 192, s, s), pooled fp32 (n, 1280)) of the frozen image trunk, cached by content."""
    import torch

    path = cache_dir() / f"{crops.name}-{_key(crops, image_size)}.npz"
    if use_cache and path.is_file():
        with np.load(path) as data:
            log.info("image features from cache %s", path)
            return data["maps"], data["pooled"]
    transform = open_clip_transform(image_size, towers.IMAGE_MEAN, towers.IMAGE_STD)
    trunk = model.visual.trunk.eval()
    maps, pooled = [], []
    with torch.inference_mode():
        for start in tqdm(
            range(0, len(crops), batch_size), desc=f"features {crops.name}", unit="batch", disable=not progress
        ):
            batch = to_batch(crops.crops[start : start + batch_size], transform)
            m = trunk_stem(trunk, batch)
            maps.append(m.to(torch.float16).numpy())
            pooled.append(trunk_head(trunk, m).float().numpy())
    maps_a, pooled_a = np.concatenate(maps), np.concatenate(pooled)
    if use_cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, maps=maps_a, pooled=pooled_a)
        tmp.replace(path)
    return maps_a, pooled_a


def text_pooled(model, tokenizer, texts: list[str], grad: bool = False):
    """MiniLM mean-pooled features (n, 384) before the projection; a tensor (with grad when asked)."""
    import torch

    ids = tokenizer(texts)
    keep = int((ids != 0).sum(1).max())  # trim padding: BERT cost grows with the padded length
    ids = ids[:, :keep]
    encoder = model.text
    ctx = torch.enable_grad() if grad else torch.inference_mode()
    with ctx:
        mask = (ids != encoder.config.pad_token_id).long()
        out = encoder.transformer(input_ids=ids, attention_mask=mask)
        return encoder.pooler(out, mask)
