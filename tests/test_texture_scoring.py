"""Texture scoring with the shipped embedder on generated battery_tab crops: defect crops score higher than clean
ones, prototypes from example crops plug in, whole images get a window score."""

from __future__ import annotations

import numpy as np
import pytest

from defect_agent.config import EmbedderConfig, load_line
from vision.crops import crop_region
from vision.detection import Box


@pytest.fixture(scope="module")
def scorer():
    from vision.embedder import load_embedder
    from vision.embedder.texture import TextureScorer

    return TextureScorer.from_line(load_line("battery_tab"), load_embedder(EmbedderConfig()))


@pytest.fixture(scope="module")
def samples():
    from vision.datasets.synth import BatteryTabParams, generate_battery_tab

    defects, clean, images = [], [], []
    for seed in range(300, 306):
        image, truth = generate_battery_tab(
            seed, BatteryTabParams(force_spatter=True, force_burn=seed % 2 == 0, force_crack=seed % 2 == 1)
        )
        defects.extend(crop_region(image, o.box) for o in truth.objects if o.name in ("spatter", "crack", "burn"))
        ok, t2 = generate_battery_tab(
            seed + 500, BatteryTabParams(force_spatter=False, force_crack=False, force_burn=False)
        )
        tab = t2.boxes("tab")[0]
        for fx, fy in ((0.15, 0.15), (0.85, 0.85)):
            cx, cy = tab.x1 + fx * tab.width, tab.y1 + fy * tab.height
            clean.append(crop_region(ok, Box(x1=cx - 25, y1=cy - 25, x2=cx + 25, y2=cy + 25)))
        clean.extend(crop_region(ok, b) for b in t2.boxes("weld"))
        images.append((image, ok))
    return defects, clean, images


def test_defect_crops_score_higher_than_clean_crops(scorer, samples):
    defects, clean, _ = samples
    d = np.array([s.defect_score for s in scorer.score_crops(defects)])
    c = np.array([s.defect_score for s in scorer.score_crops(clean)])
    assert d.mean() > c.mean() + 0.2, (d.mean(), c.mean())
    assert ((d[:, None] > c[None, :]).mean()) > 0.8  # pairwise ranking (AUROC)
    assert all(0.0 <= x <= 1.0 for x in np.concatenate([d, c]))


def test_scores_are_the_vector_scores_and_keep_raw_cosines(scorer, samples):
    defects, _, _ = samples
    vecs = scorer.embedder.embed_images(defects[:3])
    a, b = scorer.score_vectors(vecs), scorer.score_crops(defects[:3])
    for x, y in zip(a, b):
        assert x.defect_score == pytest.approx(y.defect_score, abs=1e-5)
        assert set(x.class_similarities) == {"spatter", "crack", "burn"}
        assert -1.0 <= x.normal_similarity <= 1.0 and x.best_class in x.class_probs


def test_prototypes_from_examples_are_used(scorer, samples):
    from vision.embedder.texture import NORMAL_KEY, TextureScorer

    defects, clean, _ = samples
    emb = scorer.embedder
    examples = (
        [(NORMAL_KEY, v) for v in emb.embed_images(clean[:4])]
        + [("spatter", v) for v in emb.embed_images(defects[:2])]
        + [("burn", v) for v in emb.embed_images(defects[2:3])]
    )
    few = TextureScorer.from_line(load_line("battery_tab"), emb, prototypes=examples)
    assert few.uses_prototypes and few.proto_classes == ["spatter", "burn"]
    out = few.score_crops(clean[4:6] + defects[3:5])
    assert all(o.source == "text+prototypes" and NORMAL_KEY in o.prototype_similarities for o in out)
    assert np.mean([o.defect_score for o in out[2:]]) > np.mean([o.defect_score for o in out[:2]])


@pytest.mark.slow
def test_whole_image_score_is_higher_with_defects(scorer, samples):
    _, _, images = samples
    defective, ok = images[0]
    d, c = scorer.score_image(defective), scorer.score_image(ok)
    assert len(d.windows) > 10 and d.best_window.box.width > 0
    assert d.defect_score > c.defect_score
