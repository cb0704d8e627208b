"""The inspection pipeline and its facade `Inspector`: instruction + images -> one Verdict per image.

Stages, each on its real model: parse (agent.parser) -> locate (vision.locator.model, YOLO + line adapter) -> measure
(vision.measure, mm from the line calibration) -> embed crops (vision.embedder, open_clip) -> texture score
(vision.embedder.texture) -> retrieve similar past cases (knowledge_base + FAISS) -> fuse (agent.fusion) -> decide
(agent.clauses)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from agent.acceptance import review_band
from agent.clauses import decide
from agent.fusion import FusionWeights, load_fusion
from agent.images import apply_scope, read_image
from agent.query import InspectionQuery
from agent.uncertainty import finding_uncertainty, load_measurement_uncertainty
from agent.verdict import AnomalySummary, DefectFinding, ModelVersions, Verdict
from defect_agent.config import AppConfig, LineConfig, load_app_config, load_line
from defect_agent.errors import DefectAgentError, ImageReadError
from defect_agent.paths import resolve
from retrieval.hits import SimilarCase
from vision.crops import crop_region
from vision.detection import Detection

if TYPE_CHECKING:  # vision.measure loads with the first analysis
    from vision.measure import Measured

log = logging.getLogger(__name__)
INSPECT_BATCH = 4  # images per detector call when `inspect` is given several


def case_evidence(cases: list[SimilarCase]) -> float | None:
    """Similarity-weighted share of similar past cases that engineers did not accept: evidence the defect is real."""
    weights = [max(c.similarity, 0.0) for c in cases]
    total = sum(weights)
    if not cases or total <= 0:
        return None
    return sum(w for w, c in zip(weights, cases) if c.disposition != "accept") / total


class Inspector:
    """Facade for line software: `Inspector.from_config(line="battery_tab").inspect(instruction, paths)`.

    Models load once per Inspector; an Inspector serves one product line (switch lines with another Inspector;
    adapters of one base are shared by the locator pool)."""

    def __init__(
        self,
        app: AppConfig,
        line: LineConfig,
        locator,
        embedder=None,
        texture_scorer=None,
        knowledge_base=None,
        fusion: FusionWeights | None = None,
        verifier=None,
        anomaly=None,
    ) -> None:
        self.app = app
        self.line = line
        self.locator = locator
        self.embedder = embedder
        self.texture_scorer = texture_scorer
        self.kb = knowledge_base
        self.fusion = fusion or load_fusion(line.name)
        # the line's localisation error per measurement (None until `calibrate --measurement` stored one)
        self.measure_uncertainty = load_measurement_uncertainty(line.name)
        self.verifier = verifier  # vision.verifier.model.DefectVerifier for template lines that configure one
        self.anomaly = anomaly  # agent.anomaly_stage.AnomalyStage for lines with a normal-only anomaly model
        self.kb_problem: str | None = None  # why similar cases are unavailable, said in every verdict

    @classmethod
    def from_config(
        cls,
        line: str | None = None,
        kb_dir: str | Path | None = None,
        use_embedder: bool = True,
        use_kb: bool = True,
        app: AppConfig | None = None,
        knowledge_base=None,
        single_line: bool = False,
    ) -> Inspector:
        """Load a line's models once. `knowledge_base`: an open KnowledgeBase to share (a server's), instead of
        opening `kb_dir`. `single_line`: this process serves only this line (a batch, `inspect`): a LoRA adapter is
        folded into its base instead of sharing the base with other lines."""
        from defect_agent.runtime import configure_offline, set_onnx_backend, set_threads

        configure_offline()
        app = app or load_app_config()
        set_onnx_backend(app.onnx.runtime, app.onnx.precision)
        line_cfg = load_line(line or app.default_line)
        from vision.locator.model import shared_pool

        # onnxruntime sessions keep the thread count they are built with: settle it before any model loads
        set_threads(app.threads, app.engine)
        # lines over one base share it in memory; a line with only an anomaly model has no locator
        engine = app.engine
        locator = None
        if line_cfg.locator is not None and single_line and engine == "torch" and line_cfg.locator.adapter:
            from vision.locator.model import Locator

            locator = Locator.from_line(line_cfg, fold_adapter=True)
        elif line_cfg.locator is not None:
            locator = shared_pool().locator(line_cfg, engine=engine)
        verifier = anomaly = None
        if line_cfg.locator is not None and line_cfg.locator.verifies:
            from vision.verifier.model import DefectVerifier

            verifier = DefectVerifier.for_line(line_cfg, engine=engine)
        if line_cfg.anomaly is not None:
            from agent.anomaly_stage import AnomalyStage

            anomaly = AnomalyStage.for_line(line_cfg, engine=engine)
        set_threads(app.threads, app.engine)
        embedder = scorer = kb = None
        kb_problem: str | None = None
        if use_embedder:
            from vision.embedder import load_embedder
            from vision.embedder.texture import TextureScorer

            embedder = load_embedder(app.embedder, engine=engine)
            if knowledge_base is not None:
                kb = knowledge_base
            elif use_kb:
                kb, kb_problem = _open_kb(kb_dir or app.kb_dir, embedder)
            try:
                prototypes = _kb_prototypes(kb, line_cfg)
            except Exception as exc:  # vectors of another model or a damaged store: inspect without the KB
                kb, kb_problem = None, f"knowledge base unusable ({type(exc).__name__}: {exc})"
                prototypes = None
            if any(c.role == "defect" for c in line_cfg.classes):
                scorer = TextureScorer.from_line(line_cfg, embedder, prototypes=prototypes)
            # else: a line made from normal images alone has no defect class to score a texture against yet
        inspector = cls(app, line_cfg, locator, embedder, scorer, kb, verifier=verifier, anomaly=anomaly)
        inspector.kb_problem = kb_problem if use_kb and use_embedder and knowledge_base is None else None
        return inspector

    def versions(self) -> ModelVersions:
        return ModelVersions(
            locator=getattr(self.locator, "version", None),
            adapter=getattr(self.locator, "adapter_version", None),
            embedder=getattr(self.embedder, "version", None),
            verifier=getattr(self.verifier, "version", None),
            kb_snapshot=_kb_snapshot(self.kb),
            anomaly=self._anomaly_version(),
        )

    def _anomaly_version(self) -> str | None:
        if self.anomaly is None:
            return None
        # unembedded faint regions change verdicts: a batch resumed with the other setting must not reuse them
        quiet = self.line.anomaly is not None and not self.line.anomaly.embed_faint
        return f"{self.anomaly.version}|faint-unembedded" if quiet else self.anomaly.version

    def parse(self, instruction: str) -> InspectionQuery:
        from agent.parser import parse_instruction

        return parse_instruction(instruction, line=self.line.name)

    def inspect(
        self,
        instruction: str | InspectionQuery,
        images: Iterable[str],
        k: int | None = None,
        lang: str | None = None,
    ) -> Iterator[Verdict]:
        """One verdict per image, in order. Unreadable images yield a 'review' verdict with `error` set. Reasons are
        in `lang` (`zh` / `en`; default: the instruction's language)."""
        query = self.parse(instruction) if isinstance(instruction, str) else instruction
        if query.line != self.line.name:
            raise DefectAgentError(
                f"the instruction is about line {query.line!r} but this inspector serves {self.line.name!r}: "
                f"pass --line {query.line}"
            )
        paths = apply_scope(list(images), query.scope)
        if self.uses_template and self.line.reference is not None:
            from vision.reference import drop_references

            paths = drop_references(paths, self.line.reference)
        versions = self.versions()
        for start in range(0, len(paths), INSPECT_BATCH):
            for verdicts in self.inspect_batch([query], paths[start : start + INSPECT_BATCH], versions, k=k, lang=lang):
                yield verdicts[0]

    def inspect_image(
        self,
        query: InspectionQuery,
        path: str,
        versions: ModelVersions | None = None,
        k: int | None = None,
        lang: str | None = None,
    ) -> Verdict:
        """The verdict of one image file (an unreadable one gets `review` with `error` set)."""
        return self.inspect_image_many([query], path, versions, k=k, lang=lang)[0]

    def inspect_image_many(
        self,
        queries: list[InspectionQuery],
        path: str,
        versions: ModelVersions | None = None,
        k: int | None = None,
        lang: str | None = None,
        image: np.ndarray | None = None,
    ) -> list[Verdict]:
        """One verdict per instruction for one image, analysed once (locate, measure, embed, retrieve, fuse are
        query-independent); only the decision runs per instruction. `image`: already decoded (a batch's prefetch)."""
        return self.inspect_batch(queries, [path], versions, k=k, lang=lang, images=[image])[0]

    def inspect_batch(
        self,
        queries: list[InspectionQuery],
        paths: list[str],
        versions: ModelVersions | None = None,
        k: int | None = None,
        lang: str | None = None,
        images: list[np.ndarray | None] | None = None,
    ) -> list[list[Verdict]]:
        """`inspect_image_many` over several images, the detector called once for all of them: one list of
        verdicts, one per instruction, per image. Stage times in each verdict's `timings_ms` are the batch's divided
        by its images (`batch` says how many)."""
        from agent.messages import pick_lang, say

        versions = versions or self.versions()
        given = images if images is not None else [None] * len(paths)
        out: list[list[Verdict] | None] = [None] * len(paths)
        ok: list[int] = []
        pixels: list[np.ndarray] = []
        inputs: list[np.ndarray] = []
        t0 = time.perf_counter()
        for i, (path, image) in enumerate(zip(paths, given)):
            try:
                image = read_image(path, self.line.image_size) if image is None else image
                inputs.append(self.locator_input(path, image))
            except DefectAgentError as exc:
                log.warning("%s", exc)
                out[i] = [
                    Verdict(
                        image=path,
                        line=self.line.name,
                        verdict="review",
                        verdict_reasons=[say("not_inspected", pick_lang(lang or q.language), error=exc)],
                        matches_query=False,
                        score=0.0,
                        query_reasons=[],
                        query=q,
                        models=versions,
                        error=str(exc),
                    )
                    for q in queries
                ]
                continue
            ok.append(i)
            pixels.append(image)
        if not ok:
            return [v for v in out if v is not None]
        timings: dict[str, float] = {"read": _ms(t0)}
        want = max((q.want.similar_cases or 0 for q in queries), default=0)
        analysed = self.analyse_batch(pixels, inputs, timings, k=k or want or self.app.retrieval.k)
        per_image = {key: val / len(ok) for key, val in timings.items()}
        if len(ok) > 1:
            per_image["batch"] = float(len(ok))
        for i, (findings, summary) in zip(ok, analysed):
            out[i] = self._decide_all(queries, paths[i], findings, summary, versions, lang, dict(per_image))
        return [v for v in out if v is not None]

    def _decide_all(
        self,
        queries: list[InspectionQuery],
        path: str,
        findings: list[DefectFinding],
        summary: AnomalySummary | None,
        versions: ModelVersions,
        lang: str | None,
        timings: dict[str, float],
    ) -> list[Verdict]:
        verdicts = []
        analysed_ms = sum(v for key, v in timings.items() if key != "batch")
        for query in queries:
            t = time.perf_counter()
            own = [f.model_copy(deep=True) for f in findings] if len(queries) > 1 else findings
            decision = decide(query, own, self.line, self.app.fusion, lang=lang)
            timings["decide"] = _ms(t)
            timings["total"] = analysed_ms + timings["decide"]
            verdicts.append(
                Verdict(
                    image=path,
                    line=self.line.name,
                    verdict=decision.verdict,
                    verdict_reasons=decision.verdict_reasons,
                    matches_query=decision.matches_query,
                    match_uncertain=decision.match_uncertain,
                    score=round(decision.score, 4),
                    query_reasons=decision.query_reasons,
                    clauses=decision.clauses,
                    defects=own,
                    query=query,
                    models=versions,
                    anomaly=summary,
                    timings_ms={k_: round(v, 1) for k_, v in timings.items()},
                    notes=[self.kb_problem] if self.kb_problem else [],
                )
            )
        return verdicts

    @property
    def uses_template(self) -> bool:
        """The line's locator reads (image, reference, difference) composites: every part needs its reference image."""
        return self.line.locator is not None and self.line.locator.reference == "template"

    def locator_input(self, path: str, image: np.ndarray) -> np.ndarray:
        """What the locator sees: the image itself, or for template lines its composite with the part's reference
        image, found by the line's `reference:` rule. A missing reference is an ImageReadError."""
        if not self.uses_template or self.line.reference is None:
            return image
        from vision.reference import describe_rule, find_reference, reference_composite

        reference = find_reference(path, self.line.reference)
        if reference is None:
            raise ImageReadError(
                f"line {self.line.name!r} compares every image with its reference, and {path} has none: expected "
                f"{describe_rule(self.line.reference)} (the line's `reference:` rule)"
            )
        return reference_composite(image, read_image(reference, self.line.image_size))

    def locate(self, locator_input: np.ndarray, timings: dict[str, float] | None = None) -> list[Detection]:
        """The detector on what it sees (`locator_input`), then the class verifier where the line has one (which
        re-reads every box down to `locator.proposal_conf`)."""
        return self.locate_batch([locator_input], timings)[0]

    def locate_batch(
        self, locator_inputs: list[np.ndarray], timings: dict[str, float] | None = None
    ) -> list[list[Detection]]:
        """`locate` over several images: one detector call for all of them, the verifier per image."""
        timings = timings if timings is not None else {}
        if self.locator is None or self.line.locator is None:
            return [[] for _ in locator_inputs]  # a line inspected by its anomaly model alone
        verifying = self.verifier is not None and self.uses_template
        t = time.perf_counter()
        conf = self.line.locator.detector_conf if verifying else None
        detections = self.locator.predict(list(locator_inputs), conf=conf)
        timings["locate"] = _ms(t)
        if verifying:
            t = time.perf_counter()
            detections = [
                self.verifier.verify(seen, found) if found else found for seen, found in zip(locator_inputs, detections)
            ]
            timings["verify"] = _ms(t)
        return detections

    def analyse(
        self,
        image: np.ndarray,
        timings: dict[str, float] | None = None,
        k: int = 5,
        locator_input: np.ndarray | None = None,
        anomaly_out: dict[str, AnomalySummary] | None = None,
    ) -> list[DefectFinding]:
        """Locate, measure, run the anomaly model, embed, score texture, retrieve and fuse: the query-independent
        part of an inspection. `locator_input` (default: the image) is what the detector sees; crops and
        measurements use the image. `anomaly_out["image"]` receives the image's anomaly summary, where the line
        has an anomaly model."""
        seen = image if locator_input is None else locator_input
        findings, summary = self.analyse_batch([image], [seen], timings, k=k)[0]
        if anomaly_out is not None and summary is not None:
            anomaly_out["image"] = summary
        return findings

    def analyse_batch(
        self,
        images: list[np.ndarray],
        locator_inputs: list[np.ndarray],
        timings: dict[str, float] | None = None,
        k: int = 5,
    ) -> list[tuple[list[DefectFinding], AnomalySummary | None]]:
        """`analyse` over several images: one detector call, the anomaly model per image, the embedder over the
        batch's crops (in its own chunks); per image its findings and its anomaly summary (None on a line without an
        anomaly model). `timings` receives the batch's stage times."""
        from vision.measure import measure_findings

        timings = timings if timings is not None else {}
        detections = self.locate_batch(locator_inputs, timings)
        t = time.perf_counter()
        measured = [
            measure_findings(image, found, self.line, box_margin_px=self.fusion.box_margin_px)
            for image, found in zip(images, detections)
        ]
        timings["measure"] = _ms(t)
        summaries: list[AnomalySummary | None] = [None] * len(images)
        if self.anomaly is not None:
            t = time.perf_counter()
            for i, (summary, regions) in enumerate(self.anomaly.run_batch(images, measured)):
                summaries[i] = summary
                measured[i] = [*measured[i], *regions]
            timings["anomaly"] = _ms(t)
        # per finding its vector and texture score; None where it is not embedded
        vectors: list[list[Any]] = [[None] * len(own) for own in measured]
        textures: list[list[Any]] = [[None] * len(own) for own in measured]
        wanted = [(i, j) for i, own in enumerate(measured) for j, m in enumerate(own) if self._embeds(m)]
        if self.embedder is not None and wanted:
            t = time.perf_counter()
            flat = self.embedder.embed_images([crop_region(images[i], measured[i][j].box) for i, j in wanted])
            timings["embed"] = _ms(t)
            scored = self.texture_scorer.score_vectors(flat) if self.texture_scorer is not None else None
            for row, (i, j) in enumerate(wanted):
                vectors[i][j] = flat[row]
                textures[i][j] = scored[row] if scored is not None else None
        t = time.perf_counter()
        out = [(self._fuse(own, vectors[i], textures[i], k), summaries[i]) for i, own in enumerate(measured)]
        timings["retrieve_fuse"] = _ms(t)
        return out

    def _embeds(self, m: Measured) -> bool:
        """Whether a finding's crop is embedded: all are, but a faint anomaly region (below the review band on its
        own) on a line whose `anomaly.embed_faint` is off."""
        if m.source != "anomaly" or self.line.anomaly is None or self.line.anomaly.embed_faint:
            return True
        return m.confidence >= review_band(self.line, self.app.fusion)[0]

    def _fuse(self, measured: list, vectors: list[Any], textures: list[Any], k: int) -> list[DefectFinding]:
        findings: list[DefectFinding] = []
        for i, m in enumerate(measured):
            similar = self._similar(vectors[i], k) if vectors[i] is not None else []
            texture = textures[i].defect_score if textures[i] is not None else None
            evidence = case_evidence(similar)
            defect_class, alternatives = m.defect_class, m.alternatives
            if m.source == "anomaly" and self.anomaly is not None:
                named, alternatives, probability, evidence = self.anomaly.name_and_fuse(m.confidence, similar)
                defect_class = named or defect_class
            else:
                probability = self.fusion.fuse(m.confidence, texture, evidence, m.verifier_score)
            findings.append(
                DefectFinding(
                    defect_class=defect_class,
                    box=m.box,
                    source=m.source,
                    confidence=round(m.confidence, 4),
                    texture_score=None if texture is None else round(texture, 4),
                    case_evidence=None if evidence is None else round(evidence, 4),
                    verifier_score=None if m.verifier_score is None else round(m.verifier_score, 4),
                    detector_class=m.detector_class,
                    alternatives=alternatives,
                    probability=round(probability, 4),
                    measurements={key: round(val, 4) for key, val in m.measurements.items()},
                    # the stored spread was estimated on located boxes, not on anomaly-map regions
                    uncertainty=finding_uncertainty(
                        defect_class,
                        m.measurements,
                        self.line,
                        self.measure_uncertainty if m.source != "anomaly" else None,
                    ),
                    similar_cases=similar,
                )
            )
        return findings

    def _similar(self, vector: np.ndarray, k: int) -> list[SimilarCase]:
        if self.kb is None or k <= 0:
            return []
        try:
            return self.kb.search_by_vector(vector, k=k, line=self.line.name)
        except Exception as exc:  # a corrupt index: the verdict goes on without cases and says why
            self.kb_problem = (
                f"similar cases unavailable ({type(exc).__name__}: {exc}); run `defect-agent kb verify`, then "
                "`kb rebuild` or restore a backup"
            )
            log.warning("%s", self.kb_problem)
            self.kb = None
            return []


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000.0


def _open_kb(kb_dir: str | Path, embedder) -> tuple[Any, str | None]:
    """The knowledge base, or None and why not (a damaged one must not stop inspection)."""
    from knowledge_base import KnowledgeBase

    path = resolve(kb_dir)
    if not path.exists():
        problem = f"no knowledge base at {path} (create one with `defect-agent kb add` or `make demo`)"
        log.warning("%s: verdicts will carry no similar cases", problem)
        return None, problem
    try:
        return KnowledgeBase.open(path, embedder=embedder), None
    except Exception as exc:
        problem = (
            f"knowledge base at {path} cannot be used ({type(exc).__name__}: {exc}); run `defect-agent kb verify`, "
            "then `kb rebuild` or restore a backup"
        )
        log.warning("%s", problem)
        return None, problem


def _kb_prototypes(kb, line: LineConfig) -> dict[str, np.ndarray] | None:
    """The knowledge base's class prototypes for the texture scorer, less the line's derived defects: those are
    measured, not seen in a texture, though their cases are kept (and retrieved) like any other."""
    if kb is None:
        return None
    derived = {d.name for d in line.derived}
    protos = {name: vector for name, vector in kb.class_prototypes(line=line.name).items() if name not in derived}
    return protos or None


def _kb_snapshot(kb) -> str | None:
    if kb is None:
        return None
    return kb.snapshot_id()
