"""`defect-agent parse`, registered on a fresh typer app exactly as agent/cli.py does."""

from __future__ import annotations

import json

import pytest
import typer
from typer.testing import CliRunner

from agent.parser import UnknownTermError
from agent.parser_cli import register
from agent.query import InspectionQuery


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        pass

    register(app, typer.Typer(), typer.Typer(), typer.Typer())
    return app


def test_parse_prints_clauses_logic_and_description(app):
    result = CliRunner().invoke(app, ["parse", "flag boards with an open circuit or a short longer than 2 mm"])
    assert result.exit_code == 0, result.output
    assert "line: pcb" in result.output
    assert "c2: short length > 2 mm" in result.output and "logic: or(c1,c2)" in result.output
    assert "an image matches when" in result.output


def test_parse_json_is_an_inspection_query(app):
    result = CliRunner().invoke(app, ["parse", "偏移超过12像素", "--json"])
    assert result.exit_code == 0, result.output
    q = InspectionQuery.model_validate(json.loads(result.output))
    assert q.line == "battery_tab" and q.conditions[0].constraints[0].value == pytest.approx(0.3)


def test_parse_line_option_and_errors(app):
    result = CliRunner().invoke(app, ["parse", "defects longer than 1 mm", "--line", "pcb", "--json"])
    assert json.loads(result.output)["line"] == "pcb"
    result = CliRunner().invoke(app, ["parse", "find spatterr"])
    assert result.exit_code != 0 and isinstance(result.exception, UnknownTermError)


def test_eval_parser_reports_accuracy(tmp_path):
    app = typer.Typer()
    eval_app = typer.Typer()
    app.add_typer(eval_app, name="eval")

    @app.callback()
    def _root() -> None:
        pass

    register(app, typer.Typer(), eval_app, typer.Typer())
    qs = tmp_path / "q.yaml"
    qs.write_text(
        'queries:\n  - {q: "cracks", family: class, line: battery_tab, c: ["crack"], logic: c1}\n'
        '  - {q: "burns", family: class, line: battery_tab, c: ["crack"], logic: c1}\n'
        'errors:\n  - {q: "crak", error: UnknownTermError, unknown: [crak], suggest: {crak: crack}}\n',
        encoding="utf-8",
    )
    result = CliRunner().invoke(app, ["eval", "parser", "--queries", str(qs), "--json"])
    data = json.loads(result.output)
    assert (data["passed"], data["total"]) == (2, 3) and result.exit_code == 1
    assert data["failures"][0]["q"] == "burns" and "class burn != crack" in data["failures"][0]["problems"][0]
