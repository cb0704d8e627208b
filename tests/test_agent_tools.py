"""The stage tools (langchain-core StructuredTools) on the real models of the battery_tab line: schemas an LLM can
call, and results that agree with the planted ground truth."""

from __future__ import annotations

import cv2
import pytest

from agent.plan import build_plan
from defect_agent.errors import DefectAgentError
from vision.datasets.synth.battery_tab import BatteryTabParams, generate_battery_tab


@pytest.fixture(scope="module")
def tools(tmp_path_factory):
    from agent.pipeline import Inspector
    from agent.tools import inspection_tools
    from knowledge_base.sample import ensure_sample_kb

    kb_dir = ensure_sample_kb(tmp_path_factory.mktemp("kb") / "kb")
    return {t.name: t for t in inspection_tools(Inspector.from_config(line="battery_tab", kb_dir=kb_dir))}


@pytest.fixture(scope="module")
def cell(tmp_path_factory):
    params = BatteryTabParams(
        force_offset_mm=0.5, force_spatter=True, force_crack=False, force_burn=False, force_missing_weld=False
    )
    image, truth = generate_battery_tab(52_001, params)
    path = tmp_path_factory.mktemp("cell") / "cell.png"
    cv2.imwrite(str(path), image)
    return str(path), truth


def test_tool_names_are_the_plan_steps_and_schemas_are_json(tools):
    steps = {s.tool for s in build_plan("find cells with weld spatter").steps}
    assert set(tools) <= steps
    for tool in tools.values():
        schema = tool.args_schema.model_json_schema()
        assert schema["type"] == "object" and "image" in schema["properties"], tool.name
    assert tools["retrieve"].args_schema.model_json_schema()["properties"]["k"]["maximum"] == 100


def test_locate_and_measure_find_the_planted_defects(tools, cell):
    path, truth = cell
    found = tools["locate"].invoke({"image": path})
    assert {"tab", "weld", "spatter"} <= {d["defect_class"] for d in found}
    measured = tools["measure"].invoke({"image": path})
    offsets = [m["measurements"]["offset_mm"] for m in measured if m["defect_class"] == "weld_offset"]
    assert offsets and offsets[0] == pytest.approx(truth.offset_mm, abs=0.05)


def test_embed_and_retrieve_a_spatter_region(tools, cell):
    path, truth = cell
    box = truth.boxes("spatter")[0]
    emb = tools["embed"].invoke({"image": path, "box": box.model_dump()})
    assert emb["dim"] == len(emb["vector"]) > 0 and 0.0 <= emb["texture"]["defect_score"] <= 1.0
    hits = tools["retrieve"].invoke({"image": path, "box": box.model_dump(), "k": 3})
    assert len(hits) == 3 and all(h["disposition"] in {"scrap", "rework", "accept"} for h in hits)
    assert hits[0]["similarity"] >= hits[-1]["similarity"]
    by_text = tools["retrieve"].invoke({"text": "spatter beads around the weld", "k": 5})
    assert by_text and by_text[0]["defect_class"] == "spatter"


def test_bad_tool_calls_are_refused(tools, cell, tmp_path):
    with pytest.raises(DefectAgentError, match="exactly one"):
        tools["retrieve"].invoke({"image": cell[0], "text": "spatter"})
    missing = tmp_path / "nope.png"
    with pytest.raises(DefectAgentError, match="nope.png"):
        tools["locate"].invoke({"image": str(missing)})
    with pytest.raises(Exception, match="k"):
        tools["retrieve"].invoke({"text": "crack", "k": 0})
