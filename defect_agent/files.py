"""File primitives shared by every layer: content hashes of model and image files, and crash-safe writes."""

from __future__ import annotations

import hashlib
import os
import tempfile
from functools import lru_cache
from pathlib import Path


def file_sha256(path: Path | str) -> str:
    """sha256 of a file, memoised on (path, size, mtime): model files are hashed for every version string."""
    p = Path(path)
    st = p.stat()
    return _sha256_cached(str(p.resolve()), st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=128)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_write(target: Path, data: bytes | memoryview, suffix: str = ".tmp") -> None:
    """Write to a temporary file beside `target`, fsync, then rename over it: a crash leaves the old file or the
    new one, never a truncated one."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
