"""Second-stage class verification for lines with golden templates (pcb).

The detector sees a 320-px composite, where a 20-px pin-hole and a mouse-bite of the same size differ by a few
pixels of context, so on DeepPCB most of its misses are boxes in the right place with the wrong class (pin-hole
called mouse-bite, short called spur). The class is a question of topology the template answers at full
resolution: missing copper inside a trace (pin-hole), at its edge (mouse-bite) or through it (open); extra copper
joining two traces (short), sticking out of one (spur) or on its own (copper). So every detected box is re-read
here, as a full-resolution crop of (test, template, signed difference), by a small CNN trained on the line's
annotated boxes (jittered the way detector boxes are off), on the locator's own detections (positives and hard
negatives) and on background crops. It returns a class distribution that relabels the box and becomes one more
fusion feature (agent.fusion), and four offsets that move the box onto the defect: the detector's boxes come from a
320-px view, a few native pixels off, which on a 30-px defect is the difference between IoU 0.45 and 0.6."""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import cv2
import numpy as np
from pydantic import BaseModel

from defect_agent.errors import ConfigError, ImageReadError
from vision.detection import Box, Detection

if TYPE_CHECKING:
    import onnxruntime

    from defect_agent.config import LineConfig
    from vision.locator.onnx_engine import Engine

log = logging.getLogger(__name__)

BACKGROUND = "background"


class VerifierMeta(BaseModel):
    """What a verifier file was trained for; stored beside its weights (<name>.json)."""

    classes: list[str]  # the line's defect classes in detector order; BACKGROUND is the extra last output
    crop: int = 48
    widths: list[int] = [16, 32, 64, 96]  # channels of the four conv blocks
    context: float = 0.75  # margin around the box on each side, as a share of its longer side
    min_side: int = 40  # native pixels: the smallest square a crop covers
    channels: int = 3
    trained_on: str = ""
    train_seconds: float | None = None
    val_accuracy: float | None = None
    val_confusion: list[list[int]] | None = None  # [annotated][verifier output] on the validation crops
    # four more outputs: the true box's offset from the input box (centre in crop sides, sides as log ratios),
    # scaled by BOX_SCALE; files written before the head existed load with False
    box_regression: bool = False
    val_box_iou: float | None = None  # mean IoU with the annotation of jittered validation boxes after refinement
    val_box_iou_before: float | None = None
    # the most a refinement may scale a side, as a log ratio; files trained on pieces of long defects
    # (train_verifier's partial_share) learn to double a side
    max_log_scale: float = 0.5
    partial_share: float = 0.0


