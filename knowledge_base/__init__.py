"""Knowledge base of past defect cases (SQLite truth, content-addressed images, derived FAISS index).

`from knowledge_base import KnowledgeBase` works; the heavy modules load on first use so that importing the CLI
(which registers `defect-agent kb ...`) stays fast."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from knowledge_base.db import KnowledgeBaseCorrupt
    from knowledge_base.kb import CaseNotFound, KnowledgeBase, ModelVersionMismatch, PreparedCase
    from knowledge_base.models import CaseFilter, GcReport, HistoryEntry, ImportReport, KBStats, VerifyReport

_EXPORTS = {
    "KnowledgeBase": "knowledge_base.kb",
    "KnowledgeBaseCorrupt": "knowledge_base.db",
    "CaseNotFound": "knowledge_base.kb",
    "ModelVersionMismatch": "knowledge_base.kb",
    "PreparedCase": "knowledge_base.kb",
    "CaseFilter": "knowledge_base.models",
    "GcReport": "knowledge_base.models",
    "HistoryEntry": "knowledge_base.models",
    "ImportReport": "knowledge_base.models",
    "KBStats": "knowledge_base.models",
    "VerifyReport": "knowledge_base.models",
}

__all__ = [
    "CaseFilter",
    "CaseNotFound",
    "GcReport",
    "HistoryEntry",
    "ImportReport",
    "KBStats",
    "KnowledgeBase",
    "KnowledgeBaseCorrupt",
    "ModelVersionMismatch",
    "PreparedCase",
    "VerifyReport",
]
assert sorted(_EXPORTS) == __all__


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'knowledge_base' has no attribute {name!r}")
