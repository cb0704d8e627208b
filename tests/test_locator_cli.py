"""`defect-agent train locator` / `eval locator` through typer, on small generated battery_tab sets."""

from __future__ import annotations

import json

import pytest
import typer
from typer.testing import CliRunner

from defect_agent.paths import resolve

SHIPPED = resolve("models/locator/battery_tab.pt")


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    from vision.locator.cli import register

    root, train, ev, data = typer.Typer(), typer.Typer(), typer.Typer(), typer.Typer()
    root.add_typer(train, name="train")
    root.add_typer(ev, name="eval")
    root.add_typer(data, name="data")
    register(root, train, ev, data)
    return root


@pytest.mark.skipif(not SHIPPED.is_file(), reason="models/locator/battery_tab.pt not trained yet")
def test_eval_generates_a_fresh_test_set_and_reports(app, tmp_path):
    out = tmp_path / "m.json"
    res = CliRunner().invoke(
        app, ["eval", "locator", "--line", "battery_tab", "--generate", "12", "--seed", "1001", "--json", str(out)]
    )
    assert res.exit_code == 0, res.output
    for text in ("mAP50", "mAP50-95", "spatter", "weld", "image-level miss rate"):
        assert text in res.output
    m = json.loads(out.read_text())
    assert m["n_images"] == 12 and m["split"] == "val" and m["conf_operating"] == 0.25
    assert m["locator_version"].startswith("battery_tab.pt@")
    assert [c["name"] for c in m["per_class"]] == ["tab", "weld", "spatter", "crack", "burn"]
    assert {c["name"]: c["role"] for c in m["per_class"]}["weld"] == "part"
    assert m["defect_classes"] == ["spatter", "crack", "burn"]
    assert m["per_class"][0]["recall"] == 1.0  # every tab found


def test_train_on_a_tiny_generated_set_writes_weights(app, tmp_path):
    from vision.datasets.synth.dataset import write_yolo_dataset

    data = write_yolo_dataset(tmp_path / "ds", n_train=6, n_val=2, seed=3)
    out = tmp_path / "w" / "bt.pt"
    res = CliRunner().invoke(
        app,
        [
            "train",
            "locator",
            "--line",
            "battery_tab",
            "--data",
            str(data),
            "--base",
            "yolov8n.yaml",
            "--epochs",
            "1",
            "--imgsz",
            "128",
            "--batch",
            "4",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    assert out.is_file() and "wrote" in res.output

    from vision.locator.model import Locator

    assert Locator.from_weights(out, ["tab", "weld", "spatter", "crack", "burn"]).class_names[1] == "weld"


def test_train_refuses_a_dataset_of_other_classes(app, tmp_path):
    from defect_agent.errors import ConfigError

    data = tmp_path / "data.yaml"
    (tmp_path / "images" / "train").mkdir(parents=True)
    (tmp_path / "images" / "val").mkdir(parents=True)
    data.write_text(f"path: {tmp_path}\ntrain: images/train\nval: images/val\nnames: [open, short]\n")
    res = CliRunner().invoke(app, ["train", "locator", "--line", "battery_tab", "--data", str(data)])
    assert isinstance(res.exception, ConfigError) and "differ from the line" in str(res.exception)
