"""SQLite access for the knowledge base: connection settings, transactions, row <-> Case mapping, vector blobs.

Connections run in autocommit mode and every write is an explicit `BEGIN IMMEDIATE` transaction: the write lock is
taken up front, so two processes adding cases at once queue on the busy timeout instead of failing with
'database is locked' when a read transaction tries to upgrade. WAL lets readers (searches) proceed during a write."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import sqlite3
import time
from collections.abc import Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import cast

import numpy as np

from defect_agent.errors import DefectAgentError
from knowledge_base.case import Case
from knowledge_base.models import iso
from vision.detection import Box

log = logging.getLogger(__name__)

DB_NAME = "kb.sqlite3"
BUSY_TIMEOUT_S = 60.0

CASE_COLUMNS = (
    "id",
    "line",
    "defect_class",
    "image_path",
    "image_sha256",
    "box_x1",
    "box_y1",
    "box_x2",
    "box_y2",
    "report",
    "disposition",
    "root_cause",
    "corrective_action",
    "author",
    "measurements",
    "created_at",
    "updated_at",
    "content_sha256",
)


class KnowledgeBaseCorrupt(DefectAgentError):
    """The knowledge base's SQLite file is damaged, truncated or not a database: a backup restores it."""


class KnowledgeBaseBusy(DefectAgentError):
    """Another process held the knowledge base's write lock for longer than the busy timeout."""


def repair_hint(kb_dir: Path) -> str:
    return (
        f"restore the last backup with `defect-agent kb restore-backup BACKUP_DIR --kb {kb_dir}` "
        f"(`defect-agent kb backup DEST` makes one)"
    )


def sql_error(exc: sqlite3.Error, db_path: Path) -> DefectAgentError | None:
    """The user-facing error for a SQLite failure caused by the file (damaged, locked, unreadable); None for the
    program's own mistakes (constraint violations, a closed connection), which stay tracebacks."""
    if isinstance(exc, sqlite3.IntegrityError | sqlite3.ProgrammingError | sqlite3.InterfaceError):
        return None
    text = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
    low = text.lower()
    if "locked" in low or "busy" in low:
        return KnowledgeBaseBusy(
            f"knowledge base database {db_path} stayed locked by another process for {BUSY_TIMEOUT_S:.0f} s "
            f"({text}): retry when the other writer is done"
        )
    if "unable to open" in low or "readonly" in low:
        return DefectAgentError(
            f"cannot open the knowledge base database {db_path} for writing ({text}): check that its folder exists "
            f"and that this user may read and write there"
        )
    if "disk i/o" in low:
        return KnowledgeBaseCorrupt(
            f"knowledge base database {db_path}: {text} (a full disk shows this way too; free space and retry); "
            f"if the disk has space, the file is damaged: {repair_hint(db_path.parent)}"
        )
    damaged = ("malformed", "not a database", "encrypted", "corrupt")
    if type(exc) is sqlite3.DatabaseError or any(word in low for word in damaged):
        return KnowledgeBaseCorrupt(
            f"knowledge base database {db_path} is damaged or unreadable ({text}): {repair_hint(db_path.parent)}"
        )
    return None


def content_key(image_sha256: str, box: Box | None, line: str, defect_class: str) -> str:
    """What makes two cases the same case: the image bytes, the box, the line and the class (not the words an
    engineer wrote about it). Import and `kb add` use it to add a case once however often it is submitted."""
    coords = None if box is None else [repr(float(v)) for v in (box.x1, box.y1, box.x2, box.y2)]
    doc = json.dumps([image_sha256, coords, line, defect_class], ensure_ascii=False)
    return hashlib.sha256(doc.encode("utf-8")).hexdigest()


def row_box(row: Mapping) -> Box | None:
    if row["box_x1"] is None:
        return None
    return Box(x1=row["box_x1"], y1=row["box_y1"], x2=row["box_x2"], y2=row["box_y2"])


def connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
    # switching to WAL needs a moment without other connections' locks; a new KB opened by two processes at once
    # can see SQLITE_BUSY here even with the timeout, so retry briefly
    for attempt in range(50):
        try:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            break
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == 49:
                raise
            time.sleep(0.1)
    if str(mode).lower() != "wal":
        log.warning("knowledge base %s: journal mode is %s, not WAL (filesystem without shared memory?)", path, mode)
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA synchronous = FULL")  # a committed case survives a power cut, not only a crash
    return conn


