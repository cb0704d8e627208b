"""vision.anomaly: a normal-only PatchCore model on generated textures (no shared data), and one DeepPCB check that
skips without ../shared/datasets."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest

from defect_agent.errors import ModelFileRejected
from defect_agent.paths import shared_dataset
from vision.anomaly import AnomalyConfig, AnomalyModel, regions
from vision.embedder.texture import calibrate_threshold

SIZE = 128
DEFECT_CENTRE = (88, 40)  # x, y
DEFECT_RADIUS = 7
MM_PER_PX = 0.05


def texture(rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    """Vertical stripes of a slightly varying period and phase under Gaussian noise: a regular surface."""
    y, x = np.mgrid[0:size, 0:size]
    period = 12.0 + rng.uniform(-1.0, 1.0)
    img = 128 + 50 * np.sin(2 * np.pi * (x + rng.uniform(0, period)) / period) + rng.normal(0, 12, (size, size))
    return np.clip(img, 0, 255).astype(np.uint8)


def with_defect(image: np.ndarray) -> np.ndarray:
    """A dark disc (a pit / stain) at DEFECT_CENTRE."""
    out = image.copy()
    y, x = np.mgrid[0 : out.shape[0], 0 : out.shape[1]]
    out[(x - DEFECT_CENTRE[0]) ** 2 + (y - DEFECT_CENTRE[1]) ** 2 <= DEFECT_RADIUS**2] = 15
    return out


@pytest.fixture(scope="module")
def fitted() -> AnomalyModel:
    rng = np.random.default_rng(0)
    model = AnomalyModel(AnomalyConfig(image_size=SIZE, coreset_min=1024, coreset_max=1024, batch_size=10))
    return model.fit([texture(rng) for _ in range(20)])


@pytest.fixture(scope="module")
def held_back() -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [texture(rng) for _ in range(12)]


def test_fit_builds_a_coreset_bank(fitted: AnomalyModel) -> None:
    info = fitted.fit_info
    assert info["images"] == 20
    assert info["patches"] == 20 * fitted.grid**2
    assert fitted.bank_size == info["bank"] == 1024 < info["patches"]


def test_planted_defect_scores_higher_than_normals(fitted: AnomalyModel, held_back: list[np.ndarray]) -> None:
    normal = [r.score for r in fitted.score_batch(held_back)]
    defective = [r.score for r in fitted.score_batch([with_defect(im) for im in held_back[:4]])]
    assert min(defective) > max(normal)
    result = fitted.score(with_defect(held_back[0]))
    assert result.map.shape == (SIZE, SIZE) and result.map.dtype == np.float32


def test_map_follows_the_image_shape(fitted: AnomalyModel, held_back: list[np.ndarray]) -> None:
    wide = np.concatenate([held_back[0], held_back[1]], axis=1)  # 128 x 256: stretched to the model square
    assert fitted.score(wide).map.shape == (SIZE, 2 * SIZE)


def test_region_found_at_the_defect_with_a_size_in_mm(fitted: AnomalyModel, held_back: list[np.ndarray]) -> None:
    normal = fitted.score_batch(held_back)
    fitted.calibrate([r.score for r in normal], 0.0, [r.peak for r in normal])
    result = fitted.score(with_defect(held_back[2]))
    assert fitted.is_anomalous(result)
    found = fitted.regions(result, MM_PER_PX)
    assert found, "no region above the calibrated map threshold"
    top = found[0]
    assert top.box.contains(*DEFECT_CENTRE)
    # the map is coarse (8-px patches, smoothing): the size is right to within a few patches, not pixels
    diameter_mm = 2 * DEFECT_RADIUS * MM_PER_PX
    assert diameter_mm <= top.measurements["length_mm"] <= 4 * diameter_mm
    assert top.measurements["area_mm2"] == pytest.approx(top.box.area * MM_PER_PX**2)
    # normal images give no region at a threshold calibrated with zero false alarms on them
    assert all(not fitted.regions(r, MM_PER_PX) for r in normal)


def test_adding_normals_returns_their_scores_before_they_joined(held_back: list[np.ndarray]) -> None:
    rng = np.random.default_rng(11)
    model = AnomalyModel(AnomalyConfig(image_size=SIZE, coreset_min=256, coreset_max=512)).fit(
        [texture(rng) for _ in range(6)]
    )
    model.calibrate([model.score(im).score for im in held_back], max_false_alarm=0.25)
    images = [with_defect(held_back[0]), held_back[1]]
    before = model.score_batch(images)
    added, scored = model.score_and_add_normal(images)
    assert added > 0 and len(scored) == 2
    for b, s in zip(before, scored):
        assert s.score == pytest.approx(b.score, rel=1e-5)
        np.testing.assert_allclose(s.map, b.map, rtol=0, atol=1e-5 * b.map.max())
    assert model.score(images[0]).score < before[0].score  # now part of the bank


def test_regions_cut_connected_components() -> None:
    heat = np.zeros((60, 80), dtype=np.float32)
    heat[10:20, 10:30] = 5.0  # 20 x 10 px
    heat[40:44, 60:64] = 3.0  # 16 px
    heat[2, 2] = 9.0  # a single pixel: below min_area_px
    found = regions(heat, 1.0, mm_per_px=0.1, min_area_px=4)
    assert [r.box.as_list() for r in found] == [[10, 10, 30, 20], [60, 40, 64, 44]]
    assert found[0].measurements["length_mm"] == pytest.approx(2.0)
    assert found[0].measurements["width_mm"] == pytest.approx(1.0)
    assert found[0].measurements["blob_area_mm2"] == pytest.approx(2.0)
    assert found[0].peak == 5.0


def test_save_load_round_trip_gives_identical_scores(
    fitted: AnomalyModel, held_back: list[np.ndarray], tmp_path
) -> None:
    fitted.calibrate([r.score for r in fitted.score_batch(held_back)], 0.1)
    path = fitted.save(tmp_path / "line")
    assert path.suffix == ".safetensors" and path.with_suffix(".json").is_file()
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["config"]["image_size"] == SIZE and meta["threshold"] == fitted.threshold
    loaded = AnomalyModel.load(path)
    assert loaded.threshold == fitted.threshold and loaded.version == fitted.version != "unsaved"
    for image in (held_back[3], with_defect(held_back[4])):
        a, b = fitted.score(image), loaded.score(image)
        assert a.score == b.score
        assert np.array_equal(a.map, b.map)


def test_load_refuses_a_bank_from_another_fit(fitted: AnomalyModel, tmp_path) -> None:
    first = fitted.save(tmp_path / "a")
    second = fitted.save(tmp_path / "b")
    meta = json.loads(second.with_suffix(".json").read_text())
    meta["bank"]["sha256"] = "0" * 64
    first.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(ModelFileRejected):
        AnomalyModel.load(first)


def test_calibration_honours_the_false_alarm_target() -> None:
    rng = random.Random(3)
    scores = [rng.gauss(10.0, 2.0) for _ in range(500)]
    for target in (0.0, 0.01, 0.05, 0.2):
        threshold = calibrate_threshold(scores, target)
        above = sum(s > threshold for s in scores)
        assert above <= math.floor(target * len(scores))
        assert above >= math.floor(target * len(scores)) - 1  # and not far stricter than asked


def test_model_calibration_on_fresh_normals(fitted: AnomalyModel, held_back: list[np.ndarray]) -> None:
    scores = [r.score for r in fitted.score_batch(held_back)]
    threshold = fitted.calibrate(scores, 0.1)
    assert sum(s > threshold for s in scores) <= math.floor(0.1 * len(scores))
    assert fitted.max_false_alarm == 0.1


@pytest.mark.slow
@pytest.mark.shared_data
def test_deeppcb_defective_crops_score_higher_than_their_templates() -> None:
    """Fit on 24 templates of the train boards, then compare 16 other crops with their own templates (the pcb
    settings of benchmarks/bench_anomaly.py: stride-4 / stride-8 features at 320 px, 8 px border not inspected)."""
    root = shared_dataset("deeppcb")
    if root is None:
        pytest.skip("../shared/datasets/deeppcb is absent (real DeepPCB images needed)")
    import cv2

    from vision.datasets.deeppcb import template_pairs

    pairs = template_pairs(root, "train")
    random.Random(0).shuffle(pairs)
    model = AnomalyModel(AnomalyConfig(image_size=320, stages=(1, 2), margin=8))
    model.fit([cv2.imread(str(p.template), cv2.IMREAD_GRAYSCALE) for p in pairs[:24]])
    test = pairs[24:40]
    defective = [r.score for r in model.score_batch([str(p.test) for p in test])]
    normal = [r.score for r in model.score_batch([str(p.template) for p in test])]
    higher = sum(d > n for d, n in zip(defective, normal))
    assert higher >= 12, f"only {higher} of {len(test)} defective crops scored above their templates"
