"""End-to-end evaluation of instructions on data with ground truth."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from agent.clauses import decide
from agent.groundtruth import battery_tab_findings, expected_match, precision_recall
from defect_agent.paths import resolve


class QueryScore(BaseModel):
    instruction: str
    precision: float
    recall: float
    returned: int
    expected: int
    review: int  # images sent to review (counted as returned when matches_query)


class QueryEvalReport(BaseModel):
    line: str
    images: int
    seed: int
    rows: list[QueryScore]


def evaluate_battery_tab(instructions: list[str], n: int, seed: int, out: Path, use_kb: bool = True) -> QueryEvalReport:
    from agent.parser import parse_instruction
    from agent.pipeline import Inspector
    from vision.synth.battery_tab import generate_batch, read_truth

    out = resolve(out)
    paths = [str(p) for p in generate_batch(out / "images", n=n, seed=seed)]
    truths = {t.image: t for t in read_truth(out / "images" / "truth.jsonl")}
    kb_dir = None
    if use_kb:
        from knowledge_base.sample import ensure_sample_kb

        kb_dir = ensure_sample_kb(out / "kb")
    inspector = Inspector.from_config(line="battery_tab", kb_dir=kb_dir, use_kb=use_kb)
    findings_by_image = None
    rows: list[QueryScore] = []
    for instruction in instructions:
        query = parse_instruction(instruction, line="battery_tab")
        if findings_by_image is None:  # the query-independent part runs once; each instruction re-decides
            findings_by_image = {p: inspector.analyse(_read(p, inspector)) for p in paths}
        returned, expected, review = set(), set(), 0
        for p in paths:
            d = decide(query, [f.model_copy(deep=True) for f in findings_by_image[p]], inspector.line, inspector.app.fusion)
            if d.matches_query:
                returned.add(p)
            review += d.verdict == "review"
            if expected_match(query, battery_tab_findings(truths[Path(p).name], inspector.line), inspector.line):
                expected.add(p)
        precision, recall = precision_recall(returned, expected)
        rows.append(QueryScore(instruction=instruction, precision=precision, recall=recall, returned=len(returned),
                               expected=len(expected), review=review))
    return QueryEvalReport(line="battery_tab", images=n, seed=seed, rows=rows)


def _read(path: str, inspector):
    from agent.images import read_image

    return read_image(path, inspector.line.image_size)
