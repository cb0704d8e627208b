"""`AnomalyModel`: a normal-only PatchCore model for lines without a box-trained detector.

fit(normal_images)   patch features of the normal images (vision.anomaly.backbone) -> memory bank, a greedy
                     coreset of them when there are more than `coreset_min` (vision.anomaly.memory)
score(image)         each patch's distance to its nearest bank feature; image score = the largest; anomaly map =
                     the patch distances upsampled to the image's own size and Gaussian-smoothed
calibrate(...)       thresholds from scores of held-back normal images at a false-alarm target
save / load          the bank in safetensors + a JSON meta (config, thresholds, the backbone file's sha256); no
                     pickle. The meta records the bank file's sha256, and both files under models/ are checked
                     against models/MANIFEST.json like every model file.

The image threshold applies to `AnomalyResult.score` (raw patch distances); `map_threshold` applies to the smoothed
map, whose peak is lower than the raw maximum, and is what `regions` cuts at."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pydantic import BaseModel, Field, model_validator

from defect_agent.errors import EmptyInput, ImageReadError, ModelFileMissing, ModelFileRejected
from defect_agent.files import atomic_write, file_sha256, record_model, verify_model_file
from vision.anomaly import backbone
from vision.anomaly.memory import greedy_coreset, nearest_distance, scaled_bank_t
from vision.anomaly.regions import AnomalyRegion, regions
from vision.embedder import towers
from vision.embedder.texture import calibrate_threshold

log = logging.getLogger(__name__)

FORMAT = "defect-agent-anomaly/1"
METHOD = "patchcore"
BANK_KEY = "memory_bank"


class AnomalyConfig(BaseModel):
    """How an anomaly model is built: input size, backbone stages, aggregation, memory-bank size, smoothing."""

    image_size: int = Field(256, ge=32, description="Square input side the images are resized to, pixels.")
    stages: tuple[int, ...] = Field((2, 4), description="EfficientNet-Lite0 blocks whose features are used.")
    pool: int = Field(3, ge=1, description="Local average-pooling window over each stage's feature map.")
    pad: int = Field(32, ge=0, description="Mirrored border added before the backbone, model-input pixels.")
    margin: int = Field(
        0, ge=0, description="Border not inspected (score 0 on the map, not in the image score), model-input pixels."
    )
    coreset_ratio: float = Field(0.1, gt=0.0, le=1.0, description="Share of the patch features kept in the bank.")
    coreset_min: int = Field(2048, ge=1, description="Bank size floor; up to this many patch features all are kept.")
    coreset_max: int = Field(4096, ge=1, description="Upper bound on the bank size (scoring cost grows with it).")
    coreset_pool: int = Field(
        50000, ge=1, description="The coreset is chosen among at most this many patch features (a seeded sample)."
    )
    projection_dim: int = Field(128, ge=8, description="Random projection used only while selecting the coreset.")
    sigma: float = Field(4.0, ge=0.0, description="Gaussian smoothing of the map, in model-input pixels.")
    batch_size: int = Field(8, ge=1)
    seed: int = 0

    @model_validator(mode="after")
    def _fits_the_strides(self) -> AnomalyConfig:
        if not self.stages or min(self.stages) < 0 or max(self.stages) >= len(backbone.STAGE_STRIDES):
            raise ValueError(f"stages must lie in 0..{len(backbone.STAGE_STRIDES) - 1}, got {self.stages}")
        coarsest = max(backbone.STAGE_STRIDES[s] for s in self.stages)
        # the patch grid is image_size / stride only when every stage divides the (padded) input evenly
        if self.image_size % coarsest or self.pad % coarsest:
            raise ValueError(f"image_size and pad must be multiples of {coarsest} px for stages {self.stages}")
        return self


@dataclass(frozen=True)
class AnomalyResult:
    """One image's anomaly score (the largest patch distance) and its anomaly map (float32, the image's height x
    width, smoothed patch distances)."""

    score: float
    map: np.ndarray

    @property
    def peak(self) -> float:
        """The smoothed map's largest value: what `map_threshold` is compared with."""
        return float(self.map.max())


def read_image(path: Path | str) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ImageReadError(f"cannot read image {path}")
    return image


def _as_image(item: np.ndarray | Path | str) -> np.ndarray:
    return item if isinstance(item, np.ndarray) else read_image(item)


