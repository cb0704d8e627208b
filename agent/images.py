"""Collecting and reading the images an instruction is about: files, folders, globs; scope filters; clear errors."""

from __future__ import annotations

import datetime as dt
import glob
from pathlib import Path

import cv2
import numpy as np

from agent.query import Scope
from defect_agent.errors import EmptyInput, ImageReadError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


def collect_images(inputs: list[str | Path]) -> list[str]:
    """Expand files, folders (recursive) and glob patterns into image paths, keeping the spelling the user gave
    for plain files (verdicts echo it). Raises EmptyInput when nothing is found."""
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
            found.extend(sorted(p for p in glob.glob(text, recursive=True) if Path(p).suffix.lower() in IMAGE_SUFFIXES))
        else:
            missing.append(text)
    if missing:
        raise EmptyInput(f"no such file or folder: {', '.join(missing)}")
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


def read_image(path: str | Path, expected_size: tuple[int, int] | None = None) -> np.ndarray:
    """BGR uint8 image. Raises ImageReadError for unreadable files and for a size other than the line's
    calibrated size (measurements in mm would be wrong)."""
    p = Path(path)
    try:
        data = np.fromfile(p, dtype=np.uint8)  # np.fromfile + imdecode handles non-ASCII paths, unlike imread
    except OSError as exc:
        raise ImageReadError(f"cannot read {path}: {exc.strerror or exc}") from exc
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
