"""Keeps the FAISS index (derived data) in step with SQLite (the truth), within and across processes.

Every write to the knowledge base appends to the `history` table in the same transaction. The index remembers the
last history entry it reflects (`applied_seq`, also recorded in its manifest). To catch up, it replays newer entries:
the ids they touch are removed and their current vectors re-added. So:
- a write in this process is visible to its searches at once (replayed right after the commit);
- a write by another process is picked up by the next search here (one `MAX(seq)` query per search);
- the file on disk may lag (large indexes are not rewritten after every single add: see PERSIST_*); the history
  since its `applied_seq` is replayed when it is opened, so nothing is lost by not persisting;
- a rebuild writes a new `generation`; other processes notice it in the manifest and reload instead of replaying.

Writers persist under an exclusive file lock after replaying everything committed so far, so the last writer's file
always contains every committed case, whichever process wrote last.

A process killed while saving (between the swap of the index file and that of its manifest) leaves a pair that does
not match. Saving is bracketed by a marker file (`index/.writing`), so the next process to load tells that torn pair
from a damaged file: it rebuilds the index from SQLite (it is derived data) and saves it, instead of refusing every
search until someone runs `kb rebuild`. A damaged file without the marker is still reported, never papered over."""

from __future__ import annotations

import logging
import os
import sqlite3
import uuid
from pathlib import Path
from typing import cast

import numpy as np

from knowledge_base import db
from retrieval.index import VectorIndex
from retrieval.policy import IndexPolicy
from retrieval.store import IndexFile, IndexUnavailable, Manifest, ids_digest

log = logging.getLogger(__name__)

# Rewriting the whole file after each add made one `kb add` cost O(cases) (40 ms at 1.2 k cases); the history
# replayed on open covers whatever the file lacks, so only small indexes (a few hundred cases) are rewritten after
# every write; larger ones every PERSIST_EVERY_OPS history entries, on rebuild and on close()
# (benchmarks/bench_kb_add.py measures both policies)
PERSIST_EVERY_BYTES = 256 * 2**10
PERSIST_EVERY_OPS = 256
WRITING_MARKER = ".writing"  # present while (or because) a save of the index file and manifest was under way


