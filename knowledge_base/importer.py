"""Bulk import of cases from a CSV file, a JSONL file, or a folder holding `cases.csv` / `cases.jsonl` beside its
images. Bad rows are reported with their line numbers; the good rows go in, in ONE transaction (all or none of them).

Columns / keys (aliases in brackets):
    image [image_path]           image file; relative paths are taken from the file's folder      (required)
    line                         product line                                                      (required)
    defect_class [class]         defect class                                                      (required)
    disposition                  scrap | rework | accept                                           (required)
    box                          "x1,y1,x2,y2" in pixels (JSONL: also a list or {x1,y1,x2,y2}); empty = whole image
    x1, y1, x2, y2               the box as four columns instead
    report, root_cause [cause], corrective_action [action], author
    measurements                 JSON object, e.g. {"offset_mm": 0.41}
    created_at                   ISO-8601 date/time of the original case (default: now)
    vector, model_version        JSONL only (as written by `kb export --with-vectors`): used instead of embedding
                                 when model_version matches the knowledge base's embedder
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from defect_agent.errors import DefectAgentError
from knowledge_base.case import CaseInput
from knowledge_base.models import ImportReport, RowError, to_utc
from vision.detection import Box

log = logging.getLogger(__name__)

ALIASES = {"image_path": "image", "class": "defect_class", "cause": "root_cause", "action": "corrective_action"}
SIDECARS = ("cases.csv", "cases.jsonl")


@dataclass
class SourceRow:
    """One parsed row of an import file: its line number, the case, and its optional vector, embedder
    version and creation time."""

    row: int
    case: CaseInput
    vector: list[float] | None = None
    model_version: str | None = None
    created_at: datetime | None = None


def _norm_keys(obj: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in obj.items():
        if key is None:
            raise ValueError("more values than header columns")
        name = str(key).strip().lower().replace(" ", "_").replace("-", "_")
        out[ALIASES.get(name, name)] = value.strip() if isinstance(value, str) else value
    return out


def parse_box(value: Any) -> Box | None:
    if value is None or value == "" or (isinstance(value, str) and value.lower() in {"none", "full"}):
        return None
    if isinstance(value, dict):
        return Box(**value)
    if isinstance(value, str):
        parts = [p for p in value.replace(";", ",").replace(" ", ",").split(",") if p]
    else:
        parts = list(value)
    if len(parts) != 4:
        raise ValueError(f"box needs 4 numbers x1,y1,x2,y2, got {value!r}")
    x1, y1, x2, y2 = (float(p) for p in parts)
    return Box(x1=x1, y1=y1, x2=x2, y2=y2)


def _to_row(obj: dict[str, Any], base: Path, row: int) -> SourceRow:
    obj = _norm_keys(obj)
    missing = [k for k in ("image", "line", "defect_class", "disposition") if not obj.get(k)]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    box_cols = [obj.get(k) for k in ("x1", "y1", "x2", "y2")]
    box = (
        parse_box(obj.get("box"))
        if obj.get("box") not in (None, "")
        else (parse_box(box_cols) if all(v not in (None, "") for v in box_cols) else None)
    )
    measurements = obj.get("measurements") or {}
    if isinstance(measurements, str):
        try:
            measurements = json.loads(measurements)
        except json.JSONDecodeError as exc:
            raise ValueError(f'measurements: not a JSON object like {{"offset_mm": 0.3}} ({exc.msg})') from exc
    image = Path(str(obj["image"])).expanduser()
    if not image.is_absolute():
        image = base / image
    case = CaseInput(
        line=obj["line"],
        defect_class=obj["defect_class"],
        image_path=str(image),
        box=box,
        report=obj.get("report") or "",
        disposition=str(obj["disposition"]).lower(),
        root_cause=obj.get("root_cause") or "",
        corrective_action=obj.get("corrective_action") or "",
        author=obj.get("author") or "",
        measurements=measurements,
    )
    created = obj.get("created_at") or None
    try:
        created_at = None if created is None else to_utc(datetime.fromisoformat(str(created)))
    except ValueError as exc:
        raise ValueError(f"created_at: expected an ISO date like 2025-03-01, got {created!r}") from exc
    return SourceRow(
        row=row, case=case, vector=obj.get("vector"), model_version=obj.get("model_version"), created_at=created_at
    )


def _message(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        return f"{where}: {err['msg']}" if where else err["msg"]
    if isinstance(exc, json.JSONDecodeError):
        return f"not valid JSON: {exc.msg}"
    return str(exc)


def read_source(source: Path) -> tuple[list[SourceRow], list[RowError]]:
    """Parse a CSV / JSONL file or a folder with a sidecar; rows that do not parse become RowErrors."""
    source = Path(source).expanduser()
    if source.is_dir():
        found = [source / name for name in SIDECARS if (source / name).is_file()]
        if not found:
            raise DefectAgentError(
                f"folder {source} has no {' or '.join(SIDECARS)} describing its images "
                f"(columns: image, line, defect_class, disposition, box, report, ...)"
            )
        source = found[0]
    if not source.is_file():
        raise DefectAgentError(f"no such file or folder: {source}")
    rows: list[SourceRow] = []
    errors: list[RowError] = []
    base = source.parent
    suffix = source.suffix.lower()
    if suffix == ".csv":
        with source.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            if not reader.fieldnames:
                raise DefectAgentError(f"{source}: empty CSV (a header row is needed)")
            for obj in reader:
                line_no = reader.line_num
                if not any((v or "").strip() for v in obj.values() if isinstance(v, str)):
                    continue  # blank line
                try:
                    rows.append(_to_row(obj, base, line_no))
                except (ValueError, ValidationError, TypeError) as exc:
                    errors.append(RowError(row=line_no, message=_message(exc)))
    elif suffix in {".jsonl", ".ndjson"}:
        with source.open(encoding="utf-8-sig") as fh:
            for line_no, text in enumerate(fh, start=1):
                if not text.strip():
                    continue
                try:
                    obj = json.loads(text)
                    if not isinstance(obj, dict):
                        raise ValueError("expected a JSON object per line")
                    rows.append(_to_row(obj, base, line_no))
                except (ValueError, ValidationError, TypeError) as exc:
                    errors.append(RowError(row=line_no, message=_message(exc)))
    else:
        raise DefectAgentError(f"{source}: unsupported file type {suffix or '(none)'}; use .csv or .jsonl")
    return rows, errors


def import_cases(kb, source: Path | str, progress: bool = True) -> ImportReport:
    """Import what is valid from `source` into `kb`; see the module docstring for the format."""
    from knowledge_base.kb import PreparedCase

    source = Path(source)
    rows, errors = read_source(source)
    total = len(rows) + len(errors)
    target_version = kb.embedder.version if kb.embedder is not None else kb.index.model_version()
    prepared: list[PreparedCase] = []
    iterator = rows
    if progress and len(rows) > 1:
        from tqdm import tqdm

        iterator = tqdm(rows, desc=f"import {source.name}", unit="case")
    try:
        for r in iterator:
            vector = r.vector
            if vector is not None and r.model_version and target_version and r.model_version != target_version:
                log.info(
                    "row %d: vector from embedder %s, knowledge base uses %s: re-embedding",
                    r.row,
                    r.model_version,
                    target_version,
                )
                vector = None
            try:
                prepared.append(
                    kb.prepare_case(
                        r.case,
                        vector,
                        created_at=r.created_at,
                        model_version=r.model_version if vector is not None else None,
                    )
                )
            except DefectAgentError as exc:
                errors.append(RowError(row=r.row, message=str(exc)))
        kb.embed_prepared(prepared, progress=progress)
        cases = kb.commit_prepared(prepared)
    except BaseException:
        kb.discard_images([p.stored for p in prepared])
        raise
    errors.sort(key=lambda e: e.row)
    return ImportReport(source=str(source), rows=total, imported=[c.id for c in cases], errors=errors)
