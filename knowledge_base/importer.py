"""Bulk import of cases from a CSV file, a JSONL file, or a folder holding `cases.csv` / `cases.jsonl` beside its
images. Bad rows are reported with their line numbers; the good rows go in, in ONE transaction (all or none of them).

What is refused (the row, with its line number; the other rows still go in):
- with `check_names` (as `kb import` runs it): a line without `configs/lines/<line>.yaml`, or a class that is not
  the name or a zh / en synonym of one of the line's defect classes (the nearest known name is suggested); a
  synonym is stored under the class name, so "焊渣" and "Weld Spatter" both become `spatter`;
- a box that is empty or reaches outside the image; NaN / infinite measurements or box coordinates;
- CSV: a row whose number of values differs from the header's, and a quoted field that is not closed: it is
  reported on the line where it opens and the lines after it are read as rows of their own, instead of being
  swallowed into that field (a quoted field may span lines only when the row it ends has the header's width and
  none of its continuation lines would be a full row by itself).
The file must be UTF-8 (a byte-order mark is fine); anything else is one clear error naming the file and the byte.

Importing is idempotent: a row whose case (same image bytes, box, line and class) is already in the knowledge base,
or came earlier in the file, adds nothing and is listed in the report as already present.

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
import io
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from defect_agent.errors import DefectAgentError
from knowledge_base.case import CaseInput
from knowledge_base.models import ImportReport, PresentRow, RowError, to_utc
from knowledge_base.validate import canonical_names
from vision.detection import Box

log = logging.getLogger(__name__)

ALIASES = {"image_path": "image", "class": "defect_class", "cause": "root_cause", "action": "corrective_action"}
SIDECARS = ("cases.csv", "cases.jsonl")
MAX_FIELD_LINES = 50  # a quoted CSV field still open after this many lines is taken for an unterminated quote


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


def _to_row(obj: dict[str, Any], base: Path, row: int, check_names: bool = False) -> SourceRow:
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
    line, defect_class = obj["line"], obj["defect_class"]
    if check_names:
        line, defect_class = canonical_names(str(line), str(defect_class))
    case = CaseInput(
        line=line,
        defect_class=defect_class,
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


def decode_text(source: Path) -> str:
    """The file's text: UTF-8, with or without a byte-order mark. Anything else is a DefectAgentError naming the file,
    the offending byte and its line, and how to convert it (an Excel or GBK export is the usual cause)."""
    data = source.read_bytes()
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise DefectAgentError(
            f"{source}: the file is UTF-16 text; save it as UTF-8 (Excel: 'CSV UTF-8 (comma delimited)') "
            f"or convert it: iconv -f UTF-16 -t UTF-8"
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DefectAgentError(
            f"{source}: not UTF-8 text: byte 0x{data[exc.start]:02x} on line {line} (offset {exc.start}) "
            f"is {exc.reason}; save it as UTF-8 (Excel: 'CSV UTF-8 (comma delimited)') or convert it, "
            f"e.g. iconv -f GBK -t UTF-8 (Chinese Windows) or -f CP1252 (Western)"
        ) from None


def _csv_parse_at(lines: list[str], start: int) -> tuple[list[str] | None, int, str | None]:
    """Parse one CSV record beginning at lines[start]: (fields, physical lines used, error)."""
    used = 0

    def feed() -> Iterator[str]:
        nonlocal used
        for k in range(start, min(len(lines), start + MAX_FIELD_LINES)):
            used += 1
            yield lines[k]

    try:
        return next(csv.reader(feed(), strict=True)), used, None
    except StopIteration:
        return None, used, None
    except csv.Error as exc:
        return None, used, str(exc)


def _width_of(line: str) -> int:
    try:
        return len(next(csv.reader([line], strict=True)))
    except (csv.Error, StopIteration):
        return -1


def csv_records(text: str) -> Iterator[tuple[int, list[str] | None, str | None]]:
    """(line number where the record starts, fields, None) per CSV record after the header, or (line, None, why) for
    one that cannot be a row; the header's line is number 1 (leading blank lines counted). Blank lines are skipped.
    An unterminated quote does not swallow the rows after it: the record is reported at its first line and parsing
    resumes on the next line."""
    lines = list(io.StringIO(text, newline=""))  # physical lines, ends kept: csv needs them inside quoted fields
    i = 0
    while i < len(lines) and not lines[i].strip():
        i += 1
    if i == len(lines):
        return
    header, used, error = _csv_parse_at(lines, i)
    if error or not header or used != 1:
        yield i + 1, None, f"header row is not valid CSV ({error or 'a quoted name spans lines'})"
        return
    width = len(header)
    yield i + 1, header, None
    i += 1
    while i < len(lines):
        if not lines[i].strip():
            i += 1
            continue
        fields, used, error = _csv_parse_at(lines, i)
        # an error past the first line: the quote opened here ran on until some later line's quote
        unclosed = error is not None and ("unexpected end of data" in error or used > 1)
        if fields is not None and used > 1:  # a quoted field spanning lines: legitimate, or a quote never closed?
            unclosed = len(fields) != width or _swallows_rows(lines[i + 1 : i + used], width)
        if unclosed:
            yield (
                i + 1,
                None,
                "unterminated quote: a quoted field opened on this line is not closed where the row ends "
                "(the following lines are read as rows of their own)",
            )
            i += 1
            continue
        if error:
            yield i + 1, None, f'malformed CSV ({error}): a quote inside a field must be doubled, e.g. "12"" crack"'
            i += 1
            continue
        if fields is None:
            break
        if len(fields) != width:
            yield i + 1, None, f"{len(fields)} values for the {width} header columns (a stray comma or quote?)"
        else:
            yield i + 1, fields, None
        i += used


def _swallows_rows(continuation: list[str], width: int) -> bool:
    """A multi-line record whose continuation lines would each be a full row: an unterminated quote ate them."""
    return any(line.strip() and _width_of(line) == width for line in continuation)


def read_source(source: Path, check_names: bool = False) -> tuple[list[SourceRow], list[RowError]]:
    """Parse a CSV / JSONL file or a folder with a sidecar; rows that do not parse become RowErrors. With
    `check_names`, line and class must be known to the line configs (see the module docstring)."""
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
    if suffix not in {".csv", ".jsonl", ".ndjson"}:
        raise DefectAgentError(f"{source}: unsupported file type {suffix or '(none)'}; use .csv or .jsonl")
    text = decode_text(source)
    bad_row = (ValueError, ValidationError, TypeError)  # UnknownName is a ValueError
    if suffix == ".csv":
        records = csv_records(text)
        first = next(records, None)
        if first is None or first[1] is None:
            why = "empty CSV (a header row is needed)" if first is None else f"line {first[0]}: {first[2]}"
            raise DefectAgentError(f"{source}: {why}")
        header = first[1]
        for line_no, fields, problem in records:
            if fields is None:
                errors.append(RowError(row=line_no, message=str(problem)))
                continue
            if not any(v.strip() for v in fields):
                continue  # a row of empty values
            try:
                rows.append(_to_row(dict(zip(header, fields)), base, line_no, check_names))
            except bad_row as exc:
                errors.append(RowError(row=line_no, message=_message(exc)))
    else:
        for line_no, line in enumerate(io.StringIO(text), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                if not isinstance(obj, dict):
                    raise ValueError("expected a JSON object per line")
                rows.append(_to_row(obj, base, line_no, check_names))
            except bad_row as exc:
                errors.append(RowError(row=line_no, message=_message(exc)))
    return rows, errors


def import_cases(kb, source: Path | str, progress: bool = True, *, check_names: bool = False) -> ImportReport:
    """Import what is valid from `source` into `kb`; see the module docstring for the format and the checks. A row
    whose case is already present adds nothing (it is reported, with the id of the case it matches)."""
    from knowledge_base.kb import PreparedCase

    source = Path(source)
    rows, errors = read_source(source, check_names=check_names)
    total = len(rows) + len(errors)
    target_version = kb.embedder.version if kb.embedder is not None else kb.index.model_version()
    prepared: list[PreparedCase] = []
    prepared_rows: list[int] = []
    iterator = rows
    if progress and len(rows) > 1:
        from tqdm import tqdm

        iterator = tqdm(rows, desc=f"import {source.name}", unit="case")
    present: list[PresentRow] = []
    imported: list[int] = []
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
                prepared_rows.append(r.row)
            except DefectAgentError as exc:
                errors.append(RowError(row=r.row, message=str(exc)))
        # what the knowledge base already holds, and repeats inside the file, are neither embedded nor added
        known = kb.find_present(prepared)
        first_of: dict[str, int] = {}
        todo: list[int] = []
        for i, p in enumerate(prepared):
            if i in known:
                continue
            key = p.content_sha256
            if key in first_of:
                continue
            first_of[key] = i
            todo.append(i)
        kb.embed_prepared([prepared[i] for i in todo], progress=progress)
        results = dict(zip(todo, kb.commit_unique([prepared[i] for i in todo])))
    except BaseException:
        kb.discard_images([p.stored for p in prepared])
        raise
    kb.discard_images([p.stored for i, p in enumerate(prepared) if i not in results])
    for i, p in enumerate(prepared):
        if i in results:
            case_id, added = results[i]
            if added:
                imported.append(case_id)
            else:  # added by another process between the check above and the commit
                present.append(PresentRow(row=prepared_rows[i], case_id=case_id))
        elif i in known:
            present.append(PresentRow(row=prepared_rows[i], case_id=known[i]))
        else:
            present.append(PresentRow(row=prepared_rows[i], case_id=results[first_of[p.content_sha256]][0]))
    errors.sort(key=lambda e: e.row)
    return ImportReport(source=str(source), rows=total, imported=imported, already_present=present, errors=errors)
