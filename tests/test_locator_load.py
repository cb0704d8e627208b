"""Loading the locator: missing files name the file and the command that makes them, class lists must agree with
the checkpoint, inputs are checked, and nothing reaches for the network."""

from __future__ import annotations

import socket

import numpy as np
import pytest

from defect_agent.config import load_line
from defect_agent.errors import ConfigError, ImageReadError, ModelFileMissing
from defect_agent.paths import resolve

SHIPPED = resolve("models/locator/battery_tab.pt")
needs_shipped = pytest.mark.skipif(not SHIPPED.is_file(), reason="models/locator/battery_tab.pt not trained yet")


def _line_with(**locator):
    line = load_line("battery_tab")
    return line.model_copy(update={"locator": line.locator.model_copy(update=locator)})


def test_missing_weights_name_the_file_and_the_command(tmp_path):
    from vision.locator.model import Locator

    missing = tmp_path / "nowhere" / "battery_tab.pt"
    with pytest.raises(ModelFileMissing) as err:
        Locator.from_line(_line_with(weights=str(missing)))
    assert err.value.path == missing
    assert err.value.make_command == "defect-agent train locator --line battery_tab"
    assert str(missing) in str(err.value) and "defect-agent train locator --line battery_tab" in str(err.value)


def test_missing_adapter_names_the_adapter_command(tmp_path):
    from vision.locator.model import Locator

    with pytest.raises(ModelFileMissing) as err:
        Locator.from_line(_line_with(weights=str(SHIPPED), adapter=str(tmp_path / "a.safetensors")))
    assert err.value.path == tmp_path / "a.safetensors"
    assert "train adapter --line battery_tab" in str(err.value)


def test_missing_adapter_base_is_reported_before_the_adapter(tmp_path):
    from vision.locator.model import Locator

    with pytest.raises(ModelFileMissing) as err:
        Locator.from_line(_line_with(base=str(tmp_path / "base.pt"), adapter=str(tmp_path / "a.safetensors")))
    assert err.value.path == tmp_path / "base.pt"


def test_a_file_that_is_no_checkpoint_is_a_config_error(tmp_path):
    from vision.locator.model import Locator

    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(ConfigError, match="cannot load locator weights"):
        Locator.from_weights(bad)


@needs_shipped
def test_class_names_must_match_the_checkpoint_in_order():
    from vision.locator.model import Locator

    line = load_line("battery_tab")
    swapped = ["weld", "tab", *line.class_names[2:]]
    with pytest.raises(ConfigError, match="same id order"):
        Locator.from_weights(SHIPPED, swapped)
    with pytest.raises(ConfigError):
        Locator.from_line(line.model_copy(update={"classes": line.classes[:4]}))


@needs_shipped
def test_line_locator_carries_version_and_settings():
    from vision.locator.model import Locator, file_sha256

    loc = Locator.from_line(load_line("battery_tab"))
    assert loc.class_names == ["tab", "weld", "spatter", "crack", "burn"]
    assert loc.version == f"battery_tab.pt@{file_sha256(SHIPPED)[:12]}"
    assert (loc.imgsz, loc.conf, loc.iou) == (640, 0.25, 0.5)


@needs_shipped
def test_bad_images_are_refused_with_their_index():
    from vision.locator.model import Locator

    loc = Locator.from_weights(SHIPPED)
    with pytest.raises(ImageReadError, match="image 1: expected uint8"):
        loc.predict([np.zeros((32, 32, 3), np.uint8), np.zeros((32, 32, 3), np.float32)])
    with pytest.raises(ImageReadError, match="shape"):
        loc.predict([np.zeros((32, 32, 4), np.uint8)])
    assert loc.predict([]) == []
    assert loc.predict([np.zeros((48, 64), np.uint8)])[0] == []  # grey accepted, nothing on a black frame


@needs_shipped
def test_import_predict_and_val_never_touch_the_network(tmp_path, monkeypatch):
    """pytest-socket would raise on a socket, but ultralytics swallows such errors (font check, hub, analytics);
    record every attempt instead so a silent retry fails the test."""
    from vision.locator.model import Locator, import_yolo

    attempts: list[str] = []

    def spy(name):
        def _blocked(*args, **kwargs):
            attempts.append(f"{name}{args[:2]}")
            raise OSError("network disabled in tests")

        return _blocked

    monkeypatch.setattr(socket, "getaddrinfo", spy("getaddrinfo"))
    monkeypatch.setattr(socket, "create_connection", spy("create_connection"))
    monkeypatch.setattr(socket.socket, "connect", spy("connect"))
    import_yolo()
    from ultralytics.utils import USER_CONFIG_DIR, checks

    assert (USER_CONFIG_DIR / "Arial.ttf").is_file()
    assert checks.check_font("Arial.ttf") == USER_CONFIG_DIR / "Arial.ttf"

    from vision.datasets.synth.battery_tab import generate_battery_tab

    loc = Locator.from_weights(SHIPPED, imgsz=320)
    img, _ = generate_battery_tab(5)
    loc.predict([img])
    assert attempts == []
