"""Texture threshold calibration, the prototype mixing rules, sliding windows and the line-config rewrite. No model:
these check the arithmetic on vectors built by hand."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from agent.calibration_cli import rewrite_texture_block, texture_block
from defect_agent.config import LineConfig
from vision.embedder.texture import (
    NORMAL_KEY,
    TextureScorer,
    calibrate_threshold,
    prototypes_from_examples,
    sliding_windows,
)


def test_threshold_is_the_upper_quantile_and_meets_the_false_alarm_rate():
    scores = np.arange(1, 201) / 200.0  # 0.005 .. 1.0, distinct
    t = calibrate_threshold(scores, 0.01)  # 2 of 200 may lie above
    assert t == pytest.approx(scores[-3])
    assert int((scores > t).sum()) == 2
    assert calibrate_threshold(scores, 0.0) == pytest.approx(1.0)  # no false alarm allowed: the max
    # ties: never more alarms than allowed
    tied = np.array([0.1] * 50 + [0.9] * 50)
    assert (tied > calibrate_threshold(tied, 0.2)).mean() <= 0.2


def test_threshold_holds_the_false_alarm_rate_on_held_out_normals():
    rng = np.random.default_rng(0)
    calib, held_out = rng.beta(2, 8, 2000), rng.beta(2, 8, 20000)  # same normal distribution, fresh draws
    for fa in (0.01, 0.05, 0.1):
        t = calibrate_threshold(calib, fa)
        rate = float((held_out > t).mean())
        assert abs(rate - fa) < 0.4 * fa + 0.003, (fa, rate)
        assert rate < float((held_out > calibrate_threshold(calib, fa * 2)).mean())


def test_threshold_rejects_bad_input():
    with pytest.raises(ValueError):
        calibrate_threshold([], 0.01)
    with pytest.raises(ValueError):
        calibrate_threshold([0.1, 0.2], 1.0)


def _unit(v):
    v = np.asarray(v, dtype=np.float32)
    return v / np.linalg.norm(v)


def _scorer(**kw) -> TextureScorer:
    e = np.eye(6, dtype=np.float32)
    return TextureScorer(
        line="t",
        normal_anchor=e[0],
        defect_anchor=e[1],
        class_anchors={"a": e[2], "b": e[3], "c": e[4]},
        logit_scale=10.0,
        **kw,
    )


def test_text_scores_follow_the_anchors():
    s = _scorer()
    out = s.score_vectors(np.stack([_unit([1, 0.2, 0, 0, 0, 0]), _unit([0.2, 1, 0, 1, 0, 0])]))
    assert out[0].defect_score < 0.5 < out[1].defect_score
    assert out[1].best_class == "b" and out[1].source == "text"
    assert sum(out[1].class_probs.values()) == pytest.approx(1.0, abs=1e-5)
    # defect = sigmoid(s * (cos_d - cos_n)), raw cosines kept
    r = out[0]
    assert r.defect_score == pytest.approx(
        1 / (1 + np.exp(-10 * (r.defect_similarity - r.normal_similarity))), abs=1e-6
    )


def test_defect_only_prototypes_rename_but_do_not_move_the_defect_score():
    v = np.stack([_unit([0, 1, 1, 1, 0, 0.5])])  # text cannot tell a from b
    plain = _scorer().score_vectors(v)[0]
    protos = {"a": _unit([0, 0, 1, 0, 0, 1]), "b": _unit([0, 0, 0, 1, 0, -1])}
    mixed = _scorer(prototypes=protos, prototype_weight=0.5).score_vectors(v)[0]
    assert mixed.source == "text+prototypes"
    assert mixed.defect_score == pytest.approx(plain.defect_score)
    assert plain.class_probs["a"] == pytest.approx(plain.class_probs["b"], abs=1e-6)
    assert mixed.best_class == "a" and mixed.class_probs["a"] > mixed.class_probs["b"]
    # the mass of the prototype classes is only re-split; class c keeps its text probability
    assert mixed.class_probs["c"] == pytest.approx(plain.class_probs["c"], abs=1e-6)
    assert sum(mixed.class_probs.values()) == pytest.approx(1.0, abs=1e-5)


def test_a_normal_prototype_moves_the_defect_score():
    v = np.stack([_unit([1, 1, 0, 0, 0, 1])])  # text undecided between normal and defect
    base = _scorer().score_vectors(v)[0].defect_score
    near_normal = {NORMAL_KEY: _unit([0, 0, 0, 0, 0, 1]), "a": _unit([0, 0, 1, 0, 0, 0])}
    near_defect = {NORMAL_KEY: _unit([0, 0, 0, 0, 1, 0]), "a": _unit([0, 0, 0, 0, 0, 1])}
    assert _scorer(prototypes=near_normal).score_vectors(v)[0].defect_score < base
    assert _scorer(prototypes=near_defect).score_vectors(v)[0].defect_score > base
    assert _scorer(prototypes=near_defect, prototype_weight=0.0).score_vectors(v)[0].defect_score == pytest.approx(base)


def test_prototypes_from_examples_average_per_class():
    protos = prototypes_from_examples([("a", np.array([2.0, 0])), ("a", np.array([0, 3.0])), ("b", np.array([0, 1.0]))])
    assert np.allclose(protos["a"], _unit([1, 1]))
    assert np.allclose(protos["b"], [0, 1])
    s = _scorer()
    s.set_prototypes([("a", np.eye(6)[2]), ("zzz", np.eye(6)[5])])  # unknown class ignored
    assert s.proto_classes == ["a"]


def test_sliding_windows_cover_the_image():
    boxes = sliding_windows(640, 480, (0.25, 0.5), 0.5)
    covered = np.zeros((480, 640), bool)
    for b in boxes:
        assert 0 <= b.x1 < b.x2 <= 640 and 0 <= b.y1 < b.y2 <= 480
        assert b.width == b.height
        covered[int(b.y1) : int(b.y2), int(b.x1) : int(b.x2)] = True
    assert covered.all()
    assert {round(b.width) for b in boxes} == {120, 240}


LINE_YAML = """# a comment at the top
name: t
calibration:
  mm_per_px: 0.1   # keep me
classes:
  - name: scratch
locator: {weights: models/x.pt}
texture:
  threshold: 0.3   # old value
  max_false_alarm: 0.05

# comment of prompts
prompts:
  templates: {en: ["a photo of {state} {object}"]}
"""


def test_texture_block_rewrite_keeps_everything_else():
    new = rewrite_texture_block(LINE_YAML, texture_block(0.4321, 0.01, 250, "m@abc"))
    cfg = LineConfig.model_validate(yaml.safe_load(new))
    assert cfg.texture.threshold == pytest.approx(0.4321) and cfg.texture.max_false_alarm == pytest.approx(0.01)
    assert "# a comment at the top" in new and "# keep me" in new and "# comment of prompts" in new
    assert "old value" not in new
    assert cfg.prompts.templates.en == ["a photo of {state} {object}"]
    # without a texture block: appended
    bare = LINE_YAML.split("texture:")[0]
    cfg2 = LineConfig.model_validate(yaml.safe_load(rewrite_texture_block(bare, texture_block(0.5, 0.02, 10, "m"))))
    assert cfg2.texture.threshold == pytest.approx(0.5)
