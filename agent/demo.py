"""`defect-agent demo`: the whole pipeline on the embedded default — a generated battery_tab batch, the shipped
models and the sample knowledge base — with the seed instruction."""

from __future__ import annotations

import logging
from pathlib import Path

from pydantic import BaseModel

from agent.groundtruth import battery_tab_findings, expected_match, expected_part_verdict
from agent.report import VerdictWriter, summary_table
from defect_agent.paths import resolve

log = logging.getLogger(__name__)

SEED_INSTRUCTION_ZH = "找出所有极耳焊接偏移超0.3mm且伴随焊渣飞溅的电芯"
SEED_INSTRUCTION_EN = "find all cells whose tab weld is offset more than 0.3 mm and shows weld spatter"


class DemoResult(BaseModel):
    """What `defect-agent demo` produced and how it agrees with the generator's ground truth."""

    table: str
    verdicts_path: Path
    overlays_dir: Path
    accuracy_line: str


def run_demo(
    n: int = 24,
    seed: int = 2026,
    out: Path = Path("var/demo"),
    instruction: str = SEED_INSTRUCTION_ZH,
    kb_dir: Path | None = None,
) -> DemoResult:
    """Generate the batch, fill the knowledge base (default: the app's `kb_dir`, where `shell` and `kb` look) with
    the sample cases when it is empty, run the instruction and compare both answers with the ground truth."""
    from agent.parser import parse_instruction
    from agent.pipeline import Inspector
    from defect_agent.config import load_app_config
    from knowledge_base.sample import ensure_sample_kb
    from vision.datasets.synth.battery_tab import generate_batch, read_truth

    out = resolve(out)
    images_dir = out / "images"
    paths = generate_batch(images_dir, n=n, seed=seed)
    truths = {t.image: t for t in read_truth(images_dir / "truth.jsonl")}
    kb_path = resolve(kb_dir or load_app_config().kb_dir)
    inspector = Inspector.from_config(line="battery_tab", kb_dir=ensure_sample_kb(kb_path))
    query = parse_instruction(instruction, line="battery_tab")
    verdicts_path, overlays_dir = out / "verdicts.jsonl", out / "overlays"
    with VerdictWriter(verdicts_path, overlays=overlays_dir) as writer:
        for verdict in inspector.inspect(query, [str(p) for p in paths]):
            writer.write(verdict)
    from vision.datasets.synth.unseen import write_line_sample

    write_line_sample(out / "new_line")  # normal cells + example folders for the README's `line new` walkthrough
    line = inspector.line
    truth_findings = {v.image: battery_tab_findings(truths[Path(v.image).name], line) for v in writer.verdicts}
    agree = sum(v.matches_query == expected_match(query, truth_findings[v.image], line) for v in writer.verdicts)
    part_agree = sum(v.verdict == expected_part_verdict(truth_findings[v.image], line) for v in writer.verdicts)
    n_images = len(writer.verdicts)
    accuracy = (
        f"agreement with the generator's ground truth: instruction {agree}/{n_images} images, "
        f"part verdict {part_agree}/{n_images}; knowledge base: {kb_path}"
    )
    return DemoResult(
        table=summary_table(writer.verdicts),
        verdicts_path=verdicts_path,
        overlays_dir=overlays_dir,
        accuracy_line=accuracy,
    )
