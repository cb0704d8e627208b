"""Shared helpers for the knowledge-base and retrieval tests, plus tests of the helpers themselves.

`HistogramEmbedder` stands in for the real embedder where a test needs vectors whose geometry it controls: it maps
an image crop to its colour histogram and a text to hashed word buckets, deterministically, so the knowledge base's
own behaviour (storage, indexing, filtering, ranking, consistency) is pinned to exact orderings. The KB with the
shipped open_clip embedder on real crops is tested in tests/test_kb_real_embedder.py."""

from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np

from knowledge_base.case import CaseInput
from retrieval.embedding import Embeds
from retrieval.policy import IndexPolicy

DIM = 32


class HistogramEmbedder:
    """Test double implementing the Embeds protocol (see module docstring)."""

    def __init__(self, version: str = "test-hist-v1") -> None:
        self._version = version
        self.calls = 0

    @property
    def dim(self) -> int:
        return DIM

    @property
    def version(self) -> str:
        return self._version

    def embed_images(self, images: list[np.ndarray]) -> np.ndarray:
        self.calls += 1
        out = np.zeros((len(images), DIM), dtype=np.float32)
        for i, img in enumerate(images):
            feats = []
            for ch in range(3):
                hist, _ = np.histogram(img[..., ch], bins=8, range=(0, 256))
                feats.append(hist / max(1, hist.sum()))
            mean = img.reshape(-1, 3).mean(axis=0) / 255.0
            vec = np.concatenate([*feats, mean, [0.05] * (DIM - 27)]).astype(np.float32)
            out[i] = vec / np.linalg.norm(vec)
        return out

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), DIM), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in text.lower().split():
                out[i, int(hashlib.sha1(word.encode()).hexdigest(), 16) % DIM] += 1.0
            out[i, -1] += 0.01
            out[i] /= np.linalg.norm(out[i])
        return out


COLOURS = {
    "red": (30, 30, 220),
    "green": (40, 200, 40),
    "blue": (210, 60, 30),
    "grey": (128, 128, 128),
    "yellow": (30, 220, 230),
}


def make_image(path: Path, colour: str | tuple[int, int, int], seed: int = 0, size: tuple[int, int] = (64, 48)) -> Path:
    """A small PNG of one colour with a little noise (seeded: same seed, same bytes)."""
    bgr = COLOURS[colour] if isinstance(colour, str) else colour
    rng = np.random.default_rng(seed)
    w, h = size
    img = np.clip(np.array(bgr, dtype=np.int16)[None, None, :] + rng.integers(-12, 13, size=(h, w, 3)), 0, 255)
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), img.astype(np.uint8))
    return path


def case_input(
    image: Path, line: str = "battery_tab", defect_class: str = "spatter", disposition: str = "rework", **extra
) -> CaseInput:
    return CaseInput(line=line, defect_class=defect_class, image_path=str(image), disposition=disposition, **extra)


def small_policy(**changes) -> IndexPolicy:
    return IndexPolicy(**changes)


def unit(seed: int, dim: int = DIM) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


def test_double_satisfies_protocol_and_is_deterministic(tmp_path: Path) -> None:
    emb = HistogramEmbedder()
    assert isinstance(emb, Embeds)
    a = cv2.imread(str(make_image(tmp_path / "a.png", "red", seed=1)))
    b = cv2.imread(str(make_image(tmp_path / "b.png", "red", seed=2)))
    c = cv2.imread(str(make_image(tmp_path / "c.png", "blue", seed=1)))
    va, vb, vc = emb.embed_images([a, b, c])
    assert np.allclose(emb.embed_images([a])[0], va)
    assert abs(np.linalg.norm(va) - 1) < 1e-5
    assert float(va @ vb) > float(va @ vc) + 0.2  # same colour closer than another colour
