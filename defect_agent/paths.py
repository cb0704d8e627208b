"""Where the project's files live: one place to resolve configs, shipped models and the working data folder."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent.parent


def project_root() -> Path:
    """Root holding `configs/` and `models/`; `DEFECT_AGENT_HOME` overrides it for installed deployments."""
    return Path(os.environ.get("DEFECT_AGENT_HOME", PACKAGE_ROOT)).resolve()


def configs_dir() -> Path:
    return project_root() / "configs"


def models_dir() -> Path:
    return project_root() / "models"


def data_dir() -> Path:
    """Writable working folder (knowledge base, generated datasets, runs); `DEFECT_AGENT_DATA` overrides it."""
    return Path(os.environ.get("DEFECT_AGENT_DATA", project_root() / "var")).resolve()


def shared_datasets_dir() -> Path | None:
    """`../shared/datasets` beside the checkout (or `DEFECT_AGENT_SHARED`), None when absent."""
    candidate = Path(os.environ.get("DEFECT_AGENT_SHARED", project_root().parent / "shared")) / "datasets"
    return candidate if candidate.is_dir() else None


def shared_dataset(name: str) -> Path | None:
    """`../shared/datasets/<name>` when it exists, else None."""
    root = shared_datasets_dir()
    return root / name if root is not None and (root / name).exists() else None


def resolve(path: str | Path) -> Path:
    """Resolve a config path: absolute stays, relative is taken from the project root."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else (project_root() / p)
