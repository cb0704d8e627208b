"""The knowledge base of past defect cases: SQLite (truth) + content-addressed images + a derived FAISS index.

    kb = KnowledgeBase.open(Path("var/kb"), embedder=embedder)
    case = kb.add(CaseInput(line="battery_tab", defect_class="spatter", image_path="a.png", disposition="rework"))
    hits = kb.search_by_image(image, box, k=5, line="battery_tab")

Removal is soft: `remove` deletes the case from `cases` (so no search can return it) but its last row, and its
vector, stay in `history`; `restore` brings it back under the same id. Edits keep the previous row there too.

Identity: a case is its image bytes, box, line and class (`db.content_key`, stored per case). `add_unique` and
`commit_unique` (used by `kb add` and `kb import`) return the live case that already has the same key instead of adding
a second one, checked inside the write transaction so that concurrent writers cannot both add it.

Images: a committed case always has its image file. `gc` removes files that no case and no history entry cites while
holding the write lock, and every commit checks its images are still there under that same lock (re-copying one from
its source if a `gc` removed it between the copy and the commit).

Filtering: SQLite selects the allowed ids (indexed columns), FAISS searches with an id-bitmap selector. With the exact
index this is exact under any filter; with IVF / HNSW a very selective filter can leave fewer than k hits among the
probed lists, in which case (and directly for small allowed sets) the allowed ids' stored vectors are scanned exactly.
This was chosen over "over-fetch then filter" because a rare line or class would otherwise need an unbounded
over-fetch to find k hits, and silently return fewer."""

from __future__ import annotations

import builtins
import functools
import getpass
import hashlib
import json
import logging
import math
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, ParamSpec, TypeVar, cast

import numpy as np
from pydantic import ValidationError

from defect_agent.errors import DefectAgentError, ImageReadError
from knowledge_base import db
from knowledge_base.case import Case, CaseInput, utcnow
from knowledge_base.db import KnowledgeBaseCorrupt
from knowledge_base.images import ImageStore, StoredImage, decode_image
from knowledge_base.index_sync import IndexSync
from knowledge_base.models import CaseFilter, GcReport, HistoryEntry, KBStats, VerifyReport
from knowledge_base.schema import LATEST, current_version, migrate
from knowledge_base.validate import box_problem
from retrieval.embedding import Embeds
from retrieval.hits import SimilarCase
from retrieval.index import IdFilter, normalize
from retrieval.policy import IndexPolicy
from retrieval.ranking import RankingConfig, fts_document, fts_query, hybrid_rank
from retrieval.store import IndexUnavailable, ids_digest
from vision.detection import Box

log = logging.getLogger(__name__)

EDITABLE = {
    "line",
    "defect_class",
    "disposition",
    "report",
    "root_cause",
    "corrective_action",
    "author",
    "measurements",
    "box",
    "image_path",
}
EXACT_SCAN_MAX = 4096  # allowed ids up to this many: score their stored vectors directly (exact, a few ms)
EMBED_BATCH = 32
# a temp file of an image copy younger than this may belong to a copy in progress in another process: `gc` keeps it
TEMP_GRACE_S = 3600.0

P = ParamSpec("P")
R = TypeVar("R")


class CaseNotFound(DefectAgentError):
    """No case with the requested id in the knowledge base (it may have been removed)."""

    pass


class ModelVersionMismatch(DefectAgentError):
    """Vectors from different embedder versions would be mixed in, or searched against, one knowledge base."""

    pass


@dataclass
class PreparedCase:
    """A validated case whose image is already in the store, waiting for its vector and the commit."""

    item: CaseInput
    stored: StoredImage
    created_at: datetime
    crop: np.ndarray | None = field(default=None, repr=False)  # kept only until embedded
    vector: np.ndarray | None = field(default=None, repr=False)
    model_version: str | None = None  # of a supplied vector

    @property
    def content_sha256(self) -> str:
        """The case's identity (db.content_key): same image bytes, box, line and class = the same case."""
        return db.content_key(self.stored.sha256, self.item.box, self.item.line, self.item.defect_class)


def _actor() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no login name in some containers
        return ""


