"""Content-addressed image store: `<kb_dir>/images/ab/cdef....png`, keyed by the sha256 of the file bytes.

Adding the same picture twice stores it once; a case keeps pointing at its picture after the source file is moved
or deleted; files are never modified in place (a new picture is a new key), so history rows stay valid. Files are
never deleted by `kb rm` either: the history may still cite them. Only `kb gc` deletes, and only files that no case
and no history entry cites (copies left by an add that never committed)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from defect_agent.errors import ImageReadError
from defect_agent.files import atomic_write

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


@dataclass(frozen=True)
class StoredImage:
    """An image in the store: its sha256, its path relative to the knowledge base folder, and whether this
    `put` created the file."""

    sha256: str
    rel_path: str  # relative to the knowledge base folder, with forward slashes
    created: bool  # False when the same bytes were already stored


def decode_image(data: bytes, source: str | Path) -> np.ndarray:
    """BGR uint8 HxWx3 (the embedder's input order); grey and alpha images are converted."""
    import cv2

    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if image is None or image.size == 0:
        raise ImageReadError(f"cannot decode image {source}: not an image file opencv can read")
    return image


class ImageStore:
    """The knowledge base's content-addressed image folder (`<kb_dir>/images`), keyed by sha256."""

    def __init__(self, kb_dir: Path) -> None:
        self.kb_dir = Path(kb_dir)
        self.root = self.kb_dir / "images"

    def files(self) -> Iterator[Path]:
        """Every regular file in the store, temp files of copies in progress (or interrupted) included."""
        if self.root.is_dir():
            yield from (p for p in sorted(self.root.rglob("*")) if p.is_file())

    def has_files(self) -> bool:
        return self.root.is_dir() and any(p.is_file() for p in self.root.rglob("*"))

    @staticmethod
    def is_temp(path: Path) -> bool:
        """A temp file of `atomic_write` (`.<name>.<random><suffix>`): a copy in progress or one a crash cut short."""
        return path.name.startswith(".")

    def relative(self, path: Path) -> str:
        return path.relative_to(self.kb_dir).as_posix()

    def rel_path(self, sha256: str, suffix: str) -> str:
        return f"images/{sha256[:2]}/{sha256[2:]}{suffix}"

    def absolute(self, rel_path: str) -> Path:
        return self.kb_dir / rel_path

    def read_source(self, path: str | Path) -> bytes:
        p = Path(path).expanduser()
        if not p.is_file():
            raise ImageReadError(f"image not found: {p}")
        if p.suffix.lower() not in IMAGE_SUFFIXES:
            raise ImageReadError(f"{p}: not an image file (expected one of {', '.join(sorted(IMAGE_SUFFIXES))})")
        try:
            return p.read_bytes()
        except OSError as exc:
            raise ImageReadError(f"cannot read image {p}: {exc}") from exc

    def put(self, data: bytes, suffix: str) -> StoredImage:
        """Store bytes under their sha256 (no-op when present). Written to a temp file and renamed into place so a
        crash never leaves a truncated image under a valid key."""
        sha = hashlib.sha256(data).hexdigest()
        suffix = suffix.lower() if suffix.lower() in IMAGE_SUFFIXES else ".png"
        rel = self.rel_path(sha, ".jpg" if suffix == ".jpeg" else suffix)
        target = self.absolute(rel)
        if target.is_file():
            return StoredImage(sha, rel, created=False)
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(target, data, suffix=suffix)
        return StoredImage(sha, rel, created=True)

    def discard(self, stored: StoredImage) -> None:
        """Undo a `put` that created a file, when the case that needed it was not committed."""
        if stored.created:
            self.absolute(stored.rel_path).unlink(missing_ok=True)

    def read(self, rel_path: str) -> np.ndarray:
        path = self.absolute(rel_path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ImageReadError(f"stored image missing: {path} ({exc})") from exc
        return decode_image(data, path)
