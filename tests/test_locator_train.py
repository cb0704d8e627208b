"""Training and evaluation of the YOLO locator on a tiny drawn dataset (imgsz 128): finite loss, a loadable
stripped checkpoint, head-only fine-tuning really freezing the backbone, base-model checks that forbid downloads,
and the evaluator's operating-point figures agreeing with its own definition."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from defect_agent.errors import ConfigError, EmptyInput
from defect_agent.paths import resolve

SHIPPED = resolve("models/locator/battery_tab.pt")
NAMES = ["square", "disc"]


def make_tiny_dataset(
    root: Path, n_train: int = 8, n_val: int = 4, size: int = 128, seed: int = 0, empty_val: int = 0
) -> Path:
    """Grey background, one bright square (class 0) and one red disc (class 1) per image; `empty_val` defect-free
    validation images at the end."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img = np.full((size, size, 3), 60, np.uint8)
            lines = []
            if not (split == "val" and i >= n - empty_val):
                for k in range(2):
                    s = int(rng.integers(18, 34))
                    x, y = int(rng.integers(0, size - s)), int(rng.integers(0, size - s))
                    if k == 0:
                        cv2.rectangle(img, (x, y), (x + s - 1, y + s - 1), (230, 230, 230), -1)
                    else:
                        cv2.circle(img, (x + s // 2, y + s // 2), s // 2, (40, 40, 220), -1)
                    lines.append(f"{k} {(x + s / 2) / size:.6f} {(y + s / 2) / size:.6f} {s / size:.6f} {s / size:.6f}")
            cv2.imwrite(str(root / "images" / split / f"{i:03d}.png"), img)
            (root / "labels" / split / f"{i:03d}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
    data = root / "data.yaml"
    data.write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n  0: square\n  1: disc\n")
    return data


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_dataset(tmp_path_factory.mktemp("tiny"), empty_val=1, n_val=5)


@pytest.fixture(scope="module")
def trained(tiny, tmp_path_factory):
    from vision.locator.train import train_locator

    out = tmp_path_factory.mktemp("out") / "tiny.pt"
    return train_locator(
        tiny, "yolov8n.yaml", out, epochs=1, imgsz=128, batch=4, run_dir=tmp_path_factory.mktemp("runs")
    )


def test_one_epoch_from_scratch_gives_finite_loss_and_a_loadable_file(trained):
    from vision.locator.model import Locator

    assert trained.epochs_run == 1
    loss = trained.final_loss
    assert set(loss) >= {"box_loss", "cls_loss", "dfl_loss"}
    assert all(math.isfinite(v) and v > 0 for v in loss.values())
    assert trained.weights.is_file()
    assert trained.weights.stat().st_size < 15e6  # stripped: no optimizer state
    assert trained.args["nbs"] == 4 and trained.args["warmup_epochs"] == 0.0 and trained.args["amp"] is False
    loc = Locator.from_weights(trained.weights, NAMES, imgsz=128)
    assert loc.class_names == NAMES
    assert loc.version.startswith("tiny.pt@") and len(loc.version.split("@")[1]) == 12
    dets = loc.predict([np.zeros((96, 160, 3), np.uint8)], conf=0.001)
    for d in dets[0]:  # boxes stay inside the original image whatever an untrained model says
        assert 0 <= d.box.x1 <= d.box.x2 <= 160 and 0 <= d.box.y1 <= d.box.y2 <= 96


@pytest.mark.skipif(not SHIPPED.is_file(), reason="models/locator/battery_tab.pt not trained yet")
def test_head_only_fine_tuning_keeps_the_backbone(tiny, tmp_path):
    from vision.locator.train import train_locator

    res = train_locator(
        tiny, SHIPPED, tmp_path / "head.pt", epochs=1, imgsz=128, batch=4, freeze=10, run_dir=tmp_path / "runs"
    )
    before = torch.load(SHIPPED, map_location="cpu", weights_only=False)["model"].float().state_dict()
    after = torch.load(res.weights, map_location="cpu", weights_only=False)["model"].float().state_dict()
    backbone = [k for k in after if k.startswith(tuple(f"model.{i}." for i in range(10))) and "num_batches" not in k]
    head = [
        k
        for k in after
        if k.startswith("model.22.")
        and k in before
        and after[k].shape == before[k].shape
        and after[k].is_floating_point()
    ]
    assert backbone and head
    # frozen: equal up to the fp16 rounding of the EMA copy; trained: moved well beyond it
    assert all(torch.allclose(before[k], after[k], rtol=1e-3, atol=1e-5) for k in backbone)
    assert any(not torch.allclose(before[k], after[k], rtol=1e-2, atol=1e-4) for k in head)


@pytest.mark.parametrize("name", ["yolov8n.pt", "yolo11n", "https://example.com/yolov8n.pt", "not_a_model.yaml"])
def test_base_that_would_download_is_refused(name, tiny, tmp_path):
    from vision.locator.train import train_locator

    with pytest.raises(ConfigError, match="neither a local file nor a model YAML bundled"):
        train_locator(tiny, name, tmp_path / "x.pt", epochs=1, imgsz=64, batch=2, run_dir=tmp_path / "runs")
    assert not (tmp_path / "x.pt").exists()
    assert not Path(name).exists()  # nothing was fetched into the working folder


def test_bundled_yaml_resolves_without_network():
    from vision.locator.train import bundled_model_yaml, resolve_base

    assert bundled_model_yaml("yolov8n.yaml").name == "yolov8.yaml"
    assert resolve_base("yolov8n.yaml") == "yolov8n.yaml"


def test_missing_split_is_refused_before_training(tmp_path):
    from vision.locator.train import train_locator

    data = tmp_path / "data.yaml"
    data.write_text(
        f"path: {tmp_path}\ntrain: images/train\nval: images/val\nnames: [a]\ndownload: https://example.com/data.zip\n"
    )
    with pytest.raises(EmptyInput, match="train images not found"):
        train_locator(data, "yolov8n.yaml", tmp_path / "x.pt", epochs=1, imgsz=64, batch=2)


def test_eval_figures_follow_their_definitions(trained, tiny):
    from vision.locator.eval import evaluate_locator, read_truth, split_images
    from vision.locator.model import Locator

    loc = Locator.from_weights(trained.weights, NAMES, imgsz=128)
    m = evaluate_locator(loc, tiny, conf_operating=0.001, imgsz=128)
    images = split_images(tiny, "val")
    assert m.n_images == len(images) == 5
    assert m.images_with_defects == 4 and m.images_without_defects == 1
    assert m.n_instances == 8 and [c.instances for c in m.per_class] == [4, 4]
    # recompute the miss rate from the locator's own predictions at the same threshold
    preds = loc.predict([cv2.imread(str(p)) for p in images], conf=0.001)
    truths = [read_truth(p, NAMES, (128, 128)) for p in images]
    missed = sum(1 for t, p in zip(truths, preds) if t and not p)
    assert m.missed_images == missed and m.miss_rate == pytest.approx(missed / 4)
    assert 0.0 <= m.map50 <= 1.0 and 0.0 <= m.map50_95 <= m.map50 + 1e-9


def test_eval_square_protocol_validates_unpadded_input_too(trained, tiny):
    from vision.locator.eval import evaluate_locator
    from vision.locator.model import Locator

    loc = Locator.from_weights(trained.weights, NAMES, imgsz=128)
    shapes: list[tuple[int, ...]] = []
    real_val = loc.model.val

    def val_recording_input(**kw):
        # the input tensor shape each validator saw: padded rect batches vs square ones
        from ultralytics.models.yolo.detect import DetectionValidator

        original = DetectionValidator.preprocess

        def preprocess(self, batch):
            shapes.append(tuple(batch["img"].shape[-2:]))
            return original(self, batch)

        DetectionValidator.preprocess = preprocess
        try:
            return real_val(**kw)
        finally:
            DetectionValidator.preprocess = original

    loc.model.val = val_recording_input
    plain = evaluate_locator(loc, tiny, conf_operating=0.001, imgsz=128)
    assert plain.map50_square is None and set(shapes) == {(160, 160)}  # 128 px padded by half a 32-px cell
    shapes.clear()
    both = evaluate_locator(loc, tiny, conf_operating=0.001, imgsz=128, square=True)
    assert set(shapes) == {(160, 160), (128, 128)}
    assert both.map50 == pytest.approx(plain.map50)
    assert 0.0 <= both.map50_95_square <= both.map50_square <= 1.0


def test_eval_refuses_a_dataset_with_other_classes(trained, tmp_path):
    from vision.locator.eval import evaluate_locator

    other = make_tiny_dataset(tmp_path / "other", n_train=1, n_val=1)
    other.write_text(other.read_text().replace("0: square\n  1: disc", "0: disc\n  1: square"))
    with pytest.raises(ConfigError, match="differ"):
        evaluate_locator(trained.weights, other, conf_operating=0.25, imgsz=128)