def _guarded(method: Callable[P, R]) -> Callable[P, R]:
    """Turn a SQLite failure caused by the file (damaged, truncated, locked) into a one-line DefectAgentError that
    names the database and the command that repairs it, instead of a traceback from deep inside a search."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except sqlite3.Error as exc:
            kb = cast("KnowledgeBase", args[0])
            translated = db.sql_error(exc, kb.kb_dir / db.DB_NAME)
            if translated is None:
                raise
            raise translated from exc

    return wrapper


def _crop(image: np.ndarray, box: Box | None, source: str) -> np.ndarray:
    from vision.crops import crop_region

    try:
        return crop_region(image, box)
    except ValueError as exc:
        raise ImageReadError(f"{source}: {exc}") from exc


class KnowledgeBase:
    """The knowledge base in one folder: cases in SQLite, their images in an `ImageStore`, and the FAISS
    index that `IndexSync` keeps in step. Open it with `KnowledgeBase.open`."""

    def __init__(
        self,
        kb_dir: Path,
        conn,
        embedder: Embeds | None,
        policy: IndexPolicy,
        ranking: RankingConfig,
        embedder_factory: Callable[[], Embeds] | None = None,
    ) -> None:
        self.kb_dir = kb_dir
        self.conn = conn
        self._embedder = embedder
        self._embedder_factory = embedder_factory
        self.policy = policy
        self.ranking = ranking
        self.images = ImageStore(kb_dir)
        self.index = IndexSync(conn, kb_dir, policy)
        self._lock = threading.RLock()
        self._allowed_cache: OrderedDict[tuple, IdFilter | None] = OrderedDict()

    # lifecycle ------------------------------------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        kb_dir: Path | str,
        embedder: Embeds | None = None,
        *,
        policy: IndexPolicy | None = None,
        ranking: RankingConfig | None = None,
        embedder_factory: Callable[[], Embeds] | None = None,
        create: bool = True,
    ) -> KnowledgeBase:
        """Open (and with `create`, initialise) the knowledge base in `kb_dir`; runs pending schema migrations.
        `embedder_factory` is called the first time an embedder is needed, when `embedder` is None."""
        kb_dir = Path(kb_dir).expanduser().resolve()
        db_path = kb_dir / db.DB_NAME
        if not db_path.exists():
            if not create:
                raise DefectAgentError(
                    f"no knowledge base at {kb_dir}: create one with `defect-agent kb add` or "
                    f"`defect-agent kb import`, or pass --kb DIR"
                )
            kb_dir.mkdir(parents=True, exist_ok=True)
        elif db_path.is_file() and db_path.stat().st_size == 0 and ImageStore(kb_dir).has_files():
            # SQLite would take an empty file for a new database and silently start an empty knowledge base
            raise KnowledgeBaseCorrupt(
                f"knowledge base database {db_path} is empty (0 bytes) although {kb_dir / 'images'} holds images: "
                f"it was truncated; {db.repair_hint(kb_dir)}"
            )
        conn = None
        try:
            conn = db.connect(db_path)
            applied = migrate(conn)
        except sqlite3.Error as exc:
            if conn is not None:
                conn.close()
            translated = db.sql_error(exc, db_path)
            if translated is None:
                raise
            raise translated from exc
        except RuntimeError as exc:
            if conn is not None:
                conn.close()
            raise DefectAgentError(str(exc)) from exc
        if applied:
            log.info("knowledge base %s: schema migrated to version %d (%s)", kb_dir, LATEST, applied)
        return cls(
            kb_dir, conn, embedder, policy or IndexPolicy.from_config(), ranking or RankingConfig(), embedder_factory
        )

    @_guarded
    def close(self) -> None:
        """Persist index changes not yet written and close the database."""
        with self._lock:
            if self.conn is None:
                return
            try:
                self.index.flush()
            finally:
                self.conn.close()
                self.conn = None

    def __enter__(self) -> KnowledgeBase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # embedder ------------------------------------------------------------------------------------------------
    @property
    def embedder(self) -> Embeds | None:
        if self._embedder is None and self._embedder_factory is not None:
            self._embedder = self._embedder_factory()
            self._embedder_factory = None
        return self._embedder

    def _require_embedder(self, why: str) -> Embeds:
        embedder = self.embedder
        if embedder is None:
            raise DefectAgentError(f"{why} needs an embedder: open the knowledge base with one, or supply vectors")
        return embedder

    def _embed_crops(self, crops: list[np.ndarray], progress: bool = False) -> tuple[np.ndarray, str]:
        embedder = self._require_embedder("embedding a case image")
        out = []
        starts = range(0, len(crops), EMBED_BATCH)
        if progress and len(crops) > EMBED_BATCH:
            from tqdm import tqdm

            starts = tqdm(starts, desc="embed", unit="batch")
        for start in starts:
            out.append(np.asarray(embedder.embed_images(crops[start : start + EMBED_BATCH]), dtype=np.float32))
        vectors = normalize(np.concatenate(out)) if out else np.empty((0, embedder.dim), dtype=np.float32)
        return vectors, embedder.version

    def _check_query_version(self) -> None:
        """Query vectors from this KB's embedder must come from the model that made the stored vectors."""
        embedder = self._embedder
        stored = self.index.model_version()
        if embedder is not None and stored is not None and embedder.version != stored and self._has_vectors():
            raise ModelVersionMismatch(
                f"the knowledge base's vectors ({self.kb_dir / db.DB_NAME}) were made by embedder {stored!r} but the "
                f"loaded embedder is {embedder.version!r}: re-embed them with `defect-agent kb rebuild --reembed`"
            )

    def _has_vectors(self) -> bool:
        return self.conn.execute("SELECT 1 FROM vectors LIMIT 1").fetchone() is not None

    # adding ---------------------------------------------------------------------------------------------------
    @_guarded
    def prepare_case(
        self,
        item: CaseInput,
        vector: np.ndarray | Sequence[float] | None = None,
        *,
        created_at: datetime | None = None,
        model_version: str | None = None,
    ) -> PreparedCase:
        """Validate a case, read its image (must decode; the box must overlap it) and copy it into the store."""
        data = self.images.read_source(item.image_path)
        image = decode_image(data, item.image_path)
        if item.box is not None:
            problem = box_problem(item.box, width=image.shape[1], height=image.shape[0])
            if problem:
                raise ImageReadError(f"{item.image_path}: {problem}")
        crop = _crop(image, item.box, item.image_path)
        vec = None
        if vector is not None:
            with self._lock:
                dim = self.index.dim() if self._has_vectors() else None
            try:
                vec = normalize(np.asarray(vector, dtype=np.float32).reshape(1, -1), dim)[0]
            except ValueError as exc:
                raise DefectAgentError(f"{item.image_path}: bad vector: {exc}") from exc
        stored = self.images.put(data, Path(item.image_path).suffix)
        return PreparedCase(
            item=item,
            stored=stored,
            created_at=created_at or utcnow(),
            crop=None if vec is not None else crop,
            vector=vec,
            model_version=model_version,
        )

    @_guarded
    def embed_prepared(self, prepared: Sequence[PreparedCase], progress: bool = False) -> None:
        todo = [p for p in prepared if p.vector is None]
        if not todo:
            return
        vectors, version = self._embed_crops([cast(np.ndarray, p.crop) for p in todo], progress=progress)
        for p, v in zip(todo, vectors):
            p.vector, p.model_version, p.crop = v, version, None

    @_guarded
    def commit_prepared(self, prepared: Sequence[PreparedCase], actor: str | None = None) -> list[Case]:
        """Write prepared (and embedded) cases in ONE transaction: all of them or none."""
        results = self._commit(prepared, actor, unique=False)
        return self._get_many([case_id for case_id, _ in results])

    @_guarded
    def commit_unique(self, prepared: Sequence[PreparedCase], actor: str | None = None) -> list[tuple[int, bool]]:
        """Like commit_prepared, but a case whose content key (image bytes + box + line + class) is already live,
        or came earlier in `prepared`, is not added again. Returns (case id, added) per prepared case, in order;
        checked inside the write transaction, so two processes submitting the same case add it once."""
        return self._commit(prepared, actor, unique=True)

    def _commit(self, prepared: Sequence[PreparedCase], actor: str | None, unique: bool) -> list[tuple[int, bool]]:
        if not prepared:
            return []
        if not unique and any(p.vector is None for p in prepared):
            raise DefectAgentError("commit_prepared: every case needs a vector (call embed_prepared first)")
        actor = _actor() if actor is None else actor
        with self._lock:
            results: list[tuple[int, bool]] = []
            try:
                with db.write_txn(self.conn):
                    with_vector = [p for p in prepared if p.vector is not None]
                    version = self._claim_for(with_vector) if with_vector else ""
                    for p in prepared:
                        # in order, inside the transaction: a repeat later in the batch finds the row added above
                        existing = self._live_with_key(p.content_sha256) if unique else None
                        if existing is not None:
                            results.append((existing, False))
                            continue
                        if p.vector is None:
                            raise DefectAgentError(
                                f"{p.item.image_path}: no vector to commit (call embed_prepared first)"
                            )
                        self._ensure_stored(p)
                        results.append((self._insert(p, version, actor), True))
            except BaseException:
                self.discard_images([p.stored for p in prepared])
                raise
            self.discard_images([p.stored for p, (_, added) in zip(prepared, results) if not added])
            if any(added for _, added in results):
                self._after_write()
            return results

    def _live_with_key(self, key: str) -> int | None:
        row = self.conn.execute("SELECT MIN(id) FROM cases WHERE content_sha256 = ?", (key,)).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def _ensure_stored(self, p: PreparedCase) -> None:
        """Inside the write transaction: the prepared image is still in the store. A `gc` between the copy and this
        commit may have removed it (it cited nothing then), so copy it again from its source."""
        if self.images.absolute(p.stored.rel_path).is_file():
            return
        data = self.images.read_source(p.item.image_path)
        if hashlib.sha256(data).hexdigest() != p.stored.sha256:
            raise ImageReadError(f"{p.item.image_path} changed while it was being added: add it again")
        again = self.images.put(data, Path(p.item.image_path).suffix)
        p.stored = StoredImage(again.sha256, again.rel_path, created=again.created or p.stored.created)

    @_guarded
    def find_present(self, prepared: Sequence[PreparedCase]) -> dict[int, int]:
        """{position in `prepared`: id of the live case with the same content key} (before embedding, so a
        re-import embeds nothing it already holds)."""
        with self._lock:
            out = {}
            for i, p in enumerate(prepared):
                existing = self._live_with_key(p.content_sha256)
                if existing is not None:
                    out[i] = existing
            return out

    def _claim_vector_space(self, dim: int, version: str | None) -> str:
        """Inside a write transaction: check (or, for the first vectors, record) the embedding dimension and the
        embedder version. A vector without a version takes the loaded embedder's, else the stored one."""
        stored_dim, stored_version = self.index.dim(), self.index.model_version()
        if version is None:
            version = self._embedder.version if self._embedder is not None else (stored_version or "external")
        if stored_dim is not None and self._has_vectors():
            if dim != stored_dim:
                raise DefectAgentError(
                    f"vector dimension {dim} differs from the knowledge base's {stored_dim} "
                    f"({self.kb_dir / db.DB_NAME}): a different embedder? `defect-agent kb rebuild --reembed` "
                    f"re-embeds the base with the configured one"
                )
            if version != stored_version:
                raise ModelVersionMismatch(
                    f"vectors from embedder {version!r} cannot join a knowledge base embedded with {stored_version!r}: "
                    f"re-embed it with `defect-agent kb rebuild --reembed` first"
                )
        db.set_meta(self.conn, "dim", str(dim))
        db.set_meta(self.conn, "model_version", version)
        return version

    def _claim_for(self, prepared: Sequence[PreparedCase]) -> str:
        dims = {int(cast(np.ndarray, p.vector).shape[0]) for p in prepared}
        versions = {p.model_version for p in prepared if p.model_version}
        if len(dims) > 1 or len(versions) > 1:
            raise DefectAgentError(f"cases mix vector dimensions {sorted(dims)} / embedder versions {sorted(versions)}")
        return self._claim_vector_space(dims.pop(), versions.pop() if versions else None)

    def _insert(self, p: PreparedCase, version: str, actor: str) -> int:
        item = p.item
        values = db.case_values(
            line=item.line,
            defect_class=item.defect_class,
            image_path=p.stored.rel_path,
            image_sha256=p.stored.sha256,
            box=item.box,
            report=item.report,
            disposition=item.disposition.value,
            root_cause=item.root_cause,
            corrective_action=item.corrective_action,
            author=item.author,
            measurements=item.measurements,
            created_at=p.created_at,
            updated_at=utcnow(),
        )
        case_id = db.insert_case(self.conn, values)
        self._write_vector(case_id, cast(np.ndarray, p.vector), version)
        self._write_fts(case_id, values)
        self._log(case_id, "add", None, {"id": case_id, **values}, vector_changed=True, actor=actor)
        return case_id

    @_guarded
    def add(
        self,
        case_input: CaseInput,
        vector: np.ndarray | Sequence[float] | None = None,
        *,
        created_at: datetime | None = None,
        model_version: str | None = None,
        actor: str | None = None,
    ) -> Case:
        """Add one case. Without `vector`, the box region (crop_region) of the image is embedded."""
        prepared = self.prepare_case(case_input, vector, created_at=created_at, model_version=model_version)
        try:
            self.embed_prepared([prepared])
        except BaseException:
            self.discard_images([prepared.stored])
            raise
        return self.commit_prepared([prepared], actor=actor)[0]

    @_guarded
    def add_unique(
        self,
        case_input: CaseInput,
        vector: np.ndarray | Sequence[float] | None = None,
        *,
        created_at: datetime | None = None,
        model_version: str | None = None,
        actor: str | None = None,
    ) -> tuple[Case, bool]:
        """Add one case unless a live case has the same image bytes, box, line and class: then that case and
        False (nothing embedded, nothing written). Safe to repeat after a crash: a retry never adds it twice."""
        prepared = self.prepare_case(case_input, vector, created_at=created_at, model_version=model_version)
        try:
            existing = self.find_present([prepared]).get(0)
            if existing is None:
                self.embed_prepared([prepared])
        except BaseException:
            self.discard_images([prepared.stored])
            raise
        if existing is not None:
            self.discard_images([prepared.stored])
            return self.get(existing), False
        case_id, added = self.commit_unique([prepared], actor=actor)[0]
        return self.get(case_id), added

    @_guarded
    def add_many(
        self,
        items: Iterable[CaseInput],
        vectors: Sequence[np.ndarray | None] | np.ndarray | None = None,
        *,
        created_at: Sequence[datetime | None] | None = None,
        model_version: str | None = None,
        progress: bool = True,
        actor: str | None = None,
    ) -> list[Case]:
        """Add cases in one transaction (all or none); images are embedded in batches."""
        items = list(items)
        vectors = [None] * len(items) if vectors is None else list(vectors)
        created = [None] * len(items) if created_at is None else list(created_at)
        if not (len(vectors) == len(created) == len(items)):
            raise ValueError("items, vectors and created_at must have the same length")
        prepared: list[PreparedCase] = []
        try:
            rows = zip(items, vectors, created)
            if progress and len(items) > 1:
                from tqdm import tqdm

                rows = tqdm(rows, total=len(items), desc="read images", unit="case")
            for item, vec, when in rows:
                prepared.append(self.prepare_case(item, vec, created_at=when, model_version=model_version))
            self.embed_prepared(prepared, progress=progress)
        except BaseException:
            self.discard_images([p.stored for p in prepared])
            raise
        return self.commit_prepared(prepared, actor=actor)

    def discard_images(self, stored: Iterable[StoredImage]) -> None:
        """Remove images this attempt created, unless a committed case (or history row) now cites them. Decided
        and done under the write lock, so a concurrent commit of the same picture either is seen here or finds
        the file gone and copies it again (`_ensure_stored`). Never raises: it runs while another error unwinds."""
        created = [s for s in stored if s.created]
        if not created:
            return
        try:
            with self._lock, db.write_txn(self.conn):
                for s in created:
                    if not self._image_cited(s.rel_path):
                        self.images.discard(s)
        except Exception as exc:  # the error being unwound matters more; `kb gc` removes what is left
            log.warning("could not remove %d uncommitted image copy(ies): %s", len(created), exc)

    def _image_cited(self, rel_path: str) -> bool:
        if self.conn.execute("SELECT 1 FROM cases WHERE image_path = ? LIMIT 1", (rel_path,)).fetchone():
            return True
        pattern = f'%"image_path": {json.dumps(rel_path)}%'
        return (
            self.conn.execute(
                "SELECT 1 FROM history WHERE before_json LIKE ? OR after_json LIKE ? LIMIT 1", (pattern, pattern)
            ).fetchone()
            is not None
        )

    # rows, vectors, keyword index, history ------------------------------------------------------------------
    def _write_vector(self, case_id: int, vector: np.ndarray, version: str) -> None:
        self.conn.execute(
            "INSERT INTO vectors(case_id, model_version, dim, vector) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(case_id) DO UPDATE SET model_version = excluded.model_version, dim = excluded.dim, "
            "vector = excluded.vector",
            (case_id, version, int(vector.shape[0]), db.vector_blob(vector)),
        )

    def _write_fts(self, case_id: int, values: dict) -> None:
        self.conn.execute("DELETE FROM cases_fts WHERE rowid = ?", (case_id,))
        self.conn.execute(
            "INSERT INTO cases_fts(rowid, body) VALUES (?, ?)",
            (case_id, fts_document(values["report"], values["root_cause"], values["corrective_action"])),
        )

    def _log(
        self,
        case_id: int,
        op: str,
        before: dict | None,
        after: dict | None,
        *,
        vector_changed: bool,
        actor: str,
        vector: bytes | None = None,
        model_version: str | None = None,
    ) -> None:
        self.conn.execute(
            "INSERT INTO history(case_id, op, before_json, after_json, vector_changed, vector, model_version, actor, at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                case_id,
                op,
                None if before is None else json.dumps(before, ensure_ascii=False),
                None if after is None else json.dumps(after, ensure_ascii=False),
                int(vector_changed),
                vector,
                model_version,
                actor,
                db.iso(utcnow()),
            ),
        )

    def _after_write(self) -> None:
        self._allowed_cache.clear()
        self.index.after_write()

    def _row(self, case_id: int):
        return self.conn.execute("SELECT * FROM cases WHERE id = ?", (case_id,)).fetchone()

    def _not_found(self, case_id: int) -> CaseNotFound:
        removed = self.conn.execute(
            "SELECT 1 FROM history WHERE case_id = ? AND op = 'remove' LIMIT 1", (case_id,)
        ).fetchone()
        if removed:
            return CaseNotFound(
                f"case {case_id} was removed; `defect-agent kb restore {case_id}` brings it back "
                f"(`defect-agent kb show {case_id} --history` shows it)"
            )
        return CaseNotFound(f"no case {case_id} in the knowledge base at {self.kb_dir} (`defect-agent kb list`)")

    # reading --------------------------------------------------------------------------------------------------
    @_guarded
    def get(self, case_id: int) -> Case:
        with self._lock:
            row = self._row(case_id)
            if row is None:
                raise self._not_found(case_id)
            return db.case_from_row(row, self.kb_dir)

    def _get_many(self, ids: Sequence[int]) -> list[Case]:
        rows = {}
        for chunk in db.in_chunks(list(ids)):
            for row in self.conn.execute(f"SELECT * FROM cases WHERE id IN ({','.join('?' * len(chunk))})", chunk):
                rows[row["id"]] = row
        return [db.case_from_row(rows[i], self.kb_dir) for i in ids if i in rows]

    @_guarded
    def list(
        self, filters: CaseFilter | None = None, *, limit: int | None = None, offset: int = 0, **filter_fields: Any
    ) -> list[Case]:
        """Cases matching the filters, oldest first."""
        flt = self._filter(filters, filter_fields)
        where, params = flt.sql("c")
        sql = f"SELECT c.* FROM cases c WHERE {where} ORDER BY c.id"
        if limit is not None:
            sql += " LIMIT ? OFFSET ?"
            params = [*params, int(limit), int(offset)]
        with self._lock:
            return [db.case_from_row(r, self.kb_dir) for r in self.conn.execute(sql, params)]

    @_guarded
    def count(self, filters: CaseFilter | None = None, **filter_fields: Any) -> int:
        where, params = self._filter(filters, filter_fields).sql("c")
        with self._lock:
            return int(self.conn.execute(f"SELECT COUNT(*) FROM cases c WHERE {where}", params).fetchone()[0])

    @_guarded
    def history(self, case_id: int) -> builtins.list[HistoryEntry]:
        """Every recorded change of a case, oldest first (also for removed cases)."""
        with self._lock:
            rows = self.conn.execute("SELECT * FROM history WHERE case_id = ? ORDER BY seq", (case_id,)).fetchall()
        out = []
        for r in rows:
            before = None if r["before_json"] is None else db.case_from_row(json.loads(r["before_json"]), self.kb_dir)
            after = None if r["after_json"] is None else db.case_from_row(json.loads(r["after_json"]), self.kb_dir)
            out.append(
                HistoryEntry(
                    seq=r["seq"],
                    case_id=r["case_id"],
                    op=r["op"],
                    at=datetime.fromisoformat(r["at"]),
                    actor=r["actor"],
                    before=before,
                    after=after,
                )
            )
        return out

    @staticmethod
    def _filter(filters: CaseFilter | None, fields: dict[str, Any]) -> CaseFilter:
        fields = {k: v for k, v in fields.items() if v is not None}
        if filters is None:
            try:
                return CaseFilter(**fields)
            except ValidationError as exc:
                raise DefectAgentError(f"bad filter: {exc.errors()[0]['msg']}") from exc
        return filters.model_copy(update=fields) if fields else filters

    # editing --------------------------------------------------------------------------------------------------
    @_guarded
    def edit(
        self,
        case_id: int,
        *,
        vector: np.ndarray | Sequence[float] | None = None,
        actor: str | None = None,
        **changes: Any,
    ) -> Case:
        """Change fields of a case; a new image or box is re-embedded (or takes `vector`). The old row is kept in
        the history."""
        unknown = set(changes) - EDITABLE
        if unknown:
            raise DefectAgentError(f"cannot edit {', '.join(sorted(unknown))}; editable: {', '.join(sorted(EDITABLE))}")
        actor = _actor() if actor is None else actor
        with self._lock:
            current = self.get(case_id)
            fields = current.model_dump(include=set(CaseInput.model_fields))
            new_image = "image_path" in changes and changes["image_path"] is not None
            if not new_image:
                fields["image_path"] = current.image_path
            fields.update(changes)
            try:
                item = CaseInput.model_validate(fields)
            except ValidationError as exc:
                raise DefectAgentError(
                    f"case {case_id}: invalid change: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}"
                ) from exc
            box_changed = "box" in changes and item.box != current.box
            stored = None
            prepared: PreparedCase | None = None
            new_vector = None
            version = None
            if new_image or box_changed or vector is not None:
                prepared = self.prepare_case(item, vector)
                stored = prepared.stored
                try:
                    self.embed_prepared([prepared])
                except BaseException:
                    self.discard_images([stored])
                    raise
                new_vector, version = prepared.vector, prepared.model_version
            try:
                with db.write_txn(self.conn):
                    if prepared is not None:
                        self._ensure_stored(prepared)
                        stored = prepared.stored
                    row = self._row(case_id)
                    if row is None:  # removed by another process since `get` above
                        raise self._not_found(case_id)
                    before = db.row_dict(row)
                    values = db.case_values(
                        line=item.line,
                        defect_class=item.defect_class,
                        image_path=stored.rel_path if stored else before["image_path"],
                        image_sha256=stored.sha256 if stored else before["image_sha256"],
                        box=item.box,
                        report=item.report,
                        disposition=item.disposition.value,
                        root_cause=item.root_cause,
                        corrective_action=item.corrective_action,
                        author=item.author,
                        measurements=item.measurements,
                        created_at=current.created_at,
                        updated_at=utcnow(),
                    )
                    db.update_case(self.conn, case_id, values)
                    if new_vector is not None:
                        version = self._claim_vector_space(int(new_vector.shape[0]), version)
                        self._write_vector(case_id, new_vector, version)
                    self._write_fts(case_id, values)
                    self._log(
                        case_id,
                        "edit",
                        before,
                        {"id": case_id, **values},
                        vector_changed=new_vector is not None,
                        actor=actor,
                    )
            except BaseException:
                if stored is not None:
                    self.discard_images([stored])
                raise
            self._after_write()
            return self.get(case_id)

    @_guarded
    def remove(self, case_id: int, actor: str | None = None) -> Case:
        """Take a case out of the knowledge base (and every search) at once; the history keeps its row and vector."""
        actor = _actor() if actor is None else actor
        with self._lock:
            with db.write_txn(self.conn):
                row = self._row(case_id)
                if row is None:
                    raise self._not_found(case_id)
                removed = db.case_from_row(row, self.kb_dir)
                vec = self.conn.execute(
                    "SELECT vector, model_version FROM vectors WHERE case_id = ?", (case_id,)
                ).fetchone()
                self.conn.execute("DELETE FROM vectors WHERE case_id = ?", (case_id,))
                self.conn.execute("DELETE FROM cases_fts WHERE rowid = ?", (case_id,))
                self.conn.execute("DELETE FROM cases WHERE id = ?", (case_id,))
                self._log(
                    case_id,
                    "remove",
                    db.row_dict(row),
                    None,
                    vector_changed=True,
                    actor=actor,
                    vector=None if vec is None else vec["vector"],
                    model_version=None if vec is None else vec["model_version"],
                )
            self._after_write()
            return removed

    @_guarded
    def restore(self, case_id: int, actor: str | None = None) -> Case:
        """Bring back a removed case under its old id (re-embedded if the embedder changed since)."""
        actor = _actor() if actor is None else actor
        with self._lock:
            if self._row(case_id) is not None:
                raise DefectAgentError(f"case {case_id} is in the knowledge base (nothing to restore)")
            h = self.conn.execute(
                "SELECT * FROM history WHERE case_id = ? AND op = 'remove' ORDER BY seq DESC LIMIT 1", (case_id,)
            ).fetchone()
            if h is None:
                raise CaseNotFound(f"case {case_id} was never removed from the knowledge base at {self.kb_dir}")
            row = json.loads(h["before_json"])
            vector, version = None, h["model_version"]
            if h["vector"] is not None:
                vector = db.blob_vector(h["vector"])
            stored_version = self.index.model_version()
            if vector is None or (stored_version is not None and version != stored_version and self._has_vectors()):
                image = self.images.read(row["image_path"])
                box = (
                    None
                    if row["box_x1"] is None
                    else Box(x1=row["box_x1"], y1=row["box_y1"], x2=row["box_x2"], y2=row["box_y2"])
                )
                vectors, version = self._embed_crops([_crop(image, box, row["image_path"])])
                vector = vectors[0]
            with db.write_txn(self.conn):
                values = {k: v for k, v in row.items() if k != "id"}
                values["updated_at"] = db.iso(utcnow())
                # history rows written before schema v4 carry no content key
                values["content_sha256"] = db.content_key(
                    row["image_sha256"], db.row_box(row), row["line"], row["defect_class"]
                )
                db.insert_case(self.conn, values, case_id=case_id)
                version = self._claim_vector_space(int(vector.shape[0]), version)
                self._write_vector(case_id, vector, version)
                self._write_fts(case_id, values)
                self._log(case_id, "restore", None, {"id": case_id, **values}, vector_changed=True, actor=actor)
            self._after_write()
            return self.get(case_id)

    # searching ------------------------------------------------------------------------------------------------
    def _allowed(self, flt: CaseFilter, ntotal: int) -> IdFilter | None:
        """Ids passing the filter (None = every indexed id passes); cached until the next write."""
        key = (flt.key(), self.index.applied_seq, self.index.generation)
        if key in self._allowed_cache:
            self._allowed_cache.move_to_end(key)
            return self._allowed_cache[key]
        where, params = flt.sql("c")
        ids = np.array(
            [
                r[0]
                for r in self.conn.execute(
                    f"SELECT c.id FROM cases c JOIN vectors v ON v.case_id = c.id WHERE {where}", params
                )
            ],
            dtype=np.int64,
        )
        allowed = None if len(ids) >= ntotal else IdFilter(ids)
        self._allowed_cache[key] = allowed
        while len(self._allowed_cache) > 32:
            self._allowed_cache.popitem(last=False)
        return allowed

    def _exact_scan(self, query: np.ndarray, ids: np.ndarray, k: int) -> builtins.list[tuple[int, float]]:
        found_ids, vectors = self.index.live_vectors([int(i) for i in ids])
        if len(found_ids) == 0:
            return []
        scores = vectors @ query
        order = np.argsort(-scores, kind="stable")[:k]
        return [(int(found_ids[i]), float(scores[i])) for i in order]

    def _search_vector(
        self, query: np.ndarray, k: int, flt: CaseFilter, exclude: AbstractSet[int] = frozenset()
    ) -> builtins.list[tuple[int, float]]:
        vindex = self.index.ready()
        if vindex is None or vindex.ntotal == 0 or k <= 0:
            return []
        if query.shape[0] != vindex.dim:
            raise DefectAgentError(f"query vector has {query.shape[0]} dimensions, the knowledge base {vindex.dim}")
        want = k + len(exclude)
        allowed = None if flt.is_empty() else self._allowed(flt, vindex.ntotal)
        if allowed is not None and len(allowed) == 0:
            return []
        if allowed is not None and vindex.spec.kind != "flat" and len(allowed) <= EXACT_SCAN_MAX:
            hits = self._exact_scan(query, allowed.ids, want)
        else:
            hits = vindex.search(query, want, allowed)[0]
            if allowed is not None and vindex.spec.kind != "flat" and len(hits) < min(want, len(allowed)):
                hits = self._exact_scan(query, allowed.ids, want)  # approximate index ran dry under the filter
        return [h for h in hits if h[0] not in exclude][:k]

    def _hydrate(
        self, hits: Sequence[tuple[int, float]], extra: dict[int, dict] | None = None
    ) -> builtins.list[SimilarCase]:
        cases = {c.id: c for c in self._get_many([h[0] for h in hits])}
        out = []
        for case_id, sim in hits:
            case = cases.get(case_id)
            if case is None:  # removed behind the index's back (not through this API): `kb verify` reports it
                log.warning("case %d is in the index but not in the database: run `defect-agent kb verify`", case_id)
                continue
            out.append(
                SimilarCase(
                    case_id=case_id,
                    similarity=round(float(sim), 6),
                    line=case.line,
                    defect_class=case.defect_class,
                    disposition=case.disposition.value,
                    root_cause=case.root_cause,
                    corrective_action=case.corrective_action,
                    report=case.report,
                    **(extra or {}).get(case_id, {}),
                )
            )
        return out

    @_guarded
    def search_by_vector(
        self,
        vector: np.ndarray | Sequence[float],
        k: int = 5,
        line: str | None = None,
        defect_class: str | None = None,
        disposition: str | None = None,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        filters: CaseFilter | None = None,
        exclude: Iterable[int] = (),
    ) -> builtins.list[SimilarCase]:
        """The k cases whose vectors are most similar (cosine) to `vector`, best first, within the filters."""
        flt = self._filter(
            filters,
            {"line": line, "defect_class": defect_class, "disposition": disposition, "since": since, "until": until},
        )
        with self._lock:
            self._check_query_version()
            dim = self.index.dim()
            try:
                query = normalize(np.asarray(vector, dtype=np.float32).reshape(1, -1), dim)[0]
            except ValueError as exc:
                raise DefectAgentError(
                    f"bad query vector for the knowledge base {self.kb_dir} ({dim}-d vectors): {exc}; "
                    f"if the embedder changed, `defect-agent kb rebuild --reembed`"
                ) from exc
            return self._hydrate(self._search_vector(query, k, flt, set(exclude)))

    @_guarded
    def search_by_image(
        self, image: np.ndarray | str | Path, box: Box | None = None, k: int = 5, **filters: Any
    ) -> builtins.list[SimilarCase]:
        """Embed the box region of an image (BGR array or file) and search with it."""
        if not isinstance(image, np.ndarray):
            image = decode_image(self.images.read_source(image), image)
        vectors, _ = self._embed_crops([_crop(image, box, "query image")])
        return self.search_by_vector(vectors[0], k, **filters)

    @_guarded
    def search_by_case(self, case_id: int, k: int = 5, **filters: Any) -> builtins.list[SimilarCase]:
        """Cases similar to a stored one (itself excluded), using its stored vector."""
        with self._lock:
            self.get(case_id)
            row = self.conn.execute("SELECT vector FROM vectors WHERE case_id = ?", (case_id,)).fetchone()
            if row is None:
                raise DefectAgentError(f"case {case_id} has no vector: run `defect-agent kb rebuild`")
            flt = self._filter(None, filters)
            query = normalize(db.blob_vector(row[0])[None, :])[0]
            return self._hydrate(self._search_vector(query, k, flt, {case_id}))

    @_guarded
    def search_by_text(
        self, text: str, k: int = 5, keyword_weight: float | None = None, **filters: Any
    ) -> builtins.list[SimilarCase]:
        """Hybrid search: the text's embedding against case vectors, blended with BM25 over the engineers' words
        (retrieval.ranking.hybrid_rank). Without an embedder the order is by keywords alone (similarity 0)."""
        weight = self.ranking.keyword_weight if keyword_weight is None else float(keyword_weight)
        n_cand = max(k, 1) * self.ranking.candidates_per_k
        flt = self._filter(None, filters)
        with self._lock:
            embedder = self.embedder if weight < 1.0 else None
            sims: dict[int, float] = {}
            query = None
            if embedder is not None and self._has_vectors():
                self._check_query_version()
                query = normalize(np.asarray(embedder.embed_texts([text]), dtype=np.float32))[0]
                sims = dict(self._search_vector(query, n_cand, flt))
            elif weight < 1.0:
                log.warning("no embedder: ranking text search by keywords only")
            keyword = self._keyword_scores(text, n_cand, flt)
            if query is not None:
                missing = [i for i in keyword if i not in sims]
                if missing:
                    ids, vectors = self.index.live_vectors(missing)
                    sims.update({int(i): float(s) for i, s in zip(ids, vectors @ query)})
            ranked = hybrid_rank(sims, keyword, weight, k)
            extra = {
                r.case_id: {"score": round(r.score, 6), "keyword_score": round(r.keyword_score, 6)} for r in ranked
            }
            return self._hydrate([(r.case_id, r.similarity or 0.0) for r in ranked], extra)

    def _keyword_scores(self, text: str, limit: int, flt: CaseFilter) -> dict[int, float]:
        match = fts_query(text)
        if match is None:
            return {}
        where, params = flt.sql("c")
        rows = self.conn.execute(
            f"SELECT f.rowid, -bm25(cases_fts) AS s FROM cases_fts f JOIN cases c ON c.id = f.rowid "
            f"WHERE cases_fts MATCH ? AND {where} ORDER BY bm25(cases_fts) LIMIT ?",
            [match, *params, limit],
        ).fetchall()
        return {int(r[0]): float(r[1]) for r in rows if r[1] > 0}

    # for the pipeline -----------------------------------------------------------------------------------------
    @_guarded
    def class_prototypes(self, line: str) -> dict[str, np.ndarray]:
        """defect class -> unit-length mean of the line's case vectors (disposition 'accept' excluded)."""
        with self._lock:
            version = self.index.model_version()
            rows = self.conn.execute(
                "SELECT c.defect_class, v.vector FROM cases c JOIN vectors v ON v.case_id = c.id "
                "WHERE c.line = ? AND c.disposition != 'accept' AND v.model_version = ?",
                (line, version),
            ).fetchall()
        sums: dict[str, np.ndarray] = {}
        for cls_name, blob in rows:
            vec = db.blob_vector(blob)
            sums[cls_name] = sums.get(cls_name, 0) + vec
        return {name: (s / np.linalg.norm(s)).astype(np.float32) for name, s in sums.items() if np.linalg.norm(s) > 0}

    @_guarded
    def snapshot_id(self) -> str:
        """ "<cases>@<12 hex>": changes with any add / edit / remove or a new embedder; recorded in verdicts."""
        with self._lock:
            ids = np.array([r[0] for r in self.conn.execute("SELECT id FROM cases ORDER BY id")], dtype=np.int64)
            seq = db.max_seq(self.conn)
            version = self.index.model_version() or ""
        digest = ids_digest(ids)
        tag = hashlib.sha256(f"{digest}:{version}:{seq}".encode()).hexdigest()[:12]
        return f"{len(ids)}@{tag}"

    # maintenance ----------------------------------------------------------------------------------------------
    @_guarded
    def rebuild(self, reembed: bool = False, progress: bool = True) -> VerifyReport:
        """Re-derive the FAISS index and the keyword index from SQLite (repairs a missing, corrupt or inconsistent
        index). Cases without a vector are embedded when an embedder is available; `reembed` re-embeds every case
        (needed after changing the embedder)."""
        with self._lock:
            if reembed:
                self._reembed(None, progress)
            else:
                missing = [
                    r[0]
                    for r in self.conn.execute(
                        "SELECT c.id FROM cases c LEFT JOIN vectors v ON v.case_id = c.id "
                        "WHERE v.case_id IS NULL OR v.model_version != COALESCE((SELECT value FROM meta "
                        "WHERE key = 'model_version'), v.model_version)"
                    )
                ]
                if missing:
                    if self._embedder is not None or self._embedder_factory is not None:
                        try:
                            self._reembed(missing, progress)
                        except DefectAgentError as exc:  # still rebuild the index for every case that has a vector
                            log.warning("could not embed %d case(s) lacking a vector: %s", len(missing), exc)
                    else:
                        log.warning(
                            "%d cases have no usable vector and no embedder is loaded: they stay out of "
                            "the index (`defect-agent kb rebuild --reembed` fixes it)",
                            len(missing),
                        )
            with db.write_txn(self.conn):
                self.conn.execute("DELETE FROM cases_fts")
                for r in self.conn.execute("SELECT id, report, root_cause, corrective_action FROM cases").fetchall():
                    self.conn.execute(
                        "INSERT INTO cases_fts(rowid, body) VALUES (?, ?)", (r[0], fts_document(r[1], r[2], r[3]))
                    )
            self._allowed_cache.clear()
            self.index.rebuild(progress=progress)
            return self.verify()

    def _reembed(self, ids: builtins.list[int] | None, progress: bool) -> None:
        rows = self.conn.execute("SELECT * FROM cases ORDER BY id").fetchall()
        if ids is not None:
            wanted = set(ids)
            rows = [r for r in rows if r["id"] in wanted]
        if not rows:
            return
        self._require_embedder("re-embedding cases")
        new: list[tuple[int, np.ndarray]] = []
        version = None
        it = range(0, len(rows), 256)
        if progress and len(rows) > 256:
            from tqdm import tqdm

            it = tqdm(it, desc="re-embed", unit="256 cases")
        for start in it:
            chunk = rows[start : start + 256]
            crops = []
            for r in chunk:
                box = (
                    None if r["box_x1"] is None else Box(x1=r["box_x1"], y1=r["box_y1"], x2=r["box_x2"], y2=r["box_y2"])
                )
                crops.append(_crop(self.images.read(r["image_path"]), box, r["image_path"]))
            vectors, version = self._embed_crops(crops)
            new += [(r["id"], v) for r, v in zip(chunk, vectors)]
        assert version is not None  # rows is not empty, so the loop above ran and set it
        with db.write_txn(self.conn):
            if ids is None:  # a full re-embed may change embedder and dimension
                db.set_meta(self.conn, "dim", str(new[0][1].shape[0]))
                db.set_meta(self.conn, "model_version", version)
            else:
                self._claim_vector_space(int(new[0][1].shape[0]), version)
            for case_id, vec in new:
                self._write_vector(case_id, vec, version)

    @_guarded
    def verify(self) -> VerifyReport:
        """Compare the index file (replayed to now) with SQLite: ids, counts, embedder versions, file soundness;
        check the database file itself (SQLite's quick_check), that every image a case or its history cites is in
        the store, and list the image files nothing cites (orphans: reported, not a fault; `gc` removes them)."""
        with self._lock:
            try:
                self.index.ready()  # a torn save (a writer killed mid-save, see index_sync) is rebuilt and saved here
            except IndexUnavailable:
                pass  # inspect_file below names the problem
            check = [str(r[0]) for r in self.conn.execute("PRAGMA quick_check(20)")]
            with db.read_txn(self.conn):
                version = self.index.model_version()
                dim = self.index.dim()
                n_cases = int(self.conn.execute("SELECT COUNT(*) FROM cases").fetchone()[0])
                db_ids = np.array(
                    [
                        r[0]
                        for r in self.conn.execute(
                            "SELECT c.id FROM cases c JOIN vectors v ON v.case_id = c.id WHERE v.model_version = ? "
                            "AND v.dim = ? AND length(v.vector) = 4 * v.dim ORDER BY c.id",
                            (version, dim),
                        )
                    ],
                    dtype=np.int64,
                )
                wrong_dim = [
                    r[0]
                    for r in self.conn.execute(
                        "SELECT v.case_id FROM vectors v JOIN cases c ON c.id = v.case_id "
                        "WHERE v.dim != ? OR length(v.vector) != 4 * v.dim ORDER BY v.case_id",
                        (dim,),
                    )
                ]
                non_finite = [
                    int(r[0])
                    for r in self.conn.execute("SELECT id, measurements FROM cases WHERE measurements != '{}'")
                    if not all(isinstance(v, int | float) and math.isfinite(v) for v in json.loads(r[1]).values())
                ]
                refs = db.image_refs(self.conn)
                no_vec = [
                    r[0]
                    for r in self.conn.execute(
                        "SELECT c.id FROM cases c LEFT JOIN vectors v ON v.case_id = c.id "
                        "WHERE v.case_id IS NULL OR v.model_version != ? ORDER BY c.id",
                        (version or "",),
                    )
                ]
                versions = {
                    r[0]: int(r[1])
                    for r in self.conn.execute(
                        "SELECT v.model_version, COUNT(*) FROM vectors v JOIN cases c ON c.id = v.case_id "
                        "GROUP BY v.model_version"
                    )
                }
                fts_bad = self.conn.execute(
                    "SELECT (SELECT COUNT(*) FROM cases_fts) != (SELECT COUNT(*) FROM cases) OR EXISTS ("
                    "SELECT 1 FROM cases_fts f LEFT JOIN cases c ON c.id = f.rowid WHERE c.id IS NULL)"
                ).fetchone()[0]
            vindex, manifest, problem, lag = self.index.inspect_file()
            missing_images = sorted(rel for rel in refs if not self.images.absolute(rel).is_file())
            orphans = [(self.images.relative(f), f) for f in self.images.files() if self.images.relative(f) not in refs]
        orphan_bytes = 0
        for _, f in orphans:
            try:
                orphan_bytes += f.stat().st_size
            except FileNotFoundError:  # a concurrent gc or a temp file renamed into place
                pass
        report = VerifyReport(
            ok=True,
            cases=n_cases,
            vectors=len(db_ids),
            model_version=version,
            vector_versions=versions,
            cases_without_vector=no_vec[:100],
            keyword_index_mismatch=bool(fts_bad),
            file_problem=problem,
            pending_ops=lag,
            embedder_version=None if self._embedder is None else self._embedder.version,
            database_problem=None if check == ["ok"] else f"{self.kb_dir / db.DB_NAME}: " + "; ".join(check[:3]),
            missing_images=missing_images[:100],
            n_missing_images=len(missing_images),
            wrong_dim_vectors=wrong_dim[:100],
            non_finite_measurements=non_finite[:100],
            orphan_images=[rel for rel, _ in orphans[:100]],
            n_orphan_images=len(orphans),
            orphan_bytes=orphan_bytes,
        )
        problems: list[str] = []
        if report.database_problem:
            problems.append(f"database damaged (SQLite quick_check): {report.database_problem}")
        if wrong_dim:
            problems.append(
                f"{len(wrong_dim)} case(s) have vectors that are not of the knowledge base's dimension {dim}: "
                f"{wrong_dim[:10]} (`defect-agent kb rebuild --reembed`)"
            )
        if non_finite:
            problems.append(
                f"{len(non_finite)} case(s) have NaN / infinite measurements: {non_finite[:10]} "
                f"(`defect-agent kb edit ID --measurement NAME=VALUE`)"
            )
        if manifest is not None:
            report.index_model_version = manifest.model_version
            report.index_kind = manifest.spec.describe()
        if problem:
            problems.append(problem)
        if vindex is not None:
            idx_ids = vindex.ids()
            missing = np.setdiff1d(db_ids, idx_ids)
            extra = np.setdiff1d(idx_ids, db_ids)
            report.index_count = int(vindex.ntotal)
            report.n_missing, report.n_extra = int(missing.size), int(extra.size)
            report.missing_ids, report.extra_ids = missing[:100].tolist(), extra[:100].tolist()
            report.count_mismatch = int(vindex.ntotal) != len(db_ids)
            report.index_kind = vindex.spec.describe()
            if missing.size:
                problems.append(f"{missing.size} case(s) missing from the index: {missing[:10].tolist()}")
            if extra.size:
                problems.append(f"{extra.size} id(s) in the index but not in the database: {extra[:10].tolist()}")
            if report.count_mismatch and not (missing.size or extra.size):
                problems.append(f"index holds {vindex.ntotal} vectors for {len(db_ids)} cases (duplicates)")
        if len(versions) > 1 or (report.embedder_version and version and report.embedder_version != version):
            report.model_version_mismatch = True
            problems.append(
                f"vectors from several embedders {versions} or not from the loaded embedder "
                f"{report.embedder_version!r}: `defect-agent kb rebuild --reembed`"
            )
        if no_vec:
            problems.append(f"{len(no_vec)} case(s) without a vector of embedder {version!r}: {no_vec[:10]}")
        if fts_bad:
            problems.append("keyword index differs from the cases table")
        report.problems = problems
        report.ok = not problems
        return report

    @_guarded
    def export(self, path: Path | str, include_vectors: bool = False, filters: CaseFilter | None = None) -> int:
        """Write cases as JSONL (one Case per line, image paths absolute); `include_vectors` adds each vector and
        the embedder version so `kb import` can restore a knowledge base without re-embedding. Returns the count."""
        from defect_agent.files import atomic_write

        path = Path(path)
        with self._lock:
            cases = self.list(filters)
            vectors: dict[int, bytes] = {}
            version = self.index.model_version()
            if include_vectors:
                vectors = {r[0]: r[1] for r in self.conn.execute("SELECT case_id, vector FROM vectors")}
        lines = []
        for case in cases:
            bad = sorted(name for name, v in case.measurements.items() if not math.isfinite(v))
            if bad:  # pydantic would write them as null, which no import reads back as the number it was
                raise DefectAgentError(
                    f"case {case.id} has NaN / infinite measurements {bad}: fix them with "
                    f"`defect-agent kb edit {case.id} --measurement {bad[0]}=VALUE` before exporting"
                )
            obj = case.model_dump(mode="json")
            if include_vectors and case.id in vectors:
                obj["vector"] = [round(float(x), 7) for x in db.blob_vector(vectors[case.id])]
                obj["model_version"] = version
            try:
                # allow_nan=False: NaN / Infinity tokens are not JSON; any reader but Python's would reject the file
                lines.append(json.dumps(obj, ensure_ascii=False, allow_nan=False))
            except ValueError as exc:
                raise DefectAgentError(
                    f"case {case.id} holds a NaN / infinite number ({exc}): `defect-agent kb verify` lists such "
                    f"cases; `defect-agent kb rebuild --reembed` replaces a broken vector"
                ) from exc
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, ("\n".join(lines) + ("\n" if lines else "")).encode("utf-8"))
        return len(cases)

    @_guarded
    def gc(self, *, dry_run: bool = False, temp_grace_s: float = TEMP_GRACE_S) -> GcReport:
        """Delete image files that no case and no history entry cites (left by adds that never committed) and report
        the bytes freed. A file any case, live or removed, still cites is never touched: the check and the deletion
        happen under the write lock, and a commit re-copies an image it finds gone. Temp files younger than
        `temp_grace_s` may be copies in progress in another process and are kept."""
        report = GcReport(dry_run=dry_run)
        candidates = list(self.images.files())  # listed before the lock: a file added later is never a candidate
        now = time.time()
        with self._lock, db.write_txn(self.conn):
            refs = db.image_refs(self.conn)
            for path in candidates:
                rel = self.images.relative(path)
                if rel in refs:
                    continue
                try:
                    st = path.stat()
                except FileNotFoundError:
                    continue
                if self.images.is_temp(path) and now - st.st_mtime < temp_grace_s:
                    report.kept_recent_temp += 1
                    continue
                if not dry_run:
                    path.unlink(missing_ok=True)
                report.removed.append(rel)
                report.bytes_freed += int(st.st_size)
        if report.removed:
            log.info("gc: %s in %s", report.render(), self.kb_dir)
        return report

    @_guarded
    def stats(self) -> KBStats:
        with self._lock:
            q = self.conn.execute

            def grouped(col: str) -> dict[str, int]:
                return {r[0]: int(r[1]) for r in q(f"SELECT {col}, COUNT(*) FROM cases GROUP BY {col} ORDER BY {col}")}

            images = q("SELECT COUNT(DISTINCT image_sha256) FROM cases").fetchone()[0]
            removed = q(
                "SELECT COUNT(DISTINCT h.case_id) FROM history h LEFT JOIN cases c ON c.id = h.case_id "
                "WHERE c.id IS NULL"
            ).fetchone()[0]
            image_bytes = sum(p.stat().st_size for p in (self.kb_dir / "images").rglob("*") if p.is_file())
            db_bytes = sum(p.stat().st_size for p in self.kb_dir.glob(db.DB_NAME + "*") if p.is_file())
            index_file = self.index.files.index_path
            vindex = None
            try:
                vindex = self.index.ready()
            except IndexUnavailable as exc:
                log.warning("%s", exc)
            return KBStats(
                cases=int(q("SELECT COUNT(*) FROM cases").fetchone()[0]),
                by_line=grouped("line"),
                by_class=grouped("defect_class"),
                by_disposition=grouped("disposition"),
                history_entries=int(q("SELECT COUNT(*) FROM history").fetchone()[0]),
                removed_cases=int(removed),
                images=int(images),
                image_bytes=image_bytes,
                db_bytes=db_bytes,
                index_kind=None if vindex is None else vindex.spec.describe(),
                index_count=None if vindex is None else vindex.ntotal,
                index_file_bytes=index_file.stat().st_size if index_file.exists() else None,
                model_version=self.index.model_version(),
                dim=self.index.dim(),
                schema_version=current_version(self.conn),
            )