def verifier_channels(composite: np.ndarray) -> np.ndarray:
    """(test, binarised template, signed difference) from the locator's reference composite (vision.datasets.deeppcb:
    B = test, G = binarised template). The sign says whether copper is missing (< 128) or extra (> 128), which the
    composite's |difference| channel cannot."""
    if composite.ndim != 3 or composite.shape[2] != 3:
        raise ImageReadError(f"expected a (test, template, |difference|) composite, got shape {composite.shape}")
    test = composite[:, :, 0].astype(np.int16)
    ref = composite[:, :, 1].astype(np.int16)
    signed = np.clip(128 + (test - ref) // 2, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(np.stack([composite[:, :, 0], composite[:, :, 1], signed], axis=2))


BOX_SCALE = (0.1, 0.1, 0.2, 0.2)  # regression targets divided by these (R-CNN style) so all four are O(1)


def crop_side(box: Box, meta: VerifierMeta) -> float:
    """Native pixels covered by the square crop of `box`."""
    return max(max(box.width, box.height) * (1.0 + 2.0 * meta.context), float(meta.min_side))


def encode_box(source: Box, target: Box, meta: VerifierMeta) -> np.ndarray:
    """Where `target` lies relative to `source`, in the units of source's crop (what the box head predicts)."""
    side = crop_side(source, meta)
    (sx, sy), (tx, ty) = source.center, target.center
    raw = (
        (tx - sx) / side,
        (ty - sy) / side,
        math.log(max(target.width, 1.0) / max(source.width, 1.0)),
        math.log(max(target.height, 1.0) / max(source.height, 1.0)),
    )
    return np.array([r / s for r, s in zip(raw, BOX_SCALE)], np.float32)


def decode_box(source: Box, deltas: Sequence[float], meta: VerifierMeta) -> Box:
    side = crop_side(source, meta)
    dx, dy, dw, dh = (float(d) * s for d, s in zip(deltas, BOX_SCALE))
    cx, cy = source.center
    cx, cy = cx + dx * side, cy + dy * side
    # a refinement is a correction, not a new box: at most a factor e^max_log_scale per side
    limit = meta.max_log_scale
    w = max(source.width, 1.0) * math.exp(float(np.clip(dw, -limit, limit)))
    h = max(source.height, 1.0) * math.exp(float(np.clip(dh, -limit, limit)))
    return Box(x1=cx - w / 2, y1=cy - h / 2, x2=cx + w / 2, y2=cy + h / 2)


def crop_box(channels: np.ndarray, box: Box, meta: VerifierMeta) -> np.ndarray:
    """A square crop centred on the box, `context` of its longer side added on every side, resized to meta.crop;
    outside the image is bare board (0)."""
    cx, cy = box.center
    side = crop_side(box, meta)
    half = side / 2.0
    x1, y1 = int(round(cx - half)), int(round(cy - half))
    s = max(2, int(round(side)))
    h, w = channels.shape[:2]
    pad = ((max(0, -y1), max(0, y1 + s - h)), (max(0, -x1), max(0, x1 + s - w)))
    patch = channels[max(0, y1) : min(h, y1 + s), max(0, x1) : min(w, x1 + s)]
    (top, bottom), (left, right) = pad
    if top or bottom or left or right:  # bare board, template bare, no difference
        patch = cv2.copyMakeBorder(patch, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(0, 0, 128))
    return cv2.resize(patch, (meta.crop, meta.crop), interpolation=cv2.INTER_AREA)


def _net(n_out: int, channels: int = 3, widths: Sequence[int] = (16, 32, 64, 96)):
    import torch.nn as nn

    def block(cin: int, cout: int) -> list:
        return [
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        ]

    a, b, c, d = widths
    return nn.Sequential(
        *block(channels, a),
        nn.MaxPool2d(2),
        *block(a, b),
        nn.MaxPool2d(2),
        *block(b, c),
        nn.MaxPool2d(2),
        *block(c, d),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(0.2),
        nn.Linear(d, n_out),
    )


def _to_tensor(crops: Sequence[np.ndarray]):
    import torch

    arr = np.stack(crops).astype(np.float32) / 255.0
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


@dataclass(frozen=True)
class VerifierReading:
    """What the verifier reads in a list of boxes."""

    probabilities: np.ndarray  # (boxes, classes + 1): softmax over the defect classes and background
    boxes: list[Box]  # refined by the box head; the input boxes where the file has none


class DefectVerifier:
    """Class distribution (and, with a box head, a refined box) for detected boxes, from full-resolution crops.
    Load with `from_file`. `tta`: average the eight rotations / flips of every crop, as the training augments."""

    def __init__(
        self,
        model,
        meta: VerifierMeta,
        version: str = "unsaved",
        relabel_min: float = 0.5,
        nms_iou: float = 0.5,
        tta: bool = False,
        alternative_min: float = 0.05,
        union_min: float | None = None,
        demote: float | None = None,
    ) -> None:
        self.model = model.eval()
        self.meta = meta
        self.version = version
        self.relabel_min = relabel_min
        self.nms_iou = nms_iou
        self.tta = tta
        self.alternative_min = alternative_min
        self.union_min = union_min
        self.demote = demote

    @property
    def outputs(self) -> list[str]:
        return [*self.meta.classes, BACKGROUND]

    @classmethod
    def from_file(
        cls,
        path: str | Path,
        relabel_min: float = 0.5,
        nms_iou: float = 0.5,
        tta: bool = False,
        alternative_min: float = 0.05,
        union_min: float | None = None,
        demote: float | None = None,
    ) -> DefectVerifier:
        from safetensors.torch import load_file

        from defect_agent.files import file_sha256, verify_model_file

        path = Path(path)
        meta_path = path.with_suffix(".json")
        for p in (path, meta_path):
            if not p.is_file():
                raise ConfigError(f"verifier file not found: {p} (train one with `defect-agent train verifier`)")
            # safetensors and JSON run no code; the manifest catches a swapped or edited shipped verifier
            verify_model_file(p)
        try:
            meta = VerifierMeta.model_validate_json(meta_path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise ConfigError(f"cannot read verifier metadata {meta_path}: {exc}") from exc
        model = _net(_n_outputs(meta), meta.channels, meta.widths)
        try:
            model.load_state_dict(load_file(str(path)))
        except Exception as exc:  # a truncated or foreign file: say which
            raise ConfigError(f"cannot load verifier weights {path}: {exc}") from exc
        return cls(
            model,
            meta,
            f"{path.name}@{file_sha256(path)[:12]}",
            relabel_min=relabel_min,
            nms_iou=nms_iou,
            tta=tta,
            alternative_min=alternative_min,
            union_min=union_min,
            demote=demote,
        )

    @classmethod
    def from_onnx(
        cls,
        path: str | Path,
        threads: int | None = None,
        relabel_min: float = 0.5,
        nms_iou: float = 0.5,
        tta: bool = False,
        alternative_min: float = 0.05,
        union_min: float | None = None,
        demote: float | None = None,
    ) -> DefectVerifier:
        """A verifier exported by `export_verifier_onnx`, its network run by onnxruntime (`OnnxVerifierNet`);
        crops, TTA, box decoding and merging stay the torch verifier's. Version: `<source>|onnx@<sha12>`."""
        from vision.locator.onnx_engine import onnx_version
        from vision.onnx_session import open_session, our_metadata

        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"ONNX verifier not found: {path} (defect-agent export --line <line> --format onnx)")
        session = open_session(path, threads)
        recorded = our_metadata(session)
        try:
            meta = VerifierMeta.model_validate_json(recorded["verifier_meta"])
        except (KeyError, ValueError) as exc:
            raise ConfigError(f"{path} lacks the verifier metadata of an export: {exc}") from exc
        return cls(
            OnnxVerifierNet(session),
            meta,
            f"{recorded.get('source')}|{onnx_version(path)}",
            relabel_min=relabel_min,
            nms_iou=nms_iou,
            tta=tta,
            alternative_min=alternative_min,
            union_min=union_min,
            demote=demote,
        )

    @classmethod
    def for_line(
        cls,
        line: LineConfig,
        *,
        engine: Engine = "torch",
        onnx_dir: str | Path | None = None,
        threads: int | None = None,
    ) -> DefectVerifier:
        """The line's `locator.verifier`, checked against the line's defect classes.

        `engine="onnx"`: `<onnx_dir>/verifier.onnx` (default var/onnx/<line>; `defect-agent export --line L --format
        onnx`) run by onnxruntime with `threads` intra-op threads, checked against the verifier file it came from
        where that file is on this PC."""
        from defect_agent.paths import resolve
        from vision.locator.onnx_engine import check_engine

        if not line.detector.verifier:
            raise ConfigError(f"line {line.name!r} has no locator.verifier in configs/lines/{line.name}.yaml")
        if check_engine(engine) == "onnx":
            verifier = cls._onnx_for_line(line, onnx_dir, threads)
        else:
            verifier = cls.from_file(resolve(line.detector.verifier), **_line_options(line))
        defects = [c.name for c in line.classes if c.role == "defect"]
        if sorted(verifier.meta.classes) != sorted(defects):
            raise ConfigError(
                f"{line.detector.verifier} was trained for classes {verifier.meta.classes}, line "
                f"{line.name!r} has {defects}: retrain it with `defect-agent train verifier --line "
                f"{line.name}`"
            )
        return verifier

    @classmethod
    def _onnx_for_line(cls, line: LineConfig, onnx_dir: str | Path | None, threads: int | None) -> DefectVerifier:
        from defect_agent.files import file_sha256
        from defect_agent.paths import resolve
        from vision.locator.onnx_engine import VERIFIER_FILE, check_source, default_onnx_dir, require_file

        folder = resolve(onnx_dir) if onnx_dir is not None else default_onnx_dir(line.name)
        path = require_file(folder / VERIFIER_FILE, line.name, "ONNX verifier")
        verifier = cls.from_onnx(path, threads=threads, **_line_options(line))
        source = resolve(line.detector.verifier or "")
        current = f"{source.name}@{file_sha256(source)[:12]}" if source.is_file() else None
        check_source(verifier.version.split("|")[0], current, path, line.name)
        return verifier

    def save(self, path: str | Path) -> Path:
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        from defect_agent.files import record_model

        save_file({k: v.contiguous() for k, v in self.model.state_dict().items()}, str(path))
        path.with_suffix(".json").write_text(self.meta.model_dump_json(indent=2), encoding="utf-8")
        for written in (path, path.with_suffix(".json")):
            record_model(written)  # training into models/ accepts the new files in models/MANIFEST.json
        return path

    def read(self, composite: np.ndarray, boxes: Sequence[Box]) -> VerifierReading:
        """Class probabilities and refined boxes for `boxes` on one reference composite."""
        if not boxes:
            return VerifierReading(probabilities=np.zeros((0, len(self.outputs)), np.float32), boxes=[])
        return self.read_channels(verifier_channels(composite), boxes)

    def read_channels(self, channels: np.ndarray, boxes: Sequence[Box]) -> VerifierReading:
        """`read` on an image already turned into `verifier_channels`."""
        if not boxes:
            return VerifierReading(probabilities=np.zeros((0, len(self.outputs)), np.float32), boxes=[])
        crops = [crop_box(channels, b, self.meta) for b in boxes]
        if isinstance(self.model, OnnxVerifierNet):
            probs, deltas = self._read_numpy(crops)
        else:
            probs, deltas = self._read_torch(crops)
        if deltas is None:
            return VerifierReading(probabilities=probs, boxes=list(boxes))
        h, w = channels.shape[:2]
        return VerifierReading(
            probabilities=probs, boxes=[decode_box(b, d, self.meta).clip(w, h) for b, d in zip(boxes, deltas)]
        )

    def _read_torch(self, crops: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
        """Class probabilities and box offsets averaged over the views (eight with `tta`)."""
        import torch

        x = _to_tensor(crops)
        n = len(self.outputs)
        views = range(8) if self.tta else range(1)
        prob_sum: float | torch.Tensor = 0.0
        delta_sum: float | torch.Tensor = 0.0
        with torch.inference_mode():
            for k in views:
                out = self.model(_dihedral(x, k))
                prob_sum = prob_sum + torch.softmax(out[:, :n], dim=1)
                if self.meta.box_regression:
                    delta_sum = delta_sum + undo_dihedral_deltas(out[:, n:], k)
        # at least one view ran, so the sums are tensors
        probs = cast("torch.Tensor", prob_sum / len(views)).numpy()
        if not self.meta.box_regression:
            return probs, None
        return probs, cast("torch.Tensor", delta_sum / len(views)).numpy()

    def _read_numpy(self, crops: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
        """`_read_torch` for the ONNX network, in numpy: the onnx engine never imports torch."""
        model = cast(OnnxVerifierNet, self.model)
        x = np.stack(crops).astype(np.float32).transpose(0, 3, 1, 2) / 255.0
        n = len(self.outputs)
        views = range(8) if self.tta else range(1)
        prob_sum = np.zeros((len(crops), n), np.float32)
        delta_sum = np.zeros((len(crops), 4), np.float32)
        for k in views:
            out = model.run(_dihedral_np(x, k))
            logits = out[:, :n] - out[:, :n].max(axis=1, keepdims=True)
            e = np.exp(logits)
            prob_sum += e / e.sum(axis=1, keepdims=True)
            if self.meta.box_regression:
                delta_sum += _undo_dihedral_deltas_np(out[:, n:], k)
        probs = prob_sum / len(views)
        return probs, (delta_sum / len(views) if self.meta.box_regression else None)

    def probabilities(self, composite: np.ndarray, boxes: Sequence[Box]) -> np.ndarray:
        """(len(boxes), classes + 1) softmax over the line's defect classes and background."""
        return self.read(composite, boxes).probabilities

    def verify(self, composite: np.ndarray, detections: list[Detection], candidates: bool = False) -> list[Detection]:
        """Each detection relabelled to the verifier's most likely defect class where that class holds at least
        `relabel_min`, its `verifier_score` set to the verifier's probability of the class it ends with, the other
        classes holding at least `alternative_min` kept as its `alternatives`, its box replaced by the box head's
        refinement where the file has one; then boxes that became the same class in the same place are merged
        (`_merge_same_class`). `candidates` (scoring a ranked list, vision.verifier.eval): the boxes those merges
        dropped stay, their confidence times the file's `demote` (None: dropped); findings never hold them."""
        reading = self.read(composite, [d.box for d in detections])
        n = len(self.meta.classes)
        out: list[Detection] = []
        for det, p, box in zip(detections, reading.probabilities, reading.boxes):
            best = int(np.argmax(p[:n]))
            name = det.defect_class
            if (
                det.defect_class in self.meta.classes
                and best != self.meta.classes.index(det.defect_class)
                and p[best] >= self.relabel_min
            ):
                name = self.meta.classes[best]
            k = self.meta.classes.index(name) if name in self.meta.classes else -1
            score = float(p[k]) if k >= 0 else None
            alternatives = {
                c: round(float(p[j]), 4)
                for j, c in enumerate(self.meta.classes)
                if j != k and p[j] >= self.alternative_min
            }
            out.append(
                det.model_copy(
                    update={
                        "defect_class": name,
                        "class_id": k if k >= 0 else det.class_id,
                        "verifier_score": score,
                        "detector_class": det.detector_class
                        or (det.defect_class if name != det.defect_class else None),
                        "box": box,
                        "alternatives": alternatives,
                    }
                )
            )
        return _merge_same_class(
            sorted(out, key=lambda d: -d.confidence),
            self.nms_iou,
            union_min=self.union_min,
            demote=self.demote if candidates else None,
        )


def _line_options(line: LineConfig) -> dict[str, Any]:
    """How the line's config has its verifier read boxes (either engine)."""
    cfg = line.detector
    return {
        "relabel_min": cfg.verifier_relabel_min,
        "tta": cfg.verifier_tta,
        "union_min": cfg.verifier_union_min,
        "demote": cfg.verifier_demote,
    }


class OnnxVerifierNet:
    """The verifier's CNN + box head as an onnxruntime session, called like the torch module it was exported from
    (a float (N, C, S, S) tensor in, the (N, outputs) logits tensor out), so `DefectVerifier.read_channels` and its
    eight-view TTA run unchanged around it."""

    def __init__(self, session: onnxruntime.InferenceSession) -> None:
        self.session = session
        self.input_name = session.get_inputs()[0].name

    def eval(self) -> OnnxVerifierNet:
        return self

    def run(self, x: np.ndarray) -> np.ndarray:
        """float32 (N, C, S, S) crops -> (N, outputs) logits."""
        (logits,) = self.session.run(None, {self.input_name: np.ascontiguousarray(x, dtype=np.float32)})
        return logits

    def __call__(self, x):
        import torch

        return torch.from_numpy(self.run(x.numpy()))

    def state_dict(self) -> dict:
        raise ConfigError("an ONNX verifier has no torch weights to save: save the torch verifier it came from")


def export_verifier_onnx(verifier: DefectVerifier, target: str | Path, line: str | None = None) -> Path:
    """Write the verifier's network (CNN + box head) as ONNX with a dynamic batch (torch.onnx's TorchScript
    exporter, as ultralytics uses), its `VerifierMeta` and source version in the file's metadata."""
    import copy

    import torch

    from vision.locator.onnx_engine import replace_atomically, stamp_metadata, writable_target

    if isinstance(verifier.model, OnnxVerifierNet):
        raise ConfigError("export the torch verifier (engine='torch'), not an ONNX one")
    target = writable_target(Path(target))
    tmp = target.with_name(f".{target.stem}.tmp{target.suffix}")
    model = copy.deepcopy(verifier.model).eval()
    dummy = torch.zeros(1, verifier.meta.channels, verifier.meta.crop, verifier.meta.crop)
    with warnings.catch_warnings():  # TorchScript exporter: deprecated, not removed (below)
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (dummy,),
            str(tmp),
            input_names=["crops"],
            output_names=["logits"],
            dynamic_axes={"crops": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=17,
            dynamo=False,  # the TorchScript exporter: the dynamo one needs onnxscript, which is not pinned
        )
    stamp_metadata(
        tmp,
        {
            "kind": "verifier",
            "line": line or "",
            "source": verifier.version,
            "verifier_meta": verifier.meta.model_dump_json(),
            "torch": torch.__version__,
        },
    )
    return replace_atomically(tmp, target)


def export_line_verifier(line: LineConfig, out_dir: str | Path) -> Path:
    """`<out_dir>/verifier.onnx` from the line's `locator.verifier`."""
    from vision.locator.onnx_engine import VERIFIER_FILE

    return export_verifier_onnx(DefectVerifier.for_line(line), Path(out_dir) / VERIFIER_FILE, line=line.name)


def _n_outputs(meta: VerifierMeta) -> int:
    return len(meta.classes) + 1 + (4 if meta.box_regression else 0)


def verified_score(detection: Detection) -> float:
    """One ranking score for a verified detection: the geometric mean of the detector's confidence and the
    verifier's probability of its class (the detector's confidence alone where the verifier did not run). Two
    independent readings of the same box; the product of their square roots ranks boxes that both agree on
    above boxes that only one is sure of."""
    if detection.verifier_score is None:
        return detection.confidence
    return math.sqrt(detection.confidence * detection.verifier_score)


def expand_alternatives(detections: Sequence[Detection]) -> list[Detection]:
    """Each detection, plus one detection per alternative class scored by `verified_score` with that class's
    probability: the multi-label reading ultralytics' validator also scores (its NMS keeps every class above the
    threshold), for mAP; the agent's findings use the primary class only."""
    out: list[Detection] = []
    for d in detections:
        out.append(d.model_copy(update={"confidence": verified_score(d)}))
        for name, p in d.alternatives.items():
            alternative = d.model_copy(update={"defect_class": name, "verifier_score": p, "alternatives": {}})
            out.append(alternative.model_copy(update={"confidence": verified_score(alternative)}))
    return sorted(out, key=lambda d: -d.confidence)


def _merge_same_class(
    dets: list[Detection],
    iou: float,
    contained: float = 0.8,
    enlarge: float = 0.8,
    union_min: float | None = None,
    demote: float | None = None,
) -> list[Detection]:
    """Most confident first, a box of the same class as a kept one is dropped when it overlaps it by `iou`
    (NMS), or when one of the two lies within the other (`contained` of the smaller box's area): the detector cuts
    a long short or open into a whole and a part, and counting both would count one defect twice. Where the
    dropped box is the larger and nearly as confident (`enlarge` of the kept one's confidence), the kept box takes
    its extent: the whole, not the part. `union_min`: two overlapping boxes of the same class that both hold at
    least this `verified_score` are one defect region (a cluster of pin-holes, a ragged copper patch: one
    annotation where the detector sees pieces), and the kept box becomes their union. `demote` (Soft-NMS for the
    whole / part and union rules, not for plain overlap): the box those rules drop, or the extent they replace,
    stays as a `ranked_only` candidate with its confidence times `demote`: never counted, but still in the ranked
    list a mAP scores when the rule chose the wrong one of the two (models/locator/pcb_verifier.md)."""
    kept: list[Detection] = []
    demoted: list[Detection] = []

    def keep_as_candidate(det: Detection, box: Box | None = None) -> None:
        if demote is not None:
            demoted.append(
                det.model_copy(
                    update={
                        "confidence": det.confidence * demote,
                        "ranked_only": True,
                        "box": box if box is not None else det.box,
                    }
                )
            )

    for d in dets:
        for i, k in enumerate(kept):
            if k.defect_class != d.defect_class:
                continue
            if k.box.iou(d.box) >= iou:
                break
            if _inside_share(k.box, d.box) >= contained:
                if d.box.area > k.box.area and d.confidence >= enlarge * k.confidence:
                    kept[i] = k.model_copy(update={"box": d.box})
                    keep_as_candidate(d, k.box)
                else:
                    keep_as_candidate(d)
                break
            if (
                union_min is not None
                and k.box.intersection(d.box) > 0
                and min(verified_score(k), verified_score(d)) >= union_min
            ):
                kept[i] = k.model_copy(update={"box": _union(k.box, d.box)})
                keep_as_candidate(k)
                break
        else:
            kept.append(d)
    return sorted(kept + demoted, key=lambda d: -d.confidence) if demoted else kept


def _union(a: Box, b: Box) -> Box:
    return Box(x1=min(a.x1, b.x1), y1=min(a.y1, b.y1), x2=max(a.x2, b.x2), y2=max(a.y2, b.y2))


def _inside_share(a: Box, b: Box) -> float:
    """Intersection over the smaller box's area."""
    smaller = min(a.area, b.area)
    return a.intersection(b) / smaller if smaller > 0 else 0.0


# --- training -------------------------------------------------------------------------------------------------


def _dihedral(x, k: int):
    """The k-th of the eight rotations / flips of a (N, C, H, W) batch of square crops."""
    import torch

    x = torch.rot90(x, k % 4, dims=(2, 3))
    return torch.flip(x, dims=(3,)) if k >= 4 else x


def _dihedral_np(x: np.ndarray, k: int) -> np.ndarray:
    """`_dihedral` for a numpy batch (np.rot90 turns the same way as torch.rot90 over the same axes)."""
    x = np.rot90(x, k % 4, axes=(2, 3))
    return np.ascontiguousarray(np.flip(x, axis=3) if k >= 4 else x)


def _undo_dihedral_deltas_np(d: np.ndarray, k: int) -> np.ndarray:
    """`undo_dihedral_deltas` for numpy offsets."""
    if k >= 4:
        d = d * np.asarray([-1.0, 1.0, 1.0, 1.0], dtype=d.dtype)
    for _ in range((4 - k % 4) % 4):
        d = np.stack([d[:, 1], -d[:, 0], d[:, 3], d[:, 2]], axis=1)
    return d


def _rot_deltas(d, times: int):
    """Box offsets (N, 4: dx, dy, dw, dh) as seen after `times` torch.rot90 turns of the crop (dims 2 -> 3): a
    point at (x, y) from the centre moves to (y, -x), width and height swap."""
    import torch

    for _ in range(times % 4):
        d = torch.stack([d[:, 1], -d[:, 0], d[:, 3], d[:, 2]], dim=1)
    return d


def dihedral_deltas(d, k: int):
    """Box offsets for a crop transformed by `_dihedral(x, k)`."""
    d = _rot_deltas(d, k % 4)
    return d * d.new_tensor([-1.0, 1.0, 1.0, 1.0]) if k >= 4 else d


def undo_dihedral_deltas(d, k: int):
    """Box offsets read on `_dihedral(x, k)` back in the crop's own orientation."""
    if k >= 4:
        d = d * d.new_tensor([-1.0, 1.0, 1.0, 1.0])
    return _rot_deltas(d, (4 - k % 4) % 4)
