"""The systemd units in deploy/: valid for systemd (`systemd-analyze verify`, with their /opt/defect-agent paths
pointed at this checkout), and saying what the code does - the nightly job's non-failure exit codes are the ones the
batch report gives for fails found and unreadable images; the station runs above the rest, the batch below it."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agent.batch.report import BatchTotals

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
UNITS = ["defect-agent-station.service", "defect-agent-nightly.service", "defect-agent-nightly.timer"]


def _unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys are case-sensitive
    parser.read(DEPLOY / name, encoding="utf-8")
    return parser


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze (systemd)")
def test_units_verify_against_this_checkout(tmp_path: Path) -> None:
    venv = Path(sys.prefix)
    for name in UNITS:
        text = (DEPLOY / name).read_text(encoding="utf-8")
        text = text.replace("/opt/defect-agent/.venv", str(venv)).replace("/opt/defect-agent", str(ROOT))
        (tmp_path / name).write_text(text, encoding="utf-8")
    done = subprocess.run(
        ["systemd-analyze", "verify", *(str(tmp_path / n) for n in UNITS)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


def test_units_say_what_the_code_does() -> None:
    station, nightly, timer = (_unit(n) for n in UNITS)
    assert int(station["Service"]["Nice"]) < 0 < int(nightly["Service"]["Nice"])
    assert station["Service"]["ExecStart"].split()[1] == "serve"
    command = nightly["Service"]["ExecStart"].split()
    assert command[1] == "batch" and (ROOT / command[command.index("--profile") + 1]).is_file()
    results = {
        BatchTotals(images=1, verdicts={"fail": 1}, unreadable=0, matches={}, classes={}).exit_code,
        BatchTotals(images=1, verdicts={"pass": 1}, unreadable=1, matches={}, classes={}).exit_code,
    }
    assert {int(c) for c in nightly["Service"]["SuccessExitStatus"].split()} == results == {1, 3}
    assert timer["Timer"]["Persistent"] == "true" and timer["Timer"]["OnCalendar"]
