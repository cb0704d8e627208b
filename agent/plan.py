"""The tool plan for a query: which stages run, with which models and settings, and what each clause needs.
`defect-agent explain` prints it without loading any model."""

from __future__ import annotations

from pydantic import BaseModel

from agent.clauses import clause_label
from agent.query import InspectionQuery
from defect_agent.config import load_app_config, load_line


class PlanStep(BaseModel):
    """One stage of the plan: the tool (agent.tools names its tools after these steps), why it runs, and its
    settings."""

    tool: str
    purpose: str
    args: dict[str, object]


class Plan(BaseModel):
    """A parsed query and the stages that would answer it; `render` is what `defect-agent explain` prints."""

    query: InspectionQuery
    steps: list[PlanStep]

    def render(self) -> str:
        q = self.query
        lines = [f"instruction: {q.instruction}", f"line: {q.line}   language: {q.language}", "clauses:"]
        lines += [f"  {c.id}: {clause_label(c)}" for c in q.conditions]
        lines.append(f"logic: {q.logic.describe()}")
        if q.scope.date or q.scope.folder or q.scope.lot:
            lines.append(f"scope: {q.scope.model_dump(exclude_none=True)}")
        lines.append("plan:")
        for i, s in enumerate(self.steps, 1):
            lines.append(f"  {i}. {s.tool}: {s.purpose}  {s.args}")
        return "\n".join(lines)


def build_plan(instruction: str | InspectionQuery, line: str | None = None) -> Plan:
    from agent.parser import parse_instruction

    query = parse_instruction(instruction, line=line) if isinstance(instruction, str) else instruction
    app = load_app_config()
    cfg = load_line(query.line)
    wanted = {c.defect_class for c in query.conditions}
    measures = sorted({k.measure for c in query.conditions for k in c.constraints if k.measure != "confidence"})
    derived = [d.name for d in cfg.derived if d.name in wanted or None in wanted]
    steps = [
        PlanStep(
            tool="load_images",
            purpose="read images, check the calibrated size, apply the scope",
            args={"expected_size": cfg.image_size, "scope": query.scope.model_dump(exclude_none=True)},
        ),
    ]
    if cfg.locator is not None:
        det = cfg.locator
        steps.append(
            PlanStep(
                tool="locate",
                purpose="YOLO detector of the line (base + LoRA adapter when configured)",
                args={
                    "weights": (det.base or det.weights) if det.adapter else det.weights,
                    "adapter": det.adapter,
                    "reference": det.reference,
                    "conf": det.detector_conf,
                    "imgsz": det.imgsz,
                    "classes": sorted(x for x in wanted if x),
                },
            )
        )
        if det.verifies:
            steps.append(
                PlanStep(
                    tool="verify_classes",
                    purpose="re-read every box at full resolution against the "
                    "template; relabel it, refine its extent, merge boxes that became one",
                    args={
                        "weights": det.verifier,
                        "relabel_min": det.verifier_relabel_min,
                        "tta": det.verifier_tta,
                        "union_min": det.verifier_union_min,
                    },
                )
            )
    if cfg.anomaly is not None:
        steps.append(
            PlanStep(
                tool="anomaly_regions",
                purpose="normal-only anomaly model: image score, anomaly map, regions above the calibrated threshold "
                + ("(the findings of this line)" if cfg.locator is None else "that no detector box explains"),
                args={"model": cfg.anomaly.model, "unexplained": "review" if cfg.locator is not None else "reject"},
            )
        )
    steps += [
        PlanStep(
            tool="measure",
            purpose="sizes in mm from the calibration; derived defects from located parts",
            args={"mm_per_px": cfg.calibration.mm_per_px, "measures": measures, "derived": derived},
        ),
        PlanStep(
            tool="embed",
            purpose="open_clip crops -> vectors; texture score against prompt ensembles",
            args={"model": app.embedder.model, "weights": app.embedder.pretrained},
        ),
        PlanStep(
            tool="retrieve",
            purpose="similar past cases of this line from the knowledge base (FAISS)",
            args={"k": query.want.similar_cases or app.retrieval.k, "kb": app.kb_dir, "line": query.line},
        ),
        PlanStep(
            tool="fuse_and_decide",
            purpose="fused probability per defect; clauses; pass / review / fail",
            args={
                "logic": query.logic.describe(),
                "review_band": list(app.fusion.review_band),
                "min_confidence": query.min_confidence,
            },
        ),
    ]
    return Plan(query=query, steps=steps)
