"""Collecting and reading the images an instruction is about: files, folders, globs; scope filters; clear errors."""

from __future__ import annotations

import datetime as dt
import glob
import stat
import warnings
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from agent.query import Scope
from defect_agent.config import LimitsConfig
from defect_agent.errors import EmptyInput, ImageReadError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


def collect_images(inputs: Sequence[str | Path], keep_missing: bool = False) -> list[str]:
    """Expand files, folders (recursive) and glob patterns into image paths, keeping the spelling the user gave
    for plain files (verdicts echo it). Raises EmptyInput when nothing is found. `keep_missing`: a path that does not
    exist stays in the list (it then gets its own verdict line saying so) as long as some input exists."""
    found: list[str] = []
    missing: list[str] = []
    for item in inputs:
        text = str(item)
        path = Path(text)
        if path.is_dir():
            images = sorted(str(p) for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not images:
                raise EmptyInput(f"folder {text} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
            found.extend(images)
        elif path.is_file():
            found.append(text)
        elif any(ch in text for ch in "*?["):
            # only regular files: a FIFO or a device matched by a pattern would block the read forever
            found.extend(
                sorted(
                    p
                    for p in glob.glob(text, recursive=True)
                    if Path(p).suffix.lower() in IMAGE_SUFFIXES and Path(p).is_file()
                )
            )
        else:
            missing.append(text)
    if missing and not (keep_missing and found):
        raise EmptyInput(f"no such file or folder: {', '.join(missing)}")
    found.extend(missing if keep_missing else [])
    if not found:
        raise EmptyInput("no images given (files, folders or glob patterns)")
    return list(dict.fromkeys(found))


def apply_scope(paths: list[str], scope: Scope) -> list[str]:
    """Keep the images the instruction's scope names (today's images, a folder, a lot id in the file name)."""
    kept = paths
    if scope.date is not None:
        kept = [p for p in kept if dt.date.fromtimestamp(Path(p).stat().st_mtime) == scope.date]
    if scope.folder:
        # a folder id may span several components ("/data/cam1"): match it as a run of the parent's components
        wanted = [part.lower() for part in Path(scope.folder.strip("/\\")).parts]
        kept = [p for p in kept if _contains_run([part.lower() for part in Path(p).resolve().parent.parts], wanted)]
    if scope.lot:
        lot = scope.lot.lower()
        kept = [p for p in kept if lot in Path(p).name.lower()]
    return kept


def _contains_run(parts: list[str], run: list[str]) -> bool:
    return any(parts[i : i + len(run)] == run for i in range(len(parts) - len(run) + 1))


def header_size(data: bytes | np.ndarray) -> tuple[int, int] | None:
    """(width, height) from the file's header without decoding its pixels; None when the header is not one
    Pillow knows (OpenCV may still decode it)."""
    import io

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(bytes(data))) as img:
                return int(img.size[0]), int(img.size[1])
    except Image.DecompressionBombError:
        raise
    except Exception:  # not an image Pillow reads: OpenCV's decode has the last word
        return None


def check_pixels(data: bytes | np.ndarray, source: str | Path, max_pixels: int | None = None) -> None:
    """Refuse an image whose header promises more than `max_pixels` (default: limits.max_image_pixels) before a
    byte of it is decoded: a 100 kB PNG can unpack to gigabytes."""
    from PIL import Image

    limit = max_pixels if max_pixels is not None else _max_pixels()
    try:
        size = header_size(data)
    except Image.DecompressionBombError as exc:
        raise ImageReadError(f"{source}: refused, the image is far larger than any camera frame ({exc})") from exc
    if size is not None and size[0] * size[1] > limit:
        raise ImageReadError(
            f"{source} is {size[0]}x{size[1]} px ({size[0] * size[1] / 1e6:.0f} Mpx), above the limit of "
            f"{limit / 1e6:.0f} Mpx (limits.max_image_pixels in configs/default.yaml)"
        )


def _limits() -> LimitsConfig:
    from defect_agent.config import load_app_config

    return load_app_config().limits


def _max_pixels() -> int:
    return _limits().max_image_pixels


def read_image(path: str | Path, expected_size: tuple[int, int] | None = None) -> np.ndarray:
    """BGR uint8 image. Raises ImageReadError for anything but a regular file, for an image whose header exceeds the
    pixel limit (checked before decoding), for unreadable files and for a size other than the line's calibrated
    size (measurements in mm would be wrong)."""
    p = Path(path)
    try:
        info = p.stat()
    except OSError as exc:
        raise ImageReadError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if not stat.S_ISREG(info.st_mode):
        raise ImageReadError(f"cannot read {path}: not a regular file (a folder, FIFO or device is never read)")
    max_mb = _limits().max_image_mb
    if info.st_size > max_mb * 1e6:
        raise ImageReadError(
            f"{path} is {info.st_size / 1e6:.0f} MB, above the limit of {max_mb:g} MB per image "
            "(limits.max_image_mb in configs/default.yaml)"
        )
    try:
        data = np.fromfile(p, dtype=np.uint8)  # np.fromfile + imdecode handles non-ASCII paths, unlike imread
    except OSError as exc:
        raise ImageReadError(f"cannot read {path}: {exc.strerror or exc}") from exc
    check_pixels(data, path)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise ImageReadError(f"cannot decode {path}: not an image or the file is damaged ({data.size} bytes)")
    if expected_size is not None:
        width, height = expected_size
        if image.shape[1] != width or image.shape[0] != height:
            raise ImageReadError(
                f"{path} is {image.shape[1]}x{image.shape[0]} px; this line's calibration is for {width}x{height} px "
                "(choose the right --line, or recalibrate the line for this camera)"
            )
    return image
