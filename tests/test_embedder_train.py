"""Training path: the multi-positive loss, the text sets, and (slow) a tiny end-to-end run whose checkpoint loads
back through load_embedder and holds only the trained parameters."""

from __future__ import annotations

import numpy as np
import pytest

from defect_agent.config import EmbedderConfig, load_line
from vision.embedder.descriptions import line_texts, state_prompts


def test_multi_positive_loss_prefers_mass_on_positives():
    import torch

    from vision.embedder.train import multi_positive_nce

    pos = torch.tensor([[True, True, False], [False, False, True]])
    good = torch.tensor([[5.0, 5.0, -5.0], [-5.0, -5.0, 5.0]])
    bad = -good
    assert float(multi_positive_nce(good, pos)) < 0.01 < float(multi_positive_nce(bad, pos))
    # two positives sharing the mass cost nothing extra
    split = torch.tensor([[5.0, 5.0, -50.0], [-50.0, -50.0, 5.0]])
    one = torch.tensor([[5.0, -50.0, -50.0], [-50.0, -50.0, 5.0]])
    assert float(multi_positive_nce(split, pos)) == pytest.approx(float(multi_positive_nce(one, pos)), abs=1e-4)


def test_line_texts_cover_every_kind_in_both_languages():
    for name in ("battery_tab", "pcb"):
        lt = line_texts(load_line(name))
        for kind in lt.kinds:
            key = f"{name}/{kind}"
            for lang in ("en", "zh"):
                assert any(key in t.kinds and t.lang == lang and t.role != "state" for t in lt.items), (key, lang)
        states = state_prompts(load_line(name), normal=False)
        assert states["en"] and states["zh"]
        assert all("{" not in t.text for t in lt.items)
    spatter = [t.text for t in line_texts(load_line("battery_tab")).items if t.kinds == {"battery_tab/spatter"}]
    assert "weld spatter beads scattered around the weld zone" in spatter and "焊接区周围有焊渣飞溅颗粒" in spatter


@pytest.mark.slow
def test_tiny_training_run_round_trips(tmp_path, monkeypatch):
    import torch

    from vision.embedder import load_embedder
    from vision.embedder.train import TrainSettings, train_embedder

    out = tmp_path / "tiny.pt"
    report = train_embedder(
        TrainSettings(
            out=out,
            lines=["battery_tab"],
            battery_train_images=8,
            battery_val_images=4,
            steps=20,
            zh_steps=2,
            eval_every=1000,
            progress=False,
        )
    )
    assert report.size_bytes < 5_000_000 and report.added_tokens > 50
    payload = torch.load(out, weights_only=True)
    assert set(payload["towers"]) == {"image", "text"} and len(payload["towers"]["text"]["sha256"]) == 64
    # only heads, logit scale and added rows: no tower weights in the file
    assert not any(k.startswith(("visual.trunk", "text.transformer")) for k in payload["state_dict"])
    emb = load_embedder(EmbedderConfig(pretrained=str(out)))
    v = emb.embed_texts(["spatter", "焊渣"])
    assert v.shape == (2, 256) and np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert emb.logit_scale == pytest.approx(report.logit_scale, rel=1e-2)
