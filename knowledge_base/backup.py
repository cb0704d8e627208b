"""Backups of a knowledge base: `kb backup DEST` and `kb restore-backup SRC` (also `kb restore --from-backup SRC`).

A backup is a folder holding `kb.sqlite3` (a consistent snapshot taken with SQLite's online backup API while other
processes go on reading and writing), the image files that snapshot cites (`images/ab/cdef...`, content-addressed:
a file's name is its sha256) and `backup.json` (BackupManifest: counts and the database file's sha256). The FAISS
index is not in it: it is derived from the vectors in the database and rebuilt on restore.

Restoring checks the backup first (manifest checksum, SQLite's integrity check, schema version, every cited image
present with the content its name promises), copies its images into the store before the database changes (so no
case ever cites a missing file), then replaces the database in one step: through SQLite's backup API into the live
database when that one is sound (a single transaction: other processes see the old base or the new one, never a
mix), or, when the live file is damaged or missing, by moving it aside (`kb.sqlite3.damaged-<time>`, nothing is
deleted) and renaming a fresh copy into place. The index is then rebuilt from the restored vectors. Servers that
keep the knowledge base open see the restored cases at once and reload the rebuilt index on their next search."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pydantic import ValidationError

from defect_agent.errors import DefectAgentError
from defect_agent.files import atomic_write
from knowledge_base import db
from knowledge_base.kb import KnowledgeBase
from knowledge_base.models import BackupManifest, VerifyReport
from knowledge_base.schema import LATEST, current_version
from retrieval.embedding import Embeds
from retrieval.policy import IndexPolicy
from retrieval.store import IndexFile

log = logging.getLogger(__name__)

MANIFEST_NAME = "backup.json"


class BackupInvalid(DefectAgentError):
    """A backup folder that is incomplete, damaged or not a knowledge-base backup at all."""


@dataclass
class CheckedBackup:
    """A backup that passed `check_backup`: its folder, database file, manifest (None for a plain knowledge-base
    folder used as a backup) and the image files its cases and history cite."""

    folder: Path
    db_path: Path
    manifest: BackupManifest | None
    images: list[str]
    schema_version: int


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _name_sha(rel: str) -> str:
    """The sha256 an image's store path promises: images/ab/cdef....png -> abcdef..."""
    parts = Path(rel).parts
    return parts[-2] + Path(parts[-1]).stem if len(parts) >= 3 else ""


def _copy_image(src: Path, dst: Path, rel: str) -> int:
    """Copy one store image, checking its bytes still hash to its name (a backup must not carry a damaged file)."""
    data = src.read_bytes()
    expected = _name_sha(rel)
    if expected and hashlib.sha256(data).hexdigest() != expected:
        raise DefectAgentError(
            f"image {src} is damaged: its content no longer matches its name (sha256); restore it from an older "
            f"backup, or remove the cases citing it"
        )
    dst.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(dst, data, suffix=dst.suffix)
    return len(data)


def make_backup(kb: KnowledgeBase, dest: Path | str) -> BackupManifest:
    """Write a backup of `kb` into the new (or empty) folder `dest`; see the module docstring. The folder appears
    complete or not at all (built beside it and renamed into place)."""
    dest = Path(dest).expanduser().resolve()
    if dest == kb.kb_dir or kb.kb_dir in dest.parents:
        raise DefectAgentError(f"backup folder {dest} lies inside the knowledge base {kb.kb_dir}: choose another")
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise DefectAgentError(f"backup folder {dest} exists and is not empty: choose a new folder")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
    try:
        target = sqlite3.connect(tmp / db.DB_NAME, isolation_level=None)
        try:
            with kb._lock:  # one thread at a time on the shared connection
                kb.conn.backup(target)  # a consistent snapshot; other processes keep writing meanwhile
            target.execute("PRAGMA journal_mode = DELETE")  # one self-contained file, no -wal beside it
            refs = sorted(db.image_refs(target))
            schema = current_version(target)
            cases = int(target.execute("SELECT COUNT(*) FROM cases").fetchone()[0])
            history = int(target.execute("SELECT COUNT(*) FROM history").fetchone()[0])
            dim, version = db.get_meta(target, "dim"), db.get_meta(target, "model_version")
        finally:
            target.close()
        image_bytes = 0
        for rel in refs:
            src = kb.kb_dir / rel
            if not src.is_file():
                raise DefectAgentError(
                    f"image {src}, cited by the knowledge base, is missing: the backup would be incomplete "
                    f"(`defect-agent kb verify` lists every missing image)"
                )
            image_bytes += _copy_image(src, tmp / rel, rel)
        db_file = tmp / db.DB_NAME
        with open(db_file, "rb+") as fh:
            os.fsync(fh.fileno())
        manifest = BackupManifest(
            created_at=datetime.now(UTC),
            source=str(kb.kb_dir),
            schema_version=schema,
            cases=cases,
            history_entries=history,
            images=len(refs),
            image_bytes=image_bytes,
            db_bytes=db_file.stat().st_size,
            db_sha256=_sha256_file(db_file),
            model_version=version,
            dim=None if dim is None else int(dim),
        )
        atomic_write(tmp / MANIFEST_NAME, manifest.model_dump_json(indent=2).encode("utf-8"))
        if dest.exists():
            dest.rmdir()
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("backup of %s: %d cases, %d images in %s", kb.kb_dir, manifest.cases, manifest.images, dest)
    return manifest


def _read_only(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)


