"""Test-wide setup: offline environment (sockets are blocked by pytest-socket via pyproject addopts), a private
data folder per session so tests never touch the user's var/, and helpers for the shared datasets."""

from __future__ import annotations

import importlib.util
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

_DATA = tempfile.mkdtemp(prefix="defect-agent-test-")
os.environ.setdefault("DEFECT_AGENT_DATA", _DATA)
os.environ.setdefault("DEFECT_AGENT_THREADS", "2")

from defect_agent.runtime import configure_offline  # noqa: E402

configure_offline()


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    from defect_agent.paths import shared_datasets_dir

    path = shared_datasets_dir()
    if path is None:
        pytest.skip("../shared/datasets is absent (real-data tests need it beside the checkout)")
    return path


@pytest.fixture(scope="session")
def load_benchmark() -> Callable[[str], ModuleType]:
    """Import a script of benchmarks/ by name (the folder is not a package)."""

    def load(name: str) -> ModuleType:
        path = Path(__file__).resolve().parent.parent / "benchmarks" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load