def _batches(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class AnomalyModel:
    """PatchCore over EfficientNet-Lite0 features, fitted on normal images only (see the module docstring).

    `threshold` (image score) and `map_threshold` (smoothed map) are None until `calibrate` sets them. A model
    loaded with `engine="onnx"` scores only (features and bank distances in one onnxruntime graph, the bank held as
    numpy: no torch in the process); fitting and growing the bank need the torch engine."""

    def __init__(self, config: AnomalyConfig | None = None, device: str = "cpu") -> None:
        self.config = config or AnomalyConfig()
        self.device = device
        self.engine = "torch"
        self.threshold: float | None = None
        self.map_threshold: float | None = None
        self.max_false_alarm: float | None = None
        self.fit_info: dict[str, Any] = {}
        self._bank: Any = None  # (m, d): a torch tensor, numpy on the onnx engine
        self._bank_sq: Any = None
        self._bank_scaled_t: np.ndarray | None = None  # onnx engine: -2 x bank, transposed (memory.scaled_bank_t)
        self._extractor: Any = None
        self._bank_sha256: str | None = None
        self.backbone_sha256: str | None = None  # the backbone file the bank was fitted on (set by save / load)

    # ------------------------------------------------------------------------------------------------ features
    def _features(self, images: Sequence[np.ndarray]) -> Any:
        """(n, h*w, d) patch features of a batch of images (torch, on `device`). The onnx engine's graph returns
        distances only."""
        self._need_torch("patch features")
        import torch

        if self._extractor is None:
            from defect_agent.runtime import ensure_threads

            ensure_threads()
            self._extractor = backbone.build_extractor(
                self.config.stages, self.config.pool, self.device, self.config.pad
            )
        batch = torch.from_numpy(backbone.preprocess(images, self.config.image_size)).to(self.device)
        with torch.inference_mode():
            return self._extractor(batch.contiguous(memory_format=torch.channels_last))

    @property
    def grid(self) -> int:
        return self.config.image_size // backbone.grid_stride(self.config.stages)

    @property
    def fitted(self) -> bool:
        return self._bank is not None

    @property
    def bank_size(self) -> int:
        return 0 if self._bank is None else int(self._bank.shape[0])

    # ------------------------------------------------------------------------------------------------ fit
    def fit(self, normal_images: Sequence[np.ndarray | Path | str], progress: bool = False) -> AnomalyModel:
        """Build the memory bank from normal images (uint8 grey / BGR arrays or image paths)."""
        import torch
        from tqdm import tqdm

        self._need_torch("fitting")
        if len(normal_images) == 0:
            raise EmptyInput("fitting an anomaly model needs at least one normal image")
        t0 = time.perf_counter()
        parts = []
        for chunk in tqdm(
            list(_batches(normal_images, self.config.batch_size)), desc="anomaly features", disable=not progress
        ):
            feats = self._features([_as_image(x) for x in chunk])
            parts.append(feats.reshape(-1, feats.shape[-1]))
        feats = torch.cat(parts)
        t_feat = time.perf_counter() - t0
        n = int(feats.shape[0])
        k = n
        if n > self.config.coreset_min:
            k = min(max(self.config.coreset_min, round(self.config.coreset_ratio * n)), self.config.coreset_max)
        if k < n:
            if n > self.config.coreset_pool:
                # each greedy step reads every candidate, so the step count (k) times the pool sets the fit time;
                # neighbouring patch features overlap (3 x 3 pooling), so a sample covers nearly what all cover
                gen = torch.Generator().manual_seed(self.config.seed)
                feats = feats[torch.randperm(n, generator=gen)[: self.config.coreset_pool].to(feats.device)]
            idx = greedy_coreset(feats, k, self.config.projection_dim, self.config.seed)
            feats = feats[idx]
        self._set_bank(feats.contiguous())
        self.threshold = self.map_threshold = self.max_false_alarm = None
        self.fit_info = {
            "images": len(normal_images),
            "patches": n,
            "bank": k,
            "feature_seconds": round(t_feat, 2),
            "seconds": round(time.perf_counter() - t0, 2),
        }
        log.info(
            "anomaly model fitted on %d images: %d patch features -> bank of %d in %.1f s",
            len(normal_images),
            n,
            k,
            self.fit_info["seconds"],
        )
        return self

    def add_normal(self, images: Sequence[np.ndarray | Path | str], keep_above: float = 0.5) -> int:
        """Teach the model that `images` are normal (an engineer marked a false alarm) without a refit: their patch
        features farther from the bank than `keep_above` x the image threshold join it (nearer ones add nothing the
        bank does not already cover). Returns how many joined. Thresholds stay: the bank only grows, so normal
        scores only fall."""
        return self.score_and_add_normal(images, keep_above)[0]

    def score_and_add_normal(
        self, images: Sequence[np.ndarray | Path | str], keep_above: float = 0.5
    ) -> tuple[int, list[AnomalyResult]]:
        """`add_normal`, also returning each image's `score` against the bank before they joined it (one backbone
        pass per image for both: `line mark-normal` boxes the false alarm it files from these)."""
        import torch

        self._need_bank()
        self._need_torch("adding normal images")
        if len(images) == 0:
            raise EmptyInput("no images to add as normal")
        floor = keep_above * (self.threshold if self.threshold is not None else 0.0)
        added = []
        results: list[AnomalyResult] = []
        for chunk in _batches(images, self.config.batch_size):
            arrays = [_as_image(x) for x in chunk]
            feats = self._features(arrays)
            flat = feats.reshape(-1, feats.shape[-1])
            dist = nearest_distance(flat, self._bank, self._bank_sq)
            added.append(flat[dist > floor])
            results += self._results(arrays, dist.cpu().numpy())
        new = torch.cat(added)
        if len(new):
            self._set_bank(torch.cat([self._bank, new.to(self.device).float()]).contiguous())
        self.fit_info["added_normal_images"] = int(self.fit_info.get("added_normal_images", 0)) + len(images)
        self.fit_info["added_normal_patches"] = int(self.fit_info.get("added_normal_patches", 0)) + int(len(new))
        log.info(
            "%d normal images added: %d patch features joined the bank (now %d)", len(images), len(new), self.bank_size
        )
        return int(len(new)), results

    def _use_onnx(self, bank: np.ndarray, onnx_file: Path | str | None, threads: int | None) -> None:
        from defect_agent.errors import ConfigError
        from vision.anomaly.onnx_features import OnnxFeatures, features_source

        if onnx_file is None:
            raise ConfigError("engine='onnx' needs the exported anomaly features file (onnx_file)")
        features = OnnxFeatures(Path(onnx_file), threads)
        assert self.backbone_sha256 is not None  # load sets it before
        expected = features_source(self.config, self.backbone_sha256)
        if features.source != expected:
            raise ConfigError(
                f"{onnx_file} was exported from {features.source}, the anomaly model needs {expected}: re-export it "
                "(defect-agent export --line <line> --format onnx)"
            )
        self.engine = "onnx"
        self._extractor = features
        self._bank = np.ascontiguousarray(bank, dtype=np.float32)
        self._bank_sq = (self._bank * self._bank).sum(axis=1)
        self._bank_scaled_t = scaled_bank_t(self._bank)
        self._bank_sha256 = None

    def _set_bank(self, bank: Any) -> None:
        self._bank = bank.to(self.device).float()
        self._bank_sq = (self._bank * self._bank).sum(dim=1)
        self._bank_sha256 = None

    # ------------------------------------------------------------------------------------------------ score
    def _need_torch(self, what: str) -> None:
        if self.engine != "torch":
            raise RuntimeError(f"{what} needs the torch engine: this model was loaded with engine={self.engine!r}")

    def _need_bank(self) -> None:
        if self._bank is None:
            raise RuntimeError("the anomaly model is not fitted: call fit(normal_images) or AnomalyModel.load(path)")

    def score(self, image: np.ndarray | Path | str) -> AnomalyResult:
        """Score one image (uint8 grey / BGR array or path)."""
        return self.score_batch([image])[0]

    def score_batch(self, images: Sequence[np.ndarray | Path | str]) -> list[AnomalyResult]:
        """Score images together (one backbone pass per `batch_size`); results in input order."""
        self._need_bank()
        out: list[AnomalyResult] = []
        for chunk in _batches(images, self.config.batch_size):
            arrays = [_as_image(x) for x in chunk]
            if self.engine == "onnx":
                pixels = backbone.preprocess(arrays, self.config.image_size)
                dist = self._extractor.distances(pixels, self._bank_scaled_t, self._bank_sq)
            else:
                feats = self._features(arrays)
                dist = nearest_distance(feats.reshape(-1, feats.shape[-1]), self._bank, self._bank_sq).cpu().numpy()
            out += self._results(arrays, dist)
        return out

    def _results(self, arrays: list[np.ndarray], dist: np.ndarray) -> list[AnomalyResult]:
        """Each image's result from its patches' nearest-bank distances (the chunk's, flattened)."""
        g = self.grid
        patch_maps = dist.reshape(len(arrays), g, g).astype(np.float32)
        cut = math.ceil(self.config.margin / backbone.grid_stride(self.config.stages))
        if cut:
            # arbitrary crops (DeepPCB) cut parts apart at the image edge; such edge patches stay rarer than most
            # defects even with the mirrored pad, so a line can leave a thin border uninspected
            inner = patch_maps[:, cut:-cut, cut:-cut].copy()
            patch_maps[:] = 0.0
            patch_maps[:, cut:-cut, cut:-cut] = inner
        size = self.config.image_size
        return [
            AnomalyResult(score=float(patch_map.max()), map=self._anomaly_map(patch_map, image, size))
            for image, patch_map in zip(arrays, patch_maps)
        ]

    def _anomaly_map(self, patch_map: np.ndarray, image: np.ndarray, size: int) -> np.ndarray:
        # patch (i, j) is centred on input pixel (stride * i, stride * j) ('same'-padded stride-2 convolutions),
        # so the map is placed by that affine map, not by a half-pixel resize (which would shift it by
        # (stride - 1) / 2 pixels); smoothing at model resolution keeps sigma's meaning whatever the image size
        stride = backbone.grid_stride(self.config.stages)
        place = np.array([[stride, 0.0, 0.0], [0.0, stride, 0.0]], dtype=np.float64)
        up = cv2.warpAffine(patch_map, place, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        if self.config.sigma > 0:
            up = cv2.GaussianBlur(up, (0, 0), self.config.sigma, borderType=cv2.BORDER_REFLECT)
        h, w = image.shape[:2]
        return up if (h, w) == (size, size) else cv2.resize(up, (w, h), interpolation=cv2.INTER_LINEAR)

    def is_anomalous(self, result: AnomalyResult) -> bool:
        """score > threshold (the calibrated alarm rule)."""
        if self.threshold is None:
            raise RuntimeError("no threshold: call calibrate(normal_scores, max_false_alarm) first")
        return result.score > self.threshold

    # ------------------------------------------------------------------------------------------------ calibrate
    def calibrate(
        self,
        normal_scores: Iterable[float],
        max_false_alarm: float = 0.01,
        normal_map_peaks: Iterable[float] | None = None,
    ) -> float:
        """Set and return the image threshold: at most `max_false_alarm` of the (held-back) normal scores lie
        strictly above it. With `normal_map_peaks` (`AnomalyResult.peak` of the same images) also set
        `map_threshold` at the same target, so that a normal image yields a region no more often."""
        self.threshold = calibrate_threshold(normal_scores, max_false_alarm)
        if normal_map_peaks is not None:
            self.map_threshold = calibrate_threshold(normal_map_peaks, max_false_alarm)
        self.max_false_alarm = max_false_alarm
        return self.threshold

    def regions(
        self,
        result: AnomalyResult,
        mm_per_px: float,
        min_area_px: int = 16,
        threshold: float | None = None,
        peak_fraction: float = 0.5,
    ) -> list[AnomalyRegion]:
        """Regions of `result.map` above `threshold` (default: the calibrated `map_threshold`), see `regions`."""
        cut = threshold if threshold is not None else self.map_threshold
        if cut is None:
            raise RuntimeError("no map threshold: pass one or call calibrate(..., normal_map_peaks=...) first")
        return regions(result.map, cut, mm_per_px, min_area_px, peak_fraction)

    # ------------------------------------------------------------------------------------------------ files
    @property
    def version(self) -> str:
        """`patchcore-effnetlite0:<bank sha256[:12]>` for a saved / loaded model, else `...:unsaved`."""
        return f"{METHOD}-{towers.TIMM_NAME.replace('_', '')}:{(self._bank_sha256 or 'unsaved')[:12]}"

    def save(self, path: Path | str) -> Path:
        """Write `<path>.safetensors` (the bank) and `<path>.json` (the meta); returns the safetensors path. Files
        under models/ are recorded in models/MANIFEST.json."""
        from safetensors.torch import save as save_tensors

        self._need_bank()
        self._need_torch("saving")
        target = Path(path)
        if target.suffix != ".safetensors":
            target = target.with_name(target.name + ".safetensors")
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(target, save_tensors({BANK_KEY: self._bank.detach().cpu().contiguous()}, {"format": FORMAT}))
        self._bank_sha256 = file_sha256(target)
        tower = towers.image_tower_file()
        self.backbone_sha256 = file_sha256(tower)
        meta = {
            "format": FORMAT,
            "method": METHOD,
            "config": self.config.model_dump(mode="json"),
            "backbone": {
                "timm": towers.TIMM_NAME,
                "package": towers.IMAGE_PACKAGE,
                "file": tower.name,
                "sha256": self.backbone_sha256,
            },
            "bank": {"file": target.name, "sha256": self._bank_sha256, "shape": list(self._bank.shape)},
            "threshold": self.threshold,
            "map_threshold": self.map_threshold,
            "max_false_alarm": self.max_false_alarm,
            "fit": self.fit_info,
        }
        meta_path = meta_path_of(target)
        atomic_write(meta_path, (json.dumps(meta, indent=1) + "\n").encode("utf-8"))
        record_model(target)
        record_model(meta_path)
        log.info("saved anomaly model %s (%s)", target, self.version)
        return target

    @classmethod
    def load(
        cls,
        path: Path | str,
        device: str = "cpu",
        *,
        engine: str = "torch",
        onnx_file: Path | str | None = None,
        threads: int | None = None,
    ) -> AnomalyModel:
        """Load a model written by `save`. Raises `ModelFileMissing`, or `ModelFileRejected` when the files do not
        belong together, fail the manifest check, or were fitted on a different backbone file.

        `engine="onnx"`: patch features from `onnx_file` (`vision.anomaly.onnx_features`, `threads` intra-op
        threads), the bank as numpy; a file traced from another backbone or config raises ConfigError naming the
        export command. The backbone check is skipped where its weights package is not installed (a torch-free
        line PC)."""

        target = Path(path)
        if target.suffix != ".safetensors":
            target = target.with_name(target.name + ".safetensors")
        meta_path = meta_path_of(target)
        make = "AnomalyModel(...).fit(normal_images).save(path)"
        for p in (target, meta_path):
            if not p.is_file():
                raise ModelFileMissing(p, make, what="anomaly model file")
        verify_model_file(meta_path)
        bank_sha = verify_model_file(target)
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT:
            raise ModelFileRejected(meta_path, f"{meta_path} is not a {FORMAT} file (format {meta.get('format')!r})")
        if meta["bank"]["sha256"] != bank_sha:
            raise ModelFileRejected(
                target, f"{target} (sha256 {bank_sha[:12]}…) is not the bank {meta_path} was written with"
            )
        tower_sha = _installed_tower_sha(meta["backbone"]["sha256"], engine)
        if meta["backbone"]["sha256"] != tower_sha:
            raise ModelFileRejected(
                target,
                f"{target} was fitted on backbone weights sha256 {meta['backbone']['sha256'][:12]}…, the installed "
                f"{towers.IMAGE_PACKAGE} has {tower_sha[:12]}…: refit it",
            )
        model = cls(AnomalyConfig.model_validate(meta["config"]), device=device)
        bank: Any
        if engine == "onnx":
            from safetensors.numpy import load_file as load_numpy

            bank = load_numpy(str(target))[BANK_KEY]
        else:
            from safetensors.torch import load_file

            bank = load_file(str(target))[BANK_KEY]
        expected = backbone.feature_dim(model.config.stages)
        if bank.ndim != 2 or bank.shape[1] != expected:
            raise ModelFileRejected(target, f"{target}: bank shape {tuple(bank.shape)}, expected (m, {expected})")
        model.backbone_sha256 = meta["backbone"]["sha256"]
        if engine == "onnx":
            model._use_onnx(bank, onnx_file, threads)
        else:
            model._set_bank(bank)
        model._bank_sha256 = bank_sha
        model.threshold = meta.get("threshold")
        model.map_threshold = meta.get("map_threshold")
        model.max_false_alarm = meta.get("max_false_alarm")
        model.fit_info = meta.get("fit", {})
        return model


def _installed_tower_sha(recorded: str, engine: str) -> str:
    """The installed backbone file's sha256; on the onnx engine without the weights package, the recorded one (the
    ONNX file's own source check then ties the features to that backbone)."""
    try:
        path = towers.image_tower_file()
    except (ModelFileMissing, ImportError):
        if engine == "onnx":
            return recorded
        raise
    return file_sha256(path)


def meta_path_of(bank_path: Path) -> Path:
    return bank_path.with_suffix(".json")
