"""The anomaly stage of an inspection: the line's normal-only model (vision.anomaly) -> regions -> findings.

On a line without a detector its regions are the findings; beside a detector only the regions no defect box explains
become findings (of the line's anomaly class), so that a defect the detector was never trained on reaches a person.
Regions are cut from `candidate_ratio` x the calibrated map threshold up: a faint region stays below the review band
on its own, and only similar defect examples in the knowledge base can lift it (`name_and_fuse`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from agent.fusion import logit, sigmoid
from agent.verdict import AnomalySummary
from defect_agent.config import AnomalyLineConfig, LineConfig
from defect_agent.errors import ConfigError
from defect_agent.paths import resolve
from retrieval.hits import SimilarCase
from vision.detection import Box
from vision.measure import Measured


def _overlap(region: Box, box: Box) -> float:
    """Share of `region`'s area that lies inside `box`."""
    w = max(0.0, min(region.x2, box.x2) - max(region.x1, box.x1))
    h = max(0.0, min(region.y2, box.y2) - max(region.y1, box.y1))
    area = max((region.x2 - region.x1) * (region.y2 - region.y1), 1e-9)
    return w * h / area


class AnomalyStage:
    """The line's anomaly model with the line's settings: `run(image, detections)` -> (summary, region findings)."""

    def __init__(self, model, line: LineConfig) -> None:
        if line.anomaly is None:
            raise ConfigError(f"line {line.name!r} has no `anomaly:` model")
        self.model = model  # vision.anomaly.AnomalyModel
        self.line = line
        self.cfg: AnomalyLineConfig = line.anomaly
        self.threshold = self.cfg.threshold if self.cfg.threshold is not None else model.threshold
        self.map_threshold = self.cfg.map_threshold if self.cfg.map_threshold is not None else model.map_threshold
        if self.threshold is None or self.map_threshold is None:
            raise ConfigError(
                f"the anomaly model of line {line.name!r} ({self.cfg.model}) is not calibrated: refit it with "
                f"`defect-agent line refit {line.name}` or set anomaly.threshold and anomaly.map_threshold"
            )
        self.defect_classes = {c.name for c in line.classes if c.role == "defect"}
        self.explaining_classes = self.defect_classes | {d.name for d in line.derived}

    @classmethod
    def for_line(
        cls, line: LineConfig, engine: str = "torch", onnx_dir: str | Path | None = None, threads: int | None = None
    ) -> AnomalyStage:
        """Load the model file the line names (ModelFileMissing / ModelFileRejected name the file). `engine="onnx"`:
        its patch features from `<onnx_dir>/anomaly_features.onnx` (default var/onnx/<line>; `defect-agent export
        --line L --format onnx`), scored without torch."""
        from vision.anomaly import AnomalyModel

        if line.anomaly is None:
            raise ConfigError(f"line {line.name!r} has no `anomaly:` model")
        if engine != "onnx":
            return cls(AnomalyModel.load(resolve(line.anomaly.model)), line)
        from vision.anomaly.onnx_features import FEATURES_FILE
        from vision.locator.onnx_engine import default_onnx_dir, require_file

        folder = resolve(onnx_dir) if onnx_dir is not None else default_onnx_dir(line.name)
        features = require_file(folder / FEATURES_FILE, line.name, "ONNX anomaly features")
        model = AnomalyModel.load(resolve(line.anomaly.model), engine="onnx", onnx_file=features, threads=threads)
        return cls(model, line)

    @property
    def version(self) -> str:
        return str(self.model.version)

    def confidence(self, peak: float) -> float:
        """`threshold_confidence` at the calibrated map threshold, rising with the peak's ratio to it."""
        return sigmoid(self.cfg.steepness * (peak / self.map_threshold - 1.0) + logit(self.cfg.threshold_confidence))

    def run(self, image: np.ndarray, measured: list[Measured]) -> tuple[AnomalySummary, list[Measured]]:
        """Score the image; its regions that no defect finding (detected or derived, e.g. a weld offset) explains,
        as findings of the anomaly class."""
        return self.run_batch([image], [measured])[0]

    def run_batch(
        self, images: list[np.ndarray], measured: list[list[Measured]]
    ) -> list[tuple[AnomalySummary, list[Measured]]]:
        """`run` over several images. One backbone pass per image: on this project's 2-core CPU a batched pass cost
        more per image than single ones (the batch job: 4.3 vs 5.8 images/s, benchmarks/bench_batch.py)."""
        results = [self.model.score(image) for image in images]
        return [self._summarise(result, own) for result, own in zip(results, measured)]

    def _summarise(self, result, measured: list[Measured]) -> tuple[AnomalySummary, list[Measured]]:
        summary = AnomalySummary(
            score=round(result.score, 5),
            threshold=round(float(self.threshold), 5),
            anomalous=bool(result.score > self.threshold),
            peak=round(result.peak, 5),
            map_threshold=round(float(self.map_threshold), 5),
        )
        explaining = [m.box for m in measured if m.present and m.defect_class in self.explaining_classes]
        regions = self.model.regions(
            result,
            mm_per_px=self.line.calibration.mm_per_px,
            min_area_px=self.cfg.min_region_px,
            threshold=self.cfg.candidate_ratio * self.map_threshold,
        )
        label = self.line.anomaly_class or "anomaly"
        findings: list[Measured] = []
        for region in regions:
            if any(_overlap(region.box, box) >= self.cfg.detector_overlap for box in explaining):
                continue
            findings.append(
                Measured(
                    defect_class=label,
                    box=region.box,
                    source="anomaly",
                    confidence=round(self.confidence(region.peak), 6),
                    measurements=dict(region.measurements),
                )
            )
            if len(findings) >= self.cfg.max_regions:
                break
        return summary, findings

    def name_and_fuse(
        self, confidence: float, similar: list[SimilarCase]
    ) -> tuple[str | None, dict[str, float], float, float | None]:
        """From a region's similar knowledge-base cases: the defect class it is named after (None: it stays the
        anomaly class), the best similarity per defect class, its probability moved by the close cases (similarity
        >= `case_min_similarity`: defect examples push it up, normal ones - disposition `accept` - down) and their
        evidence (the similarity-weighted share of close cases that are defects; None without close cases).

        Only close cases count: the nearest cases of a region unlike every example are still returned by a k-NN
        search, and counting them would turn every region into the one class the base happens to hold."""
        close = [c for c in similar if c.similarity >= self.cfg.case_min_similarity]
        best: dict[str, float] = {}
        votes: dict[str, float] = {}
        for case in close:
            if case.disposition == "accept" or case.defect_class not in self.defect_classes:
                continue
            best[case.defect_class] = max(best.get(case.defect_class, -1.0), case.similarity)
            votes[case.defect_class] = votes.get(case.defect_class, 0.0) + case.similarity
        name = max(votes, key=lambda c: votes[c]) if votes else None
        total = sum(c.similarity for c in close)
        z = logit(confidence)
        evidence = None
        if close and total > 0:
            evidence = sum(c.similarity for c in close if c.disposition != "accept") / total
            cap = self.cfg.evidence_cap
            z += self.cfg.evidence_weight * logit(min(max(evidence, 1.0 - cap), cap))
        return name, {c: round(s, 4) for c, s in best.items()}, sigmoid(z), evidence
