"""The interface retrieval and the knowledge base need from an embedder (implemented in vision/embedder)."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Embeds(Protocol):
    """Images and texts into one space. Outputs are float32, shape (n, dim), rows L2-normalised."""

    @property
    def dim(self) -> int: ...

    @property
    def version(self) -> str: ...  # identifies weights, recorded in verdicts and KB snapshots

    def embed_images(self, images: list[np.ndarray]) -> np.ndarray: ...  # BGR uint8 HxWx3 crops (opencv order)

    def embed_texts(self, texts: list[str]) -> np.ndarray: ...
