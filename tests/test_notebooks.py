"""The notebooks run top to bottom on the shipped models (their code cells, in order, in one namespace)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, capsys):
    nb = json.loads(path.read_text(encoding="utf-8"))
    assert nb["nbformat"] == 4
    namespace: dict = {"__name__": "__notebook__"}
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code, f"{path.name} has no code cells"
    for i, cell in enumerate(code):
        exec(compile("".join(cell["source"]), f"{path.name}[{i}]", "exec"), namespace)
    assert capsys.readouterr().out.strip()
    if path.name == "quickstart.ipynb":
        verdicts = namespace["verdicts"]
        assert len(verdicts) == 6 and {v.verdict for v in verdicts} <= {"pass", "fail", "review"}


def test_there_is_a_notebook():
    assert NOTEBOOKS
