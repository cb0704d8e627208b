"""Image collection and reading: empty folders, unreadable files, wrong sizes give clear errors."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from agent.images import collect_images, read_image
from defect_agent.errors import EmptyInput, ImageReadError


def test_empty_folder_is_an_error(tmp_path):
    with pytest.raises(EmptyInput, match="holds no images"):
        collect_images([tmp_path])


def test_missing_path_is_named(tmp_path):
    with pytest.raises(EmptyInput, match="nope.png"):
        collect_images([tmp_path / "nope.png"])


def test_folder_and_files_expand_in_order_without_duplicates(tmp_path):
    for name in ("b.png", "a.png"):
        cv2.imwrite(str(tmp_path / name), np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "notes.txt").write_text("x")
    found = collect_images([tmp_path, tmp_path / "a.png"])
    assert [p.split("/")[-1] for p in found] == ["a.png", "b.png"]


def test_unreadable_image_is_an_error(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    with pytest.raises(ImageReadError, match="cannot decode"):
        read_image(bad)


def test_wrong_size_names_expected_size(tmp_path):
    p = tmp_path / "small.png"
    cv2.imwrite(str(p), np.zeros((100, 120, 3), np.uint8))
    with pytest.raises(ImageReadError, match="640x480"):
        read_image(p, (640, 480))
    assert read_image(p, (120, 100)).shape == (100, 120, 3)


def test_scope_folder_matches_multi_level_ids(tmp_path):
    from agent.images import apply_scope
    from agent.query import Scope

    a = tmp_path / "data" / "cam1" / "x.png"
    b = tmp_path / "data" / "cam2" / "y.png"
    for p in (a, b):
        p.parent.mkdir(parents=True)
        cv2.imwrite(str(p), np.zeros((4, 4, 3), np.uint8))
    assert apply_scope([str(a), str(b)], Scope(folder="/data/cam1")) == [str(a)]
    assert apply_scope([str(a), str(b)], Scope(folder="cam2")) == [str(b)]