@contextlib.contextmanager
def write_txn(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


@contextlib.contextmanager
def read_txn(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A consistent snapshot across several SELECTs (WAL: writers are not blocked)."""
    conn.execute("BEGIN")
    try:
        yield conn
    finally:
        conn.execute("COMMIT")


def row_dict(row: Mapping) -> dict:
    return {name: row[name] for name in CASE_COLUMNS}


def case_from_row(row: Mapping, kb_dir: Path) -> Case:
    box = row_box(row)
    return Case(
        id=row["id"],
        line=row["line"],
        defect_class=row["defect_class"],
        image_path=str(kb_dir / row["image_path"]),
        image_sha256=row["image_sha256"],
        box=box,
        report=row["report"],
        disposition=row["disposition"],
        root_cause=row["root_cause"],
        corrective_action=row["corrective_action"],
        author=row["author"],
        measurements=json.loads(row["measurements"] or "{}"),
        created_at=datetime.fromisoformat(row["created_at"]),
        updated_at=datetime.fromisoformat(row["updated_at"]),
    )


def case_values(
    *,
    line: str,
    defect_class: str,
    image_path: str,
    image_sha256: str,
    box: Box | None,
    report: str,
    disposition: str,
    root_cause: str,
    corrective_action: str,
    author: str,
    measurements: dict[str, float],
    created_at: datetime,
    updated_at: datetime,
) -> dict:
    """Column values of a cases row (without id); `image_path` relative to the KB folder."""
    return {
        "content_sha256": content_key(image_sha256, box, line, defect_class),
        "line": line,
        "defect_class": defect_class,
        "image_path": image_path,
        "image_sha256": image_sha256,
        "box_x1": None if box is None else float(box.x1),
        "box_y1": None if box is None else float(box.y1),
        "box_x2": None if box is None else float(box.x2),
        "box_y2": None if box is None else float(box.y2),
        "report": report,
        "disposition": disposition,
        "root_cause": root_cause,
        "corrective_action": corrective_action,
        "author": author,
        # allow_nan=False: NaN / Infinity are not JSON; CaseInput refuses them, this keeps any other path honest
        "measurements": json.dumps(measurements, sort_keys=True, ensure_ascii=False, allow_nan=False),
        "created_at": iso(created_at),
        "updated_at": iso(updated_at),
    }


def insert_case(conn: sqlite3.Connection, values: dict, case_id: int | None = None) -> int:
    cols = list(values)
    params = [values[c] for c in cols]
    if case_id is not None:
        cols.insert(0, "id")
        params.insert(0, case_id)
    cur = conn.execute(f"INSERT INTO cases ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})", params)
    return int(case_id if case_id is not None else cast(int, cur.lastrowid))


def update_case(conn: sqlite3.Connection, case_id: int, values: dict) -> None:
    sets = ", ".join(f"{c} = ?" for c in values)
    conn.execute(f"UPDATE cases SET {sets} WHERE id = ?", [*values.values(), case_id])


def vector_blob(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype="<f4").tobytes()


def blob_vector(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype="<f4").astype(np.float32)


def stack_blobs(blobs: list[bytes], dim: int) -> np.ndarray:
    if not blobs:
        return np.empty((0, dim), dtype=np.float32)
    return np.frombuffer(b"".join(blobs), dtype="<f4").reshape(len(blobs), dim).astype(np.float32)


def in_chunks(ids: list[int], size: int = 900) -> Iterator[list[int]]:
    """SQLite limits bound parameters per statement; keep IN (...) lists under it."""
    for start in range(0, len(ids), size):
        yield ids[start : start + size]


def get_meta(conn: sqlite3.Connection, key: str) -> str | None:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return None if row is None else str(row[0])


def set_meta(conn: sqlite3.Connection, key: str, value: str) -> None:
    conn.execute(
        "INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, value)
    )


def max_seq(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT COALESCE(MAX(seq), 0) FROM history").fetchone()[0])


def image_refs(conn: sqlite3.Connection) -> dict[str, str]:
    """Every image file (path relative to the KB folder -> what cites it) that a live case or any history entry
    cites: the files that must never be deleted, whatever happened to their cases since."""
    refs: dict[str, str] = {}
    for (path,) in conn.execute("SELECT DISTINCT image_path FROM cases"):
        refs[str(path)] = "case"
    for before, after in conn.execute("SELECT before_json, after_json FROM history"):
        for doc in (before, after):
            if doc:
                path = json.loads(doc).get("image_path")
                if path and path not in refs:
                    refs[str(path)] = "history"
    return refs
