"""WinCLIP-style texture scoring of crops and whole images with the open_clip embedder.

Zero-shot part (WinCLIP, Jeong et al. 2023): the line's prompt templates x normal / defect states x object names,
in English and Chinese (`configs/lines/<line>.yaml` prompts), are embedded and averaged into one normal and one
defect text anchor; a crop's defect score is the two-way softmax of its cosines to them, with the model's learnt
logit scale: defect = sigmoid(s * (cos_defect - cos_normal)). Each defect class also gets an anchor (its
descriptions and synonyms in sentence templates, zh + en), giving class probabilities softmax(s * cos_class).

Few-shot part: prototypes are class means of L2-normalised image embeddings of example crops (the knowledge
base's cases of the line, or a support set). Image-image cosines live on another scale than image-text ones (the
modality gap), so prototypes are not mixed into the anchors; they give their own distribution and are mixed
convexly with the text one, with weight `prototype_weight`:
- classes: among the defect classes that have a prototype (at least two), q = softmax(s_p * cos_proto) re-splits
  the text probability mass of exactly those classes; class_probs = (1 - w) * text + w * re-split.
  Classes without a prototype keep their text probability.
- defect score: only when a `normal` prototype exists too (normal example crops): p_proto(defect) =
  1 - softmax(s_p * [cos_normal_proto, cos_class_protos...])[normal]; defect = (1 - w) * text + w * proto.
  Defect-only prototypes (what the knowledge base holds) cannot tell defect from normal and leave it unchanged.
`prototype_weight` and `prototype_scale` defaults were tuned on the DeepPCB train part (benchmarks/bench_fewshot.py).

Whole images: `score_image` embeds square sliding windows at two scales; each window's score is spread over its
area, overlapping windows are averaged per cell (WinCLIP's aggregation) and the image score is the maximum cell.
`calibrate_threshold` turns scores of known-normal images into a threshold for a target false-alarm rate."""

from __future__ import annotations

import logging
import math
import os
from collections import defaultdict
from collections.abc import Iterable
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

from defect_agent.config import LineConfig
from vision.detection import Box

log = logging.getLogger(__name__)

NORMAL_KEY = "normal"  # prototype key for normal (defect-free) example crops
PROTOTYPE_WEIGHT = 0.5  # tuned on the DeepPCB train part, see models/embedder/README.md
PROTOTYPE_SCALE = 50.0


class TextureScore(BaseModel):
    """Texture evidence for one crop. Raw cosines are kept so that callers can re-weight or audit."""

    defect_score: float = Field(ge=0.0, le=1.0)
    best_class: str | None
    class_probs: dict[str, float]
    normal_similarity: float  # cosine to the normal prompt ensemble
    defect_similarity: float  # cosine to the defect prompt ensemble
    class_similarities: dict[str, float]  # cosine to each class's text anchor
    prototype_similarities: dict[str, float] = Field(default_factory=dict)
    source: Literal["text", "text+prototypes"] = "text"


class WindowScore(BaseModel):
    """The texture score of one sliding window of a whole-image scan."""

    box: Box
    defect_score: float
    best_class: str | None


class ImageTextureScore(BaseModel):
    """Whole-image texture score: the maximum of the window scores averaged per cell, with every window kept."""

    defect_score: float = Field(ge=0.0, le=1.0)  # max over cells of the window-averaged score
    best_window: WindowScore
    windows: list[WindowScore]


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / max(float(np.linalg.norm(x)), 1e-12)


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _ensemble(embedder, texts: list[str]) -> np.ndarray:
    """WinCLIP / CLIP prompt ensembling: mean of the normalised text embeddings, renormalised."""
    if not texts:
        raise ValueError("empty prompt ensemble")
    return _unit(embedder.embed_texts(texts).mean(0))


