"""The knowledge base's SQLite schema as an ordered list of migrations, applied once each and recorded in
`schema_version`. Never edit a released migration: append a new one.

Tables:
- cases: one row per live case (box as four nullable columns, measurements as JSON, times as UTC ISO-8601 text,
  which sorts chronologically). Ids are AUTOINCREMENT: a removed case's id is never reused, so history rows,
  exports and verdicts that cite it stay unambiguous.
- vectors: the embedding of each case (float32 blob) and the embedder version that made it, so the FAISS index can
  be rebuilt without re-embedding.
- history: append-only log of every add / edit / remove / restore with the row before and after as JSON (and the
  vector of a removed case), so an edit or a removal never loses a case. It doubles as the change feed the FAISS
  index replays to catch up with writes made by other processes.
- meta: key/value settings (embedding dimension, embedder version).
- cases_fts (v2): FTS5 keyword index over report / root cause / corrective action, tokenised by
  retrieval.ranking.fts_document.
- cases.content_sha256 (v4): the case's identity (image bytes + box + line + class, db.content_key), indexed, so an
  import or `kb add` of a case already present adds nothing. Not UNIQUE: bases from before v4 may hold duplicates,
  and the library's plain `add` still accepts them.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime

log = logging.getLogger(__name__)


def _script(conn: sqlite3.Connection, sql: str) -> None:
    # not executescript(): it COMMITs the open transaction first, and migrations must be all-or-nothing
    for statement in sql.split(";"):
        if statement.strip():
            conn.execute(statement)


def _v1_base(conn: sqlite3.Connection) -> None:
    _script(
        conn,
        """
        CREATE TABLE cases (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            line TEXT NOT NULL,
            defect_class TEXT NOT NULL,
            image_path TEXT NOT NULL,
            image_sha256 TEXT NOT NULL,
            box_x1 REAL, box_y1 REAL, box_x2 REAL, box_y2 REAL,
            report TEXT NOT NULL DEFAULT '',
            disposition TEXT NOT NULL CHECK (disposition IN ('scrap', 'rework', 'accept')),
            root_cause TEXT NOT NULL DEFAULT '',
            corrective_action TEXT NOT NULL DEFAULT '',
            author TEXT NOT NULL DEFAULT '',
            measurements TEXT NOT NULL DEFAULT '{}',
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL
        );
        CREATE TABLE vectors (
            case_id INTEGER PRIMARY KEY REFERENCES cases(id) ON DELETE CASCADE,
            model_version TEXT NOT NULL,
            dim INTEGER NOT NULL,
            vector BLOB NOT NULL
        );
        CREATE TABLE history (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            case_id INTEGER NOT NULL,
            op TEXT NOT NULL CHECK (op IN ('add', 'edit', 'remove', 'restore')),
            before_json TEXT,
            after_json TEXT,
            vector_changed INTEGER NOT NULL DEFAULT 0,
            vector BLOB,
            model_version TEXT,
            actor TEXT NOT NULL DEFAULT '',
            at TEXT NOT NULL
        );
        CREATE INDEX history_case ON history(case_id, seq);
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        """,
    )


def _v2_keyword_index(conn: sqlite3.Connection) -> None:
    from retrieval.ranking import fts_document

    conn.execute("CREATE VIRTUAL TABLE cases_fts USING fts5(body)")
    rows = conn.execute("SELECT id, report, root_cause, corrective_action FROM cases").fetchall()
    conn.executemany(
        "INSERT INTO cases_fts(rowid, body) VALUES (?, ?)", [(r[0], fts_document(r[1], r[2], r[3])) for r in rows]
    )


def _v3_filter_indexes(conn: sqlite3.Connection) -> None:
    # the filters every search applies (line first: the pipeline always filters by product line)
    _script(
        conn,
        """
        CREATE INDEX cases_line_class ON cases(line, defect_class);
        CREATE INDEX cases_created ON cases(created_at);
        CREATE INDEX cases_disposition ON cases(disposition);
        """,
    )


def _v4_content_key(conn: sqlite3.Connection) -> None:
    from knowledge_base.db import content_key, row_box

    conn.execute("ALTER TABLE cases ADD COLUMN content_sha256 TEXT")
    rows = conn.execute("SELECT id, image_sha256, box_x1, box_y1, box_x2, box_y2, line, defect_class FROM cases")
    conn.executemany(
        "UPDATE cases SET content_sha256 = ? WHERE id = ?",
        [(content_key(r[1], row_box(dict(zip(_BOX_COLUMNS, r[2:6]))), r[6], r[7]), r[0]) for r in rows.fetchall()],
    )
    conn.execute("CREATE INDEX cases_content ON cases(content_sha256)")


_BOX_COLUMNS = ("box_x1", "box_y1", "box_x2", "box_y2")

MIGRATIONS: list[tuple[int, str, Callable[[sqlite3.Connection], None]]] = [
    (1, "cases, vectors, history, meta", _v1_base),
    (2, "FTS5 keyword index over report, root cause and corrective action", _v2_keyword_index),
    (3, "indexes for line / class / disposition / date filters", _v3_filter_indexes),
    (4, "content key per case (image bytes + box + line + class) for idempotent import", _v4_content_key),
]
LATEST = MIGRATIONS[-1][0]


def current_version(conn: sqlite3.Connection) -> int:
    exists = conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='schema_version'").fetchone()
    if not exists:
        return 0
    row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
    return int(row[0] or 0)


def migrate(conn: sqlite3.Connection, target: int | None = None) -> list[int]:
    """Apply pending migrations up to `target` (default: latest) in one IMMEDIATE transaction; returns those applied.

    `conn` must be in autocommit mode (isolation_level=None). Two processes opening a new knowledge base at once are
    serialised by the write lock; the second sees the version the first recorded and applies nothing."""
    target = LATEST if target is None else target
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, description TEXT NOT NULL,"
            " applied_at TEXT NOT NULL)"
        )
        have = current_version(conn)
        if have > LATEST:
            raise RuntimeError(
                f"knowledge base schema version {have} is newer than this program's ({LATEST}): upgrade defect-agent"
            )
        applied: list[int] = []
        for version, description, apply in MIGRATIONS:
            if have < version <= target:
                log.info("knowledge base: applying migration %d (%s)", version, description)
                apply(conn)
                conn.execute(
                    "INSERT INTO schema_version(version, description, applied_at) VALUES (?, ?, ?)",
                    (version, description, datetime.now(UTC).isoformat()),
                )
                applied.append(version)
        conn.execute("COMMIT")
        return applied
    except BaseException:
        conn.execute("ROLLBACK")
        raise
