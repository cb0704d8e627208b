"""Every command the README prints runs as printed after `make demo`.

The README's ```bash and ```python blocks are read; in a scratch copy of the project (its own `var/`, the real
configs, models and virtual environment linked in) the demo runs first, as `make demo` would, then every cheap
command runs exactly as printed and must exit 0. Commands that train or need hours (train, data, calibrate, eval,
export) are checked against their `--help`: the subcommand exists and takes every option the README gives it."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
VENV = Path(sys.prefix)  # the virtual environment running the tests (CI: the clone's .venv)
EXPENSIVE = {"train", "data", "calibrate", "eval", "export"}
MAKE_TARGETS = {"demo", "test", "lint", "test-all", "system-deps"}
# documented exit codes that are answers, not failures: `batch` exits 1 when a part failed (the demo's cells do)
ANSWER_CODES = {"batch": {0, 1}}


def readme_blocks(kind: str) -> list[str]:
    return re.findall(rf"```{kind}\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def readme_commands() -> list[str]:
    commands = []
    for block in readme_blocks("bash"):
        for raw in block.splitlines():
            line = raw.strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """A scratch project root after `make demo`: models / .venv linked, `configs/` and `var/` its own."""
    home = tmp_path_factory.mktemp("readme")
    shutil.copytree(ROOT / "configs", home / "configs")  # `line new` writes a line config: never into the real one
    (home / "models").symlink_to(ROOT / "models")
    (home / ".venv").symlink_to(VENV)
    result = run("./.venv/bin/defect-agent demo", home)
    assert result.returncode == 0, result.stdout + result.stderr
    return home


def env_for(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEFECT_AGENT")}
    env.update(DEFECT_AGENT_HOME=str(home), COLUMNS="200", PYTHONPATH=str(ROOT))
    return env


def run(command: str, home: Path, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", command], cwd=home, env=env_for(home), capture_output=True, text=True, timeout=timeout
    )


def test_the_readme_is_a_manual_of_at_most_250_lines():
    assert len(README.read_text(encoding="utf-8").splitlines()) <= 250


def test_the_readme_prints_commands_for_every_user():
    commands = readme_commands()
    assert "make demo" in " ".join(commands) and "make test" in " ".join(commands)
    for verb in ("inspect", "kb add", "kb search", "kb verify", "explain"):
        assert any(f"defect-agent {verb}" in c for c in commands), verb


def _split(command: str) -> list[str]:
    return shlex.split(command.split(" #")[0])


def test_every_cheap_readme_command_runs_as_printed(home):
    ran, failures = [], []
    for command in readme_commands():
        words = _split(command)
        if words[0] == "make":
            assert words[1] in MAKE_TARGETS, command
            continue
        assert words[0] == ".venv/bin/defect-agent", f"README command does not use the project's venv: {command}"
        if words[1] in EXPENSIVE:
            continue
        result = run(command, home)
        ran.append(command)
        if result.returncode not in ANSWER_CODES.get(words[1], {0}):
            failures.append(f"{command}\n  exit {result.returncode}: {(result.stderr or result.stdout)[-600:]}")
    assert ran, "no README command ran"
    assert not failures, "\n".join(failures)


def test_expensive_readme_commands_exist_with_their_options(home):
    for command in readme_commands():
        words = _split(command)
        if words[0] == "make" or words[1] not in EXPENSIVE:
            continue
        path = [w for w in words[1:3] if not w.startswith("-")][: 2 if words[1] in {"train", "data", "eval"} else 1]
        result = run(shlex.join([".venv/bin/defect-agent", *path, "--help"]), home, timeout=120)
        assert result.returncode == 0, f"{command}: {result.stderr[-400:]}"
        for option in (w.split("=")[0] for w in words if w.startswith("--")):
            assert option in result.stdout, f"{command}: {option} is not an option of {' '.join(path)}"


def test_the_readme_python_example_runs(home):
    for block in readme_blocks("python"):
        result = run(f".venv/bin/python -c {shlex.quote(block)}", home)
        assert result.returncode == 0, result.stderr[-800:]
        assert result.stdout.strip(), "the example printed nothing"
