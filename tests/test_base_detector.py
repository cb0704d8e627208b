"""The shared base detector: `defect-agent train base` on a merged multi-line mix writes a checkpoint whose classes
are the prefixed union of the lines' classes, and the shipped base is the one every shipped adapter was cut for."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from test_locator_train import make_tiny_dataset
from typer.testing import CliRunner

from defect_agent.paths import resolve
from vision.datasets.yolo import merge_yolo_datasets

SHIPPED_BASE = resolve("models/locator/defect_base.pt")


def test_train_base_on_a_merged_mix_keeps_every_line_class(tmp_path: Path) -> None:
    from agent.cli import app
    from vision.locator.lora import load_detection_model

    a = make_tiny_dataset(tmp_path / "a", n_train=4, n_val=2, seed=0)
    b = make_tiny_dataset(tmp_path / "b", n_train=4, n_val=2, seed=1)
    mix = merge_yolo_datasets({"steel": a, "tab": b}, tmp_path / "mix", progress=False)
    out = tmp_path / "base.pt"
    res = CliRunner().invoke(
        app,
        [
            "train",
            "base",
            "--data",
            str(mix),
            "--base",
            "yolov8n.yaml",
            "--out",
            str(out),
            "--epochs",
            "1",
            "--imgsz",
            "128",
            "--batch",
            "4",
            "--train-bn-stats",
        ],
    )
    assert res.exit_code == 0, res.output + repr(res.exception)
    model = load_detection_model(out)
    names = model.names if isinstance(model.names, list) else [model.names[i] for i in sorted(model.names)]
    assert names == ["steel/square", "steel/disc", "tab/square", "tab/disc"]
    assert yaml.safe_load(mix.read_text())["nc"] == 4
    assert _batchnorm_drift(model) > 1e-3  # plain training moves the running statistics off their start


def _batchnorm_drift(model) -> float:
    """Largest distance of any BatchNorm's running statistics from the identity a fresh or COCO model starts at."""
    import torch

    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns
    return max(max(float(b.running_mean.abs().max()), float((b.running_var - 1).abs().max())) for b in bns)


def test_train_base_keeps_batchnorm_statistics_at_the_start_point_by_default(tmp_path: Path) -> None:
    from agent.cli import app
    from vision.locator.lora import load_detection_model

    data = make_tiny_dataset(tmp_path / "a", n_train=4, n_val=2, seed=0)
    out = tmp_path / "base.pt"
    res = CliRunner().invoke(
        app,
        [
            "train",
            "base",
            "--data",
            str(data),
            "--base",
            "yolov8n.yaml",
            "--out",
            str(out),
            "--epochs",
            "1",
            "--imgsz",
            "128",
            "--batch",
            "4",
        ],
    )  # the default: frozen
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert _batchnorm_drift(load_detection_model(out)) < 1e-6


@pytest.mark.skipif(not SHIPPED_BASE.is_file(), reason="models/locator/defect_base.pt not trained yet")
def test_shipped_pcb_adapter_is_cut_for_the_shipped_base() -> None:
    from defect_agent.config import load_line
    from vision.locator.lora import file_sha256, read_adapter_meta

    line = load_line("pcb")
    assert resolve(line.locator.base) == SHIPPED_BASE
    meta = read_adapter_meta(resolve(line.locator.adapter))
    assert meta.base_sha256 == file_sha256(SHIPPED_BASE)
    assert meta.imgsz == line.locator.imgsz  # the adapter runs at the size it was trained at


def test_a_missing_shared_base_names_the_command_that_trains_it(tmp_path: Path) -> None:
    from defect_agent.config import load_line
    from defect_agent.errors import ModelFileMissing
    from vision.locator.model import Locator

    line = load_line("pcb")
    missing = tmp_path / "nowhere" / "defect_base.pt"
    line = line.model_copy(update={"locator": line.locator.model_copy(update={"base": str(missing)})})
    with pytest.raises(ModelFileMissing) as err:
        Locator.from_line(line)
    assert str(missing) in str(err.value) and "defect-agent train base" in str(err.value)