class IndexSync:
    """Keeps one knowledge base's FAISS index in step with its SQLite history: load, replay, rebuild and
    persist."""

    def __init__(self, conn: sqlite3.Connection, kb_dir: Path, policy: IndexPolicy) -> None:
        self.conn = conn
        self.files = IndexFile(kb_dir)
        self.policy = policy
        self.vindex: VectorIndex | None = None
        self.applied_seq = 0
        self.generation = ""
        self.pending = 0  # history entries applied in memory but not yet in the file
        self.problem: str | None = None
        self.loaded = False
        self._stamp: tuple[int, int] | None = None
        self._dirty = False  # the index was rebuilt in memory (new structure): persist at the next chance
        self._torn = False  # the file on disk is a torn save (see module docstring): replace it at the next chance

    # state of the vector space ---------------------------------------------------------------------------------
    def model_version(self) -> str | None:
        return db.get_meta(self.conn, "model_version")

    def dim(self) -> int | None:
        value = db.get_meta(self.conn, "dim")
        return None if value is None else int(value)

    def live_vector_count(self) -> int:
        return int(self.conn.execute("SELECT COUNT(*) FROM vectors v JOIN cases c ON c.id = v.case_id").fetchone()[0])

    # loading ----------------------------------------------------------------------------------------------------
    def _load_locked(self) -> None:
        """(Re)load from disk; the caller holds the file lock (shared or exclusive)."""
        self._stamp = self.files.manifest_stamp()
        self.vindex, self.problem, self.pending, self._dirty = None, None, 0, False
        self.applied_seq, self.generation, self._torn = 0, "", False
        self.loaded = True
        if not self.files.exists():
            # never written (a new knowledge base, or a crash before its first index write): built from SQLite by
            # the first catch-up; once written, a missing file is a fault the user must hear about
            if db.get_meta(self.conn, "index_written") is not None and self.live_vector_count():
                self.problem = f"index file missing: {self.files.index_path}"
            return
        try:
            vindex, manifest = self.files.read()
        except IndexUnavailable as exc:
            if self.interrupted_save():
                log.warning(
                    "index %s: a process was killed while saving it (%s); rebuilding it from the database",
                    self.files.index_path,
                    exc.problem,
                )
                self._torn = True  # vindex None: the next catch_up builds it from SQLite
                return
            self.problem = exc.problem
            return
        problem = self._manifest_problem(manifest)
        if problem:
            self.problem = problem
            return
        self.vindex, self.applied_seq, self.generation = vindex, manifest.applied_seq, manifest.generation

    @property
    def marker_path(self) -> Path:
        return self.files.dir / WRITING_MARKER

    def interrupted_save(self) -> bool:
        return self.marker_path.exists()

    def _manifest_problem(self, manifest: Manifest) -> str | None:
        version, dim = self.model_version(), self.dim()
        where = self.files.manifest_path
        if manifest.count and version is not None and manifest.model_version != version:
            return (
                f"index {where} was built from embedder {manifest.model_version!r} vectors, "
                f"the database holds {version!r} vectors"
            )
        if manifest.count and dim is not None and manifest.dim != dim:
            return f"index {where}: dimension {manifest.dim} differs from the database's {dim}"
        if manifest.applied_seq > db.max_seq(self.conn):
            return f"index {where} is newer than the database (restored from another knowledge base?)"
        return None

    def load(self) -> None:
        with self.files.lock(exclusive=False):
            self._load_locked()

    def _file_changed(self) -> bool:
        """True when another process swapped in an index of a different generation (a rebuild)."""
        stamp = self.files.manifest_stamp()
        if stamp == self._stamp:
            return False
        try:
            manifest = self.files.read_manifest()
        except IndexUnavailable:
            # deleted or mid-swap: keep the in-memory index (the next persist writes a sound file); look again later
            return False
        if manifest.generation != self.generation:
            return True
        self._stamp = stamp
        return False

    # catching up -------------------------------------------------------------------------------------------------
    def live_vectors(self, ids: list[int] | None) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) of live cases with a vector of the current embedder version (all of them when ids=None)."""
        version, dim = self.model_version(), self.dim()
        if version is None or dim is None:
            return np.empty(0, dtype=np.int64), np.empty((0, dim or 0), dtype=np.float32)
        # a blob whose length disagrees with its dim would not reshape: left out here, reported by `kb verify`
        sql = (
            "SELECT v.case_id, v.vector FROM vectors v JOIN cases c ON c.id = v.case_id "
            "WHERE v.model_version = ? AND v.dim = ? AND length(v.vector) = 4 * v.dim"
        )
        rows: list = []
        if ids is None:
            rows = self.conn.execute(sql + " ORDER BY v.case_id", (version, dim)).fetchall()
        else:
            for chunk in db.in_chunks(ids):
                rows += self.conn.execute(
                    sql + f" AND v.case_id IN ({','.join('?' * len(chunk))})", (version, dim, *chunk)
                ).fetchall()
        out_ids = np.array([r[0] for r in rows], dtype=np.int64)
        return out_ids, db.stack_blobs([r[1] for r in rows], dim)

    def full_build(self, progress: bool = False) -> tuple[VectorIndex | None, int]:
        """A fresh index from SQLite's vectors (one consistent snapshot) and the history position it reflects."""
        with db.read_txn(self.conn):
            seq = db.max_seq(self.conn)
            ids, vectors = self.live_vectors(None)
        dim = self.dim()
        if dim is None:
            return None, seq
        spec = self.policy.spec_for(len(ids))
        log.info("building %s index over %d vectors", spec.describe(), len(ids))
        if len(ids) == 0:
            return VectorIndex.empty(spec, dim), seq
        return VectorIndex.build(spec, vectors, ids, progress=progress), seq

    def replay(self, vindex: VectorIndex | None, from_seq: int) -> tuple[VectorIndex | None, int, int]:
        """Apply history entries after `from_seq` to `vindex` (in place); returns (index, last seq, entries).
        An HNSW index that would need a removal, or no index yet, is rebuilt from SQLite instead."""
        if vindex is None:  # no index yet (new knowledge base, or rows from before the history existed)
            rebuilt, seq = self.full_build()
            return rebuilt, seq, 0
        with db.read_txn(self.conn):
            to_seq = db.max_seq(self.conn)
            if to_seq <= from_seq:
                return vindex, from_seq, 0
            rows = self.conn.execute(
                "SELECT case_id, op, vector_changed FROM history WHERE seq > ? AND seq <= ?", (from_seq, to_seq)
            ).fetchall()
            touched = sorted({r[0] for r in rows if r[1] != "edit" or r[2]})
            ids, vectors = self.live_vectors(touched)
        if not vindex.supports_remove and touched and np.isin(touched, vindex.ids()).any():
            rebuilt, seq = self.full_build()
            return rebuilt, seq, len(rows)
        if vindex.supports_remove:
            vindex.remove(np.asarray(touched, dtype=np.int64))
        vindex.add(vectors, ids)
        return vindex, to_seq, len(rows)

    def catch_up(self) -> None:
        before = self.vindex
        self.vindex, self.applied_seq, n = self.replay(self.vindex, self.applied_seq)
        self.pending += n
        if self.vindex is not before and self.vindex is not None and self.vindex.ntotal:
            self._dirty = True
        if self.vindex is not None and self.vindex.spec.kind == "ivf" and n:
            # lists fill up as the base grows: keep the number of scanned vectors (hence recall) steady
            self.vindex.set_nprobe(self.policy.nprobe_for(int(cast(int, self.vindex.spec.nlist)), self.vindex.ntotal))
        if self.vindex is not None and self.policy.needs_rebuild(self.vindex.spec, self.vindex.ntotal):
            log.info(
                "knowledge base grew to %d vectors: rebuilding as %s",
                self.vindex.ntotal,
                self.policy.spec_for(self.vindex.ntotal).describe(),
            )
            self.vindex, self.applied_seq = self.full_build(progress=True)
            self._dirty = True

    # public operations -------------------------------------------------------------------------------------------
    def ready(self) -> VectorIndex | None:
        """The index, current with SQLite, for a search. None for a knowledge base without vectors."""
        if not self.loaded or self._file_changed():
            self.load()
        if self.problem:
            raise IndexUnavailable(self.problem)
        self.catch_up()
        if self._torn:
            self._replace_torn()
        return self.vindex

    def _replace_torn(self) -> None:
        """Save the index rebuilt after a torn save, unless another process has saved a sound one meanwhile."""
        try:
            with self.files.lock(exclusive=True):
                self._torn = False
                if not self.interrupted_save():
                    return  # someone saved since: theirs is sound, and the next search here loads it
                self.catch_up()
                self._persist_locked(force=True)
        except OSError as exc:  # a read-only deployment can still search with the in-memory index
            log.warning("could not save the rebuilt index %s: %s", self.files.index_path, exc)

    def after_write(self) -> None:
        """After a committed write: replay it (and anything else committed) and persist when due."""
        with self.files.lock(exclusive=True):
            if not self.loaded or self._file_changed():
                self._load_locked()
            if self.problem:
                log.warning(
                    "case saved in the database but the index is unusable (%s): run `defect-agent kb rebuild`",
                    self.problem,
                )
                return
            self.catch_up()
            self._persist_locked(force=False)

    def _persist_locked(self, force: bool) -> None:
        if self.vindex is None or not (self.pending or self._dirty or force):
            return
        if not (
            force or self._dirty or self.pending >= PERSIST_EVERY_OPS or self.vindex.nbytes() <= PERSIST_EVERY_BYTES
        ):
            return
        if self._dirty or not self.generation:
            self.generation = uuid.uuid4().hex
        self._write_file()
        self.pending, self._dirty = 0, False

    def _write_file(self) -> Manifest:
        # not fsync'ed: it guards against a killed process, whose writes the page cache keeps, not a power cut
        self.marker_path.write_text(f"{os.getpid()} {self.generation}\n", encoding="utf-8")
        manifest = self.files.write(self.vindex, self.applied_seq, self.generation, self.model_version())
        self.marker_path.unlink(missing_ok=True)
        self._torn = False
        self._stamp = self.files.manifest_stamp()
        if db.get_meta(self.conn, "index_written") is None:
            with db.write_txn(self.conn):
                db.set_meta(self.conn, "index_written", manifest.created_at.isoformat())
        return manifest

    def flush(self, force: bool = False) -> None:
        """On close: persist what is pending when it is due (PERSIST_*), or always with `force`. A lagging file is
        sound: the next process replays the history it lacks."""
        if not self.loaded or self.problem or not (self.pending or self._dirty):
            return
        with self.files.lock(exclusive=True):
            if self._file_changed():
                self._load_locked()
                if self.problem:
                    return
            self.catch_up()
            self._persist_locked(force=force)

    def rebuild(self, progress: bool = True) -> Manifest | None:
        """Rebuild from SQLite and replace the file (repairs a missing / corrupt / inconsistent index)."""
        with self.files.lock(exclusive=True):
            vindex, seq = self.full_build(progress=progress)
            self.loaded, self.problem, self.pending, self._dirty = True, None, 0, False
            self.vindex, self.applied_seq, self.generation = vindex, seq, uuid.uuid4().hex
            if vindex is None:
                self.files.remove()
                self._stamp = None
                return None
            manifest = self._write_file()
            self.catch_up()
            self._persist_locked(force=False)
            return manifest

    def inspect_file(self) -> tuple[VectorIndex | None, Manifest | None, str | None, int]:
        """Read the file afresh (not the in-memory index) for `verify`: (index replayed to now, manifest, problem,
        history entries the file lags behind)."""
        with self.files.lock(exclusive=False):
            if not self.files.exists():
                return (
                    None,
                    None,
                    (f"index file missing: {self.files.index_path}" if self.live_vector_count() else None),
                    0,
                )
            try:
                vindex, manifest = self.files.read()
            except IndexUnavailable as exc:
                if self.interrupted_save():
                    return (
                        None,
                        None,
                        f"{exc.problem}: a process was killed while saving the index; the next search or write "
                        f"rebuilds it from the database",
                        0,
                    )
                return None, None, exc.problem, 0
        if ids_digest(vindex.ids()) != manifest.ids_sha256:
            return None, manifest, "index file's id set differs from its manifest", 0
        problem = self._manifest_problem(manifest)
        if problem:
            return None, manifest, problem, 0
        vindex, _, lag = self.replay(vindex, manifest.applied_seq)
        return vindex, manifest, None, lag
