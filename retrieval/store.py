"""The FAISS index on disk: `<kb_dir>/index/vectors.faiss` plus a sidecar manifest `vectors.json`.

Writes go to a temp file that is fsync'ed and atomically swapped in with os.replace (index first, then manifest).
The manifest records the index file's sha256 and size, the vector count, the sha256 of the id set, the embedder
version and the last history entry the index reflects, so a reader can tell a sound file from a corrupt, truncated
or foreign one without trusting faiss to fail cleanly, and `verify` can compare it with SQLite.

Writers hold an exclusive lock on `index/.lock` (readers a shared one) for the swap, so a reader never pairs a new
index with an old manifest and two processes never interleave their swaps."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ValidationError

from defect_agent.errors import DefectAgentError
from defect_agent.files import atomic_write
from retrieval.policy import IndexSpec

log = logging.getLogger(__name__)

REBUILD_HINT = "run `defect-agent kb rebuild`"
MANIFEST_FORMAT = 1


class IndexUnavailable(DefectAgentError):
    """The index file is missing, corrupt or does not match the database."""

    def __init__(self, problem: str) -> None:
        self.problem = problem
        super().__init__(f"knowledge base index unusable: {problem}; {REBUILD_HINT}")


class Manifest(BaseModel):
    """The sidecar `vectors.json`: what the index file must match (checksum, size, id set, embedder version,
    history position) to be trusted."""

    format: int = MANIFEST_FORMAT
    spec: IndexSpec
    dim: int
    count: int
    ids_sha256: str
    model_version: str | None
    applied_seq: int  # the index reflects history entries up to this one
    generation: str  # changes on every rebuild: other processes reload instead of replaying
    created_at: datetime
    file_sha256: str
    file_bytes: int


def ids_digest(ids: np.ndarray) -> str:
    return hashlib.sha256(np.sort(np.asarray(ids, dtype=np.int64)).astype("<i8").tobytes()).hexdigest()


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be opened for fsync
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class IndexFile:
    """The knowledge base's index on disk (`<kb_dir>/index/`): locking, atomic writes and verified reads of the
    FAISS file and its manifest."""

    def __init__(self, kb_dir: Path) -> None:
        self.dir = Path(kb_dir) / "index"
        self.index_path = self.dir / "vectors.faiss"
        self.manifest_path = self.dir / "vectors.json"
        self.lock_path = self.dir / ".lock"

    def exists(self) -> bool:
        return self.index_path.exists() or self.manifest_path.exists()

    @contextlib.contextmanager
    def lock(self, exclusive: bool) -> Iterator[None]:
        """Advisory inter-process lock (flock). Blocks until granted."""
        self.dir.mkdir(parents=True, exist_ok=True)
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: single-writer deployments only
            yield
            return
        with open(self.lock_path, "a+b") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def manifest_stamp(self) -> tuple[int, int] | None:
        """(mtime_ns, size) of the manifest: a cheap test for 'another process swapped the index'."""
        try:
            st = self.manifest_path.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def read_manifest(self) -> Manifest:
        if not self.manifest_path.is_file():
            raise IndexUnavailable(f"index manifest missing: {self.manifest_path}")
        try:
            manifest = Manifest.model_validate_json(self.manifest_path.read_text(encoding="utf-8"))
        except (ValidationError, ValueError, OSError) as exc:
            raise IndexUnavailable(
                f"index manifest {self.manifest_path} unreadable ({exc.__class__.__name__})"
            ) from exc
        if manifest.format != MANIFEST_FORMAT:
            raise IndexUnavailable(f"index manifest format {manifest.format} unknown")
        return manifest

    def write(self, vindex, applied_seq: int, generation: str, model_version: str | None) -> Manifest:
        """Persist an index (caller holds the exclusive lock)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        data = vindex.to_bytes()
        ids = vindex.ids()
        manifest = Manifest(
            spec=vindex.spec,
            dim=vindex.dim,
            count=vindex.ntotal,
            ids_sha256=ids_digest(ids),
            model_version=model_version,
            applied_seq=applied_seq,
            generation=generation,
            created_at=datetime.now(UTC),
            file_sha256=hashlib.sha256(data).hexdigest(),
            file_bytes=int(data.nbytes),
        )
        atomic_write(self.index_path, memoryview(data))
        atomic_write(self.manifest_path, manifest.model_dump_json(indent=2).encode("utf-8"))
        _fsync_dir(self.dir)
        log.debug("index written: %d vectors, %s, seq %d", manifest.count, vindex.spec.describe(), applied_seq)
        return manifest

    def read(self):
        """(VectorIndex, Manifest); raises IndexUnavailable naming the problem. Caller holds at least a shared lock."""
        from retrieval.index import VectorIndex

        manifest = self.read_manifest()
        if not self.index_path.is_file():
            raise IndexUnavailable(f"index file missing: {self.index_path}")
        data = self.index_path.read_bytes()
        if len(data) != manifest.file_bytes:
            raise IndexUnavailable(
                f"index file {self.index_path} is corrupt: {len(data)} bytes, the manifest says {manifest.file_bytes}"
            )
        # checked before faiss sees the bytes: faiss detects truncation but not flipped bytes inside vector data
        if hashlib.sha256(data).hexdigest() != manifest.file_sha256:
            raise IndexUnavailable(f"index file {self.index_path} is corrupt: checksum differs from the manifest")
        try:
            vindex = VectorIndex.from_bytes(np.frombuffer(data, dtype=np.uint8), manifest.spec, manifest.dim)
        except (RuntimeError, ValueError) as exc:
            raise IndexUnavailable(
                f"index file {self.index_path} is corrupt: {str(exc).splitlines()[0][:200]}"
            ) from exc
        if vindex.ntotal != manifest.count:
            raise IndexUnavailable(f"index holds {vindex.ntotal} vectors, its manifest says {manifest.count}")
        return vindex, manifest

    def remove(self) -> None:
        for path in (self.manifest_path, self.index_path):
            path.unlink(missing_ok=True)

    def describe(self) -> dict:
        return {
            "index": str(self.index_path),
            "manifest": str(self.manifest_path),
            "bytes": self.index_path.stat().st_size if self.index_path.exists() else None,
        }


def dump_manifest(manifest: Manifest) -> str:
    return json.dumps(manifest.model_dump(mode="json"), indent=2)
