"""What a batch inspects: folders (recursive), glob patterns and manifests (.txt one path a line, .csv with a
`path` or `image` column, .jsonl with a `path` or `image` field), expanded in a stable order; only regular files."""

from __future__ import annotations

import csv
import glob
import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

from agent.images import IMAGE_SUFFIXES
from defect_agent.errors import EmptyInput

log = logging.getLogger(__name__)
MANIFEST_SUFFIXES = {".txt", ".csv", ".jsonl"}


def _manifest(path: Path) -> Iterator[Path]:
    base = path.parent
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise EmptyInput(f"manifest {path} is not UTF-8 text: {exc}") from exc
    if path.suffix == ".txt":
        entries = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    elif path.suffix == ".csv":
        rows = list(csv.DictReader(text.splitlines()))
        column = next((c for c in ("path", "image") if rows and c in rows[0]), None)
        if column is None:
            raise EmptyInput(f"manifest {path}: needs a `path` or `image` column")
        entries = [r[column].strip() for r in rows if (r.get(column) or "").strip()]
    else:
        entries = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise EmptyInput(f"manifest {path}:{n}: not JSON: {exc}") from exc
            value = row.get("path") or row.get("image") if isinstance(row, dict) else None
            if not value:
                raise EmptyInput(f"manifest {path}:{n}: needs a `path` or `image` field")
            entries.append(str(value))
    for entry in entries:
        p = Path(entry)
        yield p if p.is_absolute() else base / p


def expand_inputs(inputs: Sequence[str | Path]) -> list[str]:
    """Every image path the inputs name, deduplicated, in a stable order. Paths a manifest lists but that are
    missing stay in the list: the batch reports them as bad items instead of forgetting them."""
    found: list[str] = []
    for item in inputs:
        text = str(item)
        path = Path(text)
        if path.is_dir():
            found.extend(sorted(str(p) for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()))
        elif path.is_file() and path.suffix.lower() in MANIFEST_SUFFIXES:
            found.extend(str(p) for p in _manifest(path))
        elif path.is_file():
            found.append(text)
        elif any(ch in text for ch in "*?["):
            found.extend(
                sorted(
                    p
                    for p in glob.glob(text, recursive=True)
                    if Path(p).suffix.lower() in IMAGE_SUFFIXES and Path(p).is_file()
                )
            )
        else:
            raise EmptyInput(f"no such file, folder, manifest or pattern: {text}")
    unique = list(dict.fromkeys(found))
    if not unique:
        raise EmptyInput("the inputs hold no images (folders, globs or manifests)")
    return unique
