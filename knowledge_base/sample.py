"""The sample knowledge base that ships with the demo: 40 battery_tab cases (crops + engineer reports) in
`knowledge_base/sample_data/`, made by `scripts/build_sample_kb.py`, imported and embedded on first use."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from knowledge_base.case import CaseInput

log = logging.getLogger(__name__)

SAMPLE_DIR = Path(__file__).resolve().parent / "sample_data"


def sample_cases(line: str = "battery_tab") -> list[CaseInput]:
    folder = SAMPLE_DIR / line
    rows = (folder / "cases.jsonl").read_text(encoding="utf-8").splitlines()
    cases = []
    for row in rows:
        if row.strip():
            data = json.loads(row)
            data["image_path"] = str(folder / data["image_path"])
            cases.append(CaseInput.model_validate(data))
    return cases


def ensure_sample_kb(kb_dir: Path, embedder=None) -> Path:
    """Create the sample knowledge base in kb_dir unless it already holds cases; returns kb_dir."""
    from knowledge_base import KnowledgeBase

    kb_dir = Path(kb_dir)
    if embedder is None:
        from defect_agent.config import load_app_config
        from vision.embedder import load_embedder

        embedder = load_embedder(load_app_config().embedder)
    kb = KnowledgeBase.open(kb_dir, embedder=embedder)
    try:
        if kb.count() == 0:
            cases = sample_cases()
            kb.add_many(cases, progress=False)
            log.info("sample knowledge base: %d cases in %s", len(cases), kb_dir)
    finally:
        kb.close()
    return kb_dir