def prototypes_from_examples(examples: Iterable[tuple[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Class -> normalised mean of the normalised example vectors, from (class, vector) pairs."""
    groups: dict[str, list[np.ndarray]] = defaultdict(list)
    for name, vec in examples:
        groups[name].append(_unit(vec))
    return {name: _unit(np.mean(vecs, axis=0)) for name, vecs in groups.items()}


def _cached_ensembles(embedder, groups: dict[str, list[str]]) -> dict[str, np.ndarray]:
    """Prompt ensembles, cached on disk per embedder version and exact texts: embedding a line's few hundred prompt
    texts costs seconds at every start, and their vectors only change with the texts or the model."""
    import hashlib
    import json

    from defect_agent.paths import data_dir

    version = str(getattr(embedder, "version", ""))
    key = hashlib.sha256(json.dumps([version, sorted(groups.items())], ensure_ascii=False).encode()).hexdigest()[:24]
    path = data_dir() / "cache" / "prompt_ensembles" / f"{key}.npz"
    if version and path.is_file():
        try:
            with np.load(path) as data:
                if set(data.files) == set(groups):
                    return {name: np.asarray(data[name], dtype=np.float32) for name in groups}
        except (OSError, ValueError):
            log.warning("prompt cache %s unreadable: embedding the prompts again", path)
    out = {name: _ensemble(embedder, texts) for name, texts in groups.items()}
    if version:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
            np.savez(tmp, **out)  # type: ignore[arg-type]  # numpy's stub types **kwds as allow_pickle
            tmp.replace(path)  # atomic: a concurrent reader sees the old file or the whole new one
        except OSError as exc:
            log.warning("could not cache prompt embeddings in %s: %s", path.parent, exc)
    return out


class TextureScorer:
    """Scores crops of one line as defect vs normal and by class: cosines to the line's text anchors, mixed with
    image prototypes when there are any."""

    def __init__(
        self,
        *,
        line: str,
        normal_anchor: np.ndarray,
        defect_anchor: np.ndarray,
        class_anchors: dict[str, np.ndarray],
        logit_scale: float,
        prototypes: dict[str, np.ndarray] | None = None,
        prototype_weight: float = PROTOTYPE_WEIGHT,
        prototype_scale: float = PROTOTYPE_SCALE,
        embedder=None,
        threshold: float | None = None,
    ) -> None:
        if not class_anchors:
            raise ValueError(f"line {line!r} has no defect classes to score")
        if not 0.0 <= prototype_weight <= 1.0:
            raise ValueError("prototype_weight must lie in [0, 1]")
        self.line = line
        self.normal_anchor = _unit(normal_anchor)
        self.defect_anchor = _unit(defect_anchor)
        self.class_names = list(class_anchors)
        self.class_matrix = np.stack([_unit(class_anchors[c]) for c in self.class_names])
        self.logit_scale = float(logit_scale)
        self.prototype_weight = float(prototype_weight)
        self.prototype_scale = float(prototype_scale)
        self.embedder = embedder
        self.threshold = threshold
        self.set_prototypes(prototypes)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_line(
        cls, line: LineConfig, embedder, prototypes: dict[str, np.ndarray] | None = None, **kwargs
    ) -> TextureScorer:
        """Anchors from the line's prompts (zh + en) and classes; `prototypes` class -> vector (e.g.
        `kb.class_prototypes(line)`), optionally with a `normal` entry."""
        from vision.embedder.descriptions import class_texts, state_prompts

        normal = state_prompts(line, normal=True)
        defect = state_prompts(line, normal=False)
        groups = {"normal": normal["en"] + normal["zh"], "defect": defect["en"] + defect["zh"]}
        for spec in line.classes:
            if spec.role == "defect":
                texts = class_texts(line, spec.name)
                groups[f"class:{spec.name}"] = texts["en"] + texts["zh"]
        ensembles = _cached_ensembles(embedder, groups)
        normal_anchor, defect_anchor = ensembles["normal"], ensembles["defect"]
        anchors = {name[len("class:") :]: v for name, v in ensembles.items() if name.startswith("class:")}
        kwargs.setdefault("threshold", line.texture.threshold)
        return cls(
            line=line.name,
            normal_anchor=normal_anchor,
            defect_anchor=defect_anchor,
            class_anchors=anchors,
            logit_scale=embedder.logit_scale,
            prototypes=prototypes,
            embedder=embedder,
            **kwargs,
        )

    def set_prototypes(self, prototypes: dict[str, np.ndarray] | list[tuple[str, np.ndarray]] | None) -> None:
        """Replace the few-shot prototypes: a class -> vector dict, or (class, vector) example pairs (averaged)."""
        if prototypes is not None and not isinstance(prototypes, dict):
            prototypes = prototypes_from_examples(prototypes)
        protos = {k: _unit(v) for k, v in (prototypes or {}).items()}
        unknown = [k for k in protos if k != NORMAL_KEY and k not in self.class_names]
        if unknown:
            log.warning("texture prototypes for classes not in line %s ignored: %s", self.line, unknown)
        self.proto_classes = [c for c in self.class_names if c in protos]
        self.proto_matrix = np.stack([protos[c] for c in self.proto_classes]) if self.proto_classes else None
        self.normal_proto = protos.get(NORMAL_KEY)

    @property
    def uses_prototypes(self) -> bool:
        return self.prototype_weight > 0 and (
            len(self.proto_classes) >= 2 or (self.normal_proto is not None and len(self.proto_classes) >= 1)
        )

    # ------------------------------------------------------------------ scoring
    def score_arrays(self, vectors: np.ndarray) -> dict[str, np.ndarray]:
        """Vectorised scores: defect (n,), class_probs (n, C) and the raw cosines."""
        v = np.asarray(vectors, dtype=np.float32)
        if v.ndim != 2 or v.shape[1] != self.class_matrix.shape[1]:
            raise ValueError(f"expected vectors of shape (n, {self.class_matrix.shape[1]}), got {v.shape}")
        v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
        s = self.logit_scale
        cn, cd = v @ self.normal_anchor, v @ self.defect_anchor
        defect = 1.0 / (1.0 + np.exp(-s * (cd - cn)))
        class_sim = v @ self.class_matrix.T
        probs = _softmax(s * class_sim)
        out = {"defect": defect, "class_probs": probs, "normal_sim": cn, "defect_sim": cd, "class_sim": class_sim}
        w = self.prototype_weight
        if w <= 0 or self.proto_matrix is None:
            return out
        proto_sim = v @ self.proto_matrix.T
        out["proto_sim"] = proto_sim
        idx = [self.class_names.index(c) for c in self.proto_classes]
        if len(idx) >= 2:
            mass = probs[:, idx].sum(1, keepdims=True)
            resplit = probs.copy()
            resplit[:, idx] = mass * _softmax(self.prototype_scale * proto_sim)
            out["class_probs"] = (1 - w) * probs + w * resplit
        if self.normal_proto is not None:
            normal_sim = v @ self.normal_proto
            out["normal_proto_sim"] = normal_sim
            z = self.prototype_scale * np.concatenate([normal_sim[:, None], proto_sim], axis=1)
            out["defect"] = (1 - w) * defect + w * (1.0 - _softmax(z)[:, 0])
        return out

    def score_vectors(self, vectors: np.ndarray) -> list[TextureScore]:
        """Scores of crops already embedded (one embedding pass serves texture and retrieval)."""
        a = self.score_arrays(vectors)
        source = "text+prototypes" if self.uses_prototypes else "text"
        out = []
        for i in range(len(a["defect"])):
            protos = (
                {c: float(a["proto_sim"][i, j]) for j, c in enumerate(self.proto_classes)} if "proto_sim" in a else {}
            )
            if "normal_proto_sim" in a:
                protos[NORMAL_KEY] = float(a["normal_proto_sim"][i])
            probs = a["class_probs"][i]
            out.append(
                TextureScore(
                    defect_score=float(np.clip(a["defect"][i], 0.0, 1.0)),
                    best_class=self.class_names[int(probs.argmax())],
                    class_probs={c: float(p) for c, p in zip(self.class_names, probs)},
                    normal_similarity=float(a["normal_sim"][i]),
                    defect_similarity=float(a["defect_sim"][i]),
                    class_similarities={c: float(x) for c, x in zip(self.class_names, a["class_sim"][i])},
                    prototype_similarities=protos,
                    source=source,
                )
            )
        return out

    def _need_embedder(self):
        if self.embedder is None:
            raise ValueError("this TextureScorer was built without an embedder; use score_vectors")
        return self.embedder

    def score_crops(self, crops: list[np.ndarray]) -> list[TextureScore]:
        """BGR crops (cut with vision.crops.crop_region) -> scores."""
        if not crops:
            return []
        return self.score_vectors(self._need_embedder().embed_images(crops))

    def score_image(
        self, image: np.ndarray, window_fracs: tuple[float, ...] = (0.25, 0.5), stride_frac: float = 0.5
    ) -> ImageTextureScore:
        """Whole-image texture score from square sliding windows (sides = fractions of the shorter image side,
        stride = stride_frac x side), averaged per cell where windows overlap; the maximum cell is the score."""
        boxes = sliding_windows(image.shape[1], image.shape[0], window_fracs, stride_frac)
        crops = [image[int(b.y1) : int(b.y2), int(b.x1) : int(b.x2)] for b in boxes]
        scores = self.score_crops(crops)
        windows = [
            WindowScore(box=b, defect_score=s.defect_score, best_class=s.best_class) for b, s in zip(boxes, scores)
        ]
        cell = max(4, int(min(image.shape[:2]) * min(window_fracs) * stride_frac / 2))
        gh, gw = math.ceil(image.shape[0] / cell), math.ceil(image.shape[1] / cell)
        total, count = np.zeros((gh, gw)), np.zeros((gh, gw))
        for w in windows:
            ys, ye = int(w.box.y1 // cell), max(int(math.ceil(w.box.y2 / cell)), int(w.box.y1 // cell) + 1)
            xs, xe = int(w.box.x1 // cell), max(int(math.ceil(w.box.x2 / cell)), int(w.box.x1 // cell) + 1)
            total[ys:ye, xs:xe] += w.defect_score
            count[ys:ye, xs:xe] += 1
        avg = np.where(count > 0, total / np.maximum(count, 1), 0.0)
        best = max(windows, key=lambda w: w.defect_score)
        return ImageTextureScore(defect_score=float(np.clip(avg.max(), 0.0, 1.0)), best_window=best, windows=windows)

    def is_defect(self, score: float) -> bool | None:
        """Against the calibrated threshold of the line; None when the line is not calibrated."""
        return None if self.threshold is None else score > self.threshold


def sliding_windows(
    width: int, height: int, window_fracs: tuple[float, ...] = (0.25, 0.5), stride_frac: float = 0.5
) -> list[Box]:
    """Square windows covering the image at each scale; the last row / column is flush with the border."""
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    boxes: list[Box] = []
    for frac in window_fracs:
        if not 0 < frac <= 1:
            raise ValueError(f"window fraction must lie in (0, 1], got {frac}")
        side = max(16, int(round(min(width, height) * frac)))
        stride = max(1, int(round(side * stride_frac)))
        xs = list(range(0, max(width - side, 0) + 1, stride))
        ys = list(range(0, max(height - side, 0) + 1, stride))
        if xs[-1] + side < width:
            xs.append(width - side)
        if ys[-1] + side < height:
            ys.append(height - side)
        boxes.extend(Box(x1=x, y1=y, x2=min(x + side, width), y2=min(y + side, height)) for y in ys for x in xs)
    return boxes


def calibrate_threshold(scores_of_normal_images: Iterable[float], max_false_alarm: float) -> float:
    """The smallest threshold (among the observed scores) such that at most `max_false_alarm` of the normal
    images score strictly above it: the (1 - max_false_alarm) empirical quantile, 'higher' side.
    Alarm rule: score > threshold."""
    s = np.sort(np.asarray(list(scores_of_normal_images), dtype=np.float64))
    if s.size == 0:
        raise ValueError("calibration needs scores of at least one normal image")
    if not 0.0 <= max_false_alarm < 1.0:
        raise ValueError(f"max_false_alarm must lie in [0, 1), got {max_false_alarm}")
    allowed = int(math.floor(max_false_alarm * s.size + 1e-9))  # normal images allowed above the threshold
    if max_false_alarm > 0 and s.size < math.ceil(1.0 / max_false_alarm):
        log.warning(
            "%d normal images cannot resolve a %.3g false-alarm rate (need >= %d); the threshold is the "
            "maximum normal score",
            s.size,
            max_false_alarm,
            math.ceil(1.0 / max_false_alarm),
        )
    return float(s[s.size - 1 - allowed])