def check_backup(src: Path | str) -> CheckedBackup:
    """Check that `src` is a whole, sound backup (or a plain knowledge-base folder); BackupInvalid says what is
    wrong with which file."""
    folder = Path(src).expanduser().resolve()
    db_path = folder / db.DB_NAME
    if not db_path.is_file():
        raise BackupInvalid(
            f"{folder} is not a knowledge-base backup: it has no {db.DB_NAME} (make one with `defect-agent kb backup`)"
        )
    manifest = None
    manifest_path = folder / MANIFEST_NAME
    if manifest_path.is_file():
        try:
            manifest = BackupManifest.model_validate_json(manifest_path.read_text(encoding="utf-8"))
        except (ValidationError, ValueError, OSError) as exc:
            raise BackupInvalid(f"backup manifest {manifest_path} is unreadable ({exc.__class__.__name__})") from exc
        if _sha256_file(db_path) != manifest.db_sha256:
            raise BackupInvalid(
                f"backup database {db_path} does not match its manifest (sha256 differs): the backup is damaged; "
                f"restore another one"
            )
    try:
        conn = _read_only(db_path)
    except sqlite3.Error as exc:
        raise BackupInvalid(f"backup database {db_path} cannot be opened ({exc})") from exc
    try:
        check = [str(r[0]) for r in conn.execute("PRAGMA integrity_check(5)")]
        if check != ["ok"]:
            raise BackupInvalid(f"backup database {db_path} is damaged: {'; '.join(check[:3])}")
        version = current_version(conn)
        if version == 0:
            raise BackupInvalid(f"{db_path} is not a knowledge-base database (no schema version)")
        if version > LATEST:
            raise BackupInvalid(
                f"backup {db_path} has schema version {version}, newer than this program's ({LATEST}): "
                f"upgrade defect-agent"
            )
        refs = sorted(db.image_refs(conn))
    except sqlite3.Error as exc:
        raise BackupInvalid(f"backup database {db_path} is damaged or not a knowledge base ({exc})") from exc
    finally:
        conn.close()
    missing = [rel for rel in refs if not (folder / rel).is_file()]
    if missing:
        raise BackupInvalid(
            f"backup {folder} lacks {len(missing)} image file(s) its cases cite, e.g. {missing[:3]}: it is incomplete"
        )
    return CheckedBackup(folder=folder, db_path=db_path, manifest=manifest, images=refs, schema_version=version)


def _live_is_sound(path: Path) -> bool:
    if not path.is_file() or path.stat().st_size == 0:
        return False
    try:
        conn = sqlite3.connect(path, timeout=db.BUSY_TIMEOUT_S, isolation_level=None)
        try:
            return [str(r[0]) for r in conn.execute("PRAGMA quick_check(1)")] == ["ok"]
        finally:
            conn.close()
    except sqlite3.DatabaseError:
        return False


def _page_size(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA page_size").fetchone()[0])


def restore_backup(
    kb_dir: Path | str,
    src: Path | str,
    *,
    policy: IndexPolicy | None = None,
    embedder: Embeds | None = None,
    embedder_factory: Callable[[], Embeds] | None = None,
    progress: bool = False,
) -> tuple[CheckedBackup, VerifyReport]:
    """Replace the knowledge base in `kb_dir` (sound, damaged or absent) by the backup `src`, then rebuild its index;
    returns the checked backup and the rebuilt base's verify report. See the module docstring."""
    kb_dir = Path(kb_dir).expanduser().resolve()
    backup = check_backup(src)
    if backup.folder == kb_dir:
        raise DefectAgentError(f"{src} is the knowledge base itself: restore from a backup folder")
    kb_dir.mkdir(parents=True, exist_ok=True)
    for rel in backup.images:  # first: the restored cases must never cite a file that is not there yet
        target = kb_dir / rel
        if not target.is_file():
            _copy_image(backup.folder / rel, target, rel)
    live = kb_dir / db.DB_NAME
    source = _read_only(backup.db_path)
    try:
        replaced = False
        if _live_is_sound(live):
            dest = db.connect(live)
            try:
                if _page_size(dest) == _page_size(source):
                    # one transaction on the live file: open connections see the old base or the new, never a mix
                    source.backup(dest)
                    replaced = True
            finally:
                dest.close()
        if not replaced:
            stamp = time.strftime("%Y%m%dT%H%M%S")
            for name in (db.DB_NAME, db.DB_NAME + "-wal", db.DB_NAME + "-shm"):
                old = kb_dir / name
                if old.exists():  # kept, not deleted: it may still hold something worth recovering
                    aside = kb_dir / f"{name}.damaged-{stamp}"
                    os.replace(old, aside)
                    log.warning("moved %s aside to %s", old, aside)
            fresh = kb_dir / f".{db.DB_NAME}.restoring"
            fresh.unlink(missing_ok=True)
            copy = sqlite3.connect(fresh, isolation_level=None)
            try:
                source.backup(copy)
            finally:
                copy.close()
            with open(fresh, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(fresh, live)
    finally:
        source.close()
    files = IndexFile(kb_dir)
    with files.lock(exclusive=True):
        files.remove()  # it describes the replaced base; the rebuild below writes the restored one's
    with KnowledgeBase.open(kb_dir, embedder, policy=policy, embedder_factory=embedder_factory) as kb:
        report = kb.rebuild(progress=progress)
    log.info("restored %s from %s: %d cases", kb_dir, backup.folder, report.cases)
    return backup, report
