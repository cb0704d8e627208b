"""Optional LLM backend, driven by langchain-core's own fake chat model. The fake does not do tool calls by
itself (STACK-NOTES), so a small subclass adds bind_tools; with_structured_output is langchain-core's real one."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage

from agent.parser import QueryParseError, UnknownTermError, UnsupportedQueryError, format_logic, parse_instruction
from agent.parser.llm import InspectionQueryDraft, LLMParser


class ToolCallingFake(GenericFakeChatModel):
    """GenericFakeChatModel that accepts tools and remembers the prompts it was sent."""

    seen: list[Any] = []

    def bind_tools(self, tools, *, tool_choice=None, **kwargs):
        self.seen.append(("tools", [getattr(t, "__name__", t) for t in tools], tool_choice))
        return self

    def _generate(self, messages, stop=None, run_manager=None, **kwargs):
        self.seen.append(("messages", messages))
        return super()._generate(messages, stop=stop, run_manager=run_manager, **kwargs)


def _model(*drafts: dict) -> ToolCallingFake:
    msgs = [
        AIMessage(content="", tool_calls=[{"name": "InspectionQueryDraft", "args": d, "id": f"call_{i}"}])
        for i, d in enumerate(drafts)
    ]
    return ToolCallingFake(messages=iter(msgs), seen=[])


SEED = {
    "conditions": [
        {
            "id": "c1",
            "defect_class": "weld_offset",
            "constraints": [{"measure": "offset", "op": ">", "value": 0.3, "unit": "mm"}],
        },
        {"id": "c2", "defect_class": "焊渣飞溅"},
    ],
    "logic": "and(c1,c2)",
}


def test_llm_parse_matches_the_deterministic_parse_of_the_seed():
    text = "找出所有极耳焊接偏移超0.3mm且伴随焊渣飞溅的电芯"
    model = _model(SEED)
    q = LLMParser(model).parse(text)
    ref = parse_instruction(text)
    assert (q.line, q.language, format_logic(q.logic)) == (ref.line, ref.language, format_logic(ref.logic))
    assert [c.defect_class for c in q.conditions] == [c.defect_class for c in ref.conditions]
    assert [(k.measure, k.op, k.value) for k in q.conditions[0].constraints] == [
        (k.measure, k.op, k.value) for k in ref.conditions[0].constraints
    ]
    tools = [s for s in model.seen if s[0] == "tools"]
    assert tools and tools[0][1] == ["InspectionQueryDraft"] and tools[0][2] == "any"
    ((_, messages),) = [s for s in model.seen if s[0] == "messages"]
    system = messages[0].content
    for name in ("spatter", "crack", "burn", "weld_offset", "missing_weld", "焊渣飞溅"):
        assert name in system
    assert "- tab:" not in system  # parts are not offered as defects
    assert messages[-1].content == text


def test_llm_units_use_the_lines_calibration_and_scope():
    draft = {
        "conditions": [
            {
                "id": "c1",
                "defect_class": "short",
                "constraints": [{"measure": "length", "op": ">=", "value": 96, "unit": "px"}],
                "count_op": ">",
                "count_value": 2,
            }
        ],
        "logic": "c1",
        "today_only": True,
        "lot": "L9",
        "similar_cases": 3,
    }
    q = LLMParser(_model(draft), today=dt.date(2025, 1, 2)).parse("boards with more than 2 shorts of 96 px or more")
    (k,) = q.conditions[0].constraints
    assert q.line == "pcb" and k.value == pytest.approx(96 * 0.0208) and (k.raw_value, k.unit) == (96, "px")
    assert (q.conditions[0].count.op.value, q.conditions[0].count.value) == (">", 2)
    assert q.scope.date == dt.date(2025, 1, 2) and q.scope.lot == "L9" and q.want.similar_cases == 3


def test_llm_unknown_class_is_rejected_with_suggestions():
    draft = {"conditions": [{"id": "c1", "defect_class": "spatterr"}], "logic": "c1"}
    with pytest.raises(UnknownTermError) as err:
        LLMParser(_model(draft)).parse("cells with spatter")
    assert err.value.unknown == ["spatterr"] and "spatter" in err.value.suggestions_for("spatterr")


@pytest.mark.parametrize(
    "draft, error",
    [
        ({"conditions": [{"id": "c1", "defect_class": "crack"}], "logic": "and(c1,c2)"}, QueryParseError),
        ({"conditions": [{"id": "c1", "defect_class": "crack"}], "logic": "and(c1"}, QueryParseError),
        ({"conditions": [{"id": "c1", "defect_class": "tab"}], "logic": "c1"}, UnsupportedQueryError),
        (
            {
                "conditions": [
                    {
                        "id": "c1",
                        "defect_class": "crack",
                        "constraints": [{"measure": "area", "op": ">", "value": 1, "unit": "mm"}],
                    }
                ],
                "logic": "c1",
            },
            UnsupportedQueryError,
        ),
        (
            {
                "conditions": [
                    {
                        "id": "c1",
                        "defect_class": "missing_weld",
                        "constraints": [{"measure": "length", "op": ">", "value": 1, "unit": "mm"}],
                    }
                ],
                "logic": "c1",
            },
            UnsupportedQueryError,
        ),
    ],
)
def test_llm_inconsistent_answers_are_errors(draft, error):
    with pytest.raises(error):
        LLMParser(_model(draft)).parse("cells with cracks")


def test_llm_answer_without_tool_call_is_an_error():
    model = ToolCallingFake(messages=iter([AIMessage(content="I think there are cracks.")]), seen=[])
    with pytest.raises(QueryParseError, match="no query"):
        LLMParser(model).parse("cells with cracks")


def test_draft_schema_is_a_tool_schema():
    from langchain_core.utils.function_calling import convert_to_openai_tool

    tool = convert_to_openai_tool(InspectionQueryDraft)
    assert tool["function"]["name"] == "InspectionQueryDraft"
    assert "conditions" in tool["function"]["parameters"]["properties"]
