"""A part's reference image (its defect-free golden template) and the composite a template-mode locator reads.

Where a line's references lie is the line's own rule (`ReferenceConfig` in its config: a name pattern, a folder, or
one fixed golden image); DeepPCB's `<id>_test` / `<id>_temp` pairs are one such rule. The composite is B = the
image (grey, as scanned), G = the binarised reference, R = |image - reference|, so the detector sees where the part
differs from its reference."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from defect_agent.config import ReferenceConfig
from defect_agent.errors import ImageReadError
from defect_agent.paths import resolve

BINARY_THRESHOLD = 128  # binarised scans (DeepPCB) are JPEG-compressed afterwards: thresholding undoes the ringing
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp")


def _reference_stem(image_path: Path, spec: ReferenceConfig) -> str | None:
    m = re.match(spec.pattern, image_path.stem)
    return spec.name.format(id=m.group("id")) if m else None


def _reference_folder(image_path: Path, spec: ReferenceConfig) -> Path:
    if spec.folder is None:
        return image_path.parent
    folder = Path(spec.folder).expanduser()
    return folder if folder.is_absolute() else image_path.parent / folder


def find_reference(image_path: Path | str, spec: ReferenceConfig) -> Path | None:
    """The reference image of `image_path` under the line's rule, or None when the rule finds no file."""
    image_path = Path(image_path)
    if spec.image is not None:
        fixed = resolve(spec.image)
        return fixed if fixed.is_file() else None
    stem = _reference_stem(image_path, spec)
    folder = _reference_folder(image_path, spec)
    if stem is None or (stem == image_path.stem and folder == image_path.parent):
        return None  # the rule names the image itself
    for ext in dict.fromkeys((image_path.suffix, *IMAGE_EXTS)):
        candidate = folder / f"{stem}{ext}"
        if candidate.is_file():
            return candidate
    return None


def describe_rule(spec: ReferenceConfig) -> str:
    """The rule in words, for the error an operator sees when a part has no reference."""
    if spec.image is not None:
        return f"the fixed golden image {spec.image}"
    where = "beside the image" if spec.folder is None else f"in {spec.folder}"
    return f"{spec.name.replace('{id}', '<id>')}.<ext> {where} for images named like {spec.pattern!r}"


def drop_references(paths: Sequence[str], spec: ReferenceConfig) -> list[str]:
    """References given alongside their parts (a whole DeepPCB folder, `boards/*.jpg`) are not parts to inspect:
    drop every listed path that is the reference of another listed path (or the line's fixed golden image)."""
    if spec.image is not None:
        fixed = resolve(spec.image).resolve()
        return [p for p in paths if Path(p).resolve() != fixed]
    refs = set()
    for p in paths:
        path = Path(p)
        stem = _reference_stem(path, spec)
        if stem is not None and (_reference_folder(path, spec), stem) != (path.parent, path.stem):
            refs.add((_reference_folder(path, spec), stem))
    return [p for p in paths if (Path(p).parent, Path(p).stem) not in refs]


def read_grey(path: Path | str) -> np.ndarray:
    """A grey image from disk; an unreadable file is an ImageReadError naming it."""
    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if img is None:
        raise ImageReadError(f"cannot read image {path}")
    return img


def as_grey(image: np.ndarray) -> np.ndarray:
    """A grey view of a grey, one-channel or BGR image."""
    if image.ndim == 2:
        return image
    if image.ndim == 3 and image.shape[2] == 1:
        return image[:, :, 0]
    if image.ndim == 3 and image.shape[2] == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    raise ImageReadError(f"expected a grey or BGR image, got shape {image.shape}")


def binarize(image: np.ndarray) -> np.ndarray:
    """0/255 image at `BINARY_THRESHOLD`."""
    return np.where(as_grey(image) >= BINARY_THRESHOLD, 255, 0).astype(np.uint8)


def reference_composite(test: np.ndarray, template: np.ndarray) -> np.ndarray:
    """BGR composite for the reference-aware detector: B = test (grey, as scanned), G = binarised template,
    R = |test - template|. The template is binarised so JPEG ringing of the template does not show up as
    difference; the test keeps its own pixels (the same as the no-reference detector sees)."""
    t = as_grey(test)
    ref = binarize(template)
    if ref.shape != t.shape:
        raise ImageReadError(f"template shape {ref.shape} differs from test image shape {t.shape}")
    return np.ascontiguousarray(np.stack([t, ref, cv2.absdiff(t, ref)], axis=2))
