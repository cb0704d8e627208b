"""Issue 22, part 1: a model file must not run code. A pickle payload placed where a model is expected is refused
before any of its code runs (the marker file it would write never appears); files under models/ must match
models/MANIFEST.json, with DEFECT_AGENT_TRUST_MODELS or `python -m defect_agent.files record` to accept a user's own
retrained model; the shipped models still load, and their versions carry their sha256 prefixes.

Payloads are written to tmp folders (and to a scratch project root's models/), never to the repository's models/."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from defect_agent.config import load_line
from defect_agent.errors import ConfigError, ModelDigestMismatch, UnsafeModelFile
from defect_agent.files import file_sha256, main, manifest_path, read_manifest, record_model, verify_model_file
from defect_agent.paths import models_dir, resolve

ROOT = Path(__file__).resolve().parent.parent
BATTERY = resolve("models/locator/battery_tab.pt")
BATTERY_NAMES = ["tab", "weld", "spatter", "crack", "burn"]


class _Payload:
    """Unpickling this runs `exec`, which writes the marker file: what a crafted checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


def _torch_payload(path: Path, marker: Path) -> Path:
    """A torch.save archive (what ultralytics writes) whose 'model' runs code when unpickled."""
    torch.save({"model": _Payload(marker), "train_args": {"imgsz": 64}}, path)
    return path


@pytest.fixture
def marker(tmp_path) -> Path:
    return tmp_path / "payload-ran.txt"


@pytest.fixture
def payload(tmp_path, marker) -> Path:
    return _torch_payload(tmp_path / "battery_tab.pt", marker)


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A scratch project root: configs linked, models/ a real folder holding the repository's manifest and a copy
    of the shipped battery_tab locator, so payloads can be placed in models/ without touching the repository."""
    home = tmp_path / "home"
    (home / "models" / "locator").mkdir(parents=True)
    (home / "configs").symlink_to(ROOT / "configs")
    shutil.copyfile(ROOT / "models" / "MANIFEST.json", home / "models" / "MANIFEST.json")
    shutil.copyfile(BATTERY, home / "models" / "locator" / "battery_tab.pt")
    monkeypatch.setenv("DEFECT_AGENT_HOME", str(home))
    monkeypatch.delenv("DEFECT_AGENT_TRUST_MODELS", raising=False)
    return home


def _retrained_locator(path: Path) -> Path:
    """A legitimate but different checkpoint with the battery_tab classes: a user's own retrained model. A YOLOv8
    at an eighth of the nano width, built from ultralytics' bundled YAML (no download)."""
    from ultralytics.nn.tasks import DetectionModel, yaml_model_load

    from vision.locator.yolo import import_yolo

    import_yolo()
    cfg = yaml_model_load("yolov8n.yaml")
    cfg["scales"], cfg["scale"] = {"n": [0.33, 0.125, 256]}, "n"
    torch.manual_seed(0)
    model = DetectionModel(cfg, nc=len(BATTERY_NAMES), verbose=False)
    model.names = dict(enumerate(BATTERY_NAMES))
    torch.save({"model": model.half(), "train_args": {"imgsz": 64}}, path)
    return path


def _line_with(**locator):
    line = load_line("battery_tab")
    return line.model_copy(update={"locator": line.locator.model_copy(update=locator)})


# ------------------------------------------------------------------------------------------------- pickle payloads


def test_the_payload_really_runs_code_when_fully_unpickled(tmp_path):
    """The control: without the safe path this file runs its code, so the refusals below mean something."""
    ran = tmp_path / "control-ran.txt"
    control = _torch_payload(tmp_path / "control.pt", ran)
    torch.load(control, weights_only=False)
    assert ran.read_text() == "ran"


def test_payload_as_line_weights_is_refused_before_it_runs(payload, marker):
    from vision.locator.model import Locator

    with pytest.raises(UnsafeModelFile) as err:
        Locator.from_line(_line_with(weights=str(payload)))
    assert not marker.exists()
    assert err.value.path == payload and str(payload) in str(err.value)
    assert any("exec" in r for r in err.value.references), err.value.references
    assert "defect-agent train locator --line battery_tab" in str(err.value)


def test_payload_as_adapter_base_is_refused_in_every_loader(payload, marker, tmp_path):
    from vision.locator.lora import AdapterBank, load_adapted_yolo, load_detection_model
    from vision.locator.model import Locator, LocatorPool

    pcb = load_line("pcb")
    adapter = resolve(pcb.locator.adapter or "")
    line = pcb.model_copy(update={"locator": pcb.locator.model_copy(update={"base": str(payload)})})
    loaders = [
        lambda: Locator.from_line(line),
        lambda: LocatorPool().locator(line),
        lambda: load_adapted_yolo(payload, adapter),
        lambda: AdapterBank(payload),
        lambda: load_detection_model(payload),
    ]
    for load in loaders:
        with pytest.raises(UnsafeModelFile, match=str(payload)):
            load()
    assert not marker.exists()


def test_a_raw_pickle_is_refused_before_it_runs(tmp_path, marker):
    import pickle

    from vision.locator.model import Locator

    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps({"model": _Payload(marker)}))
    with pytest.raises(ConfigError, match="not a torch.save archive") as err:
        Locator.from_weights(raw)
    assert str(raw) in str(err.value)
    assert not marker.exists()


def test_the_restricted_unpickler_refuses_on_its_own(payload, marker):
    """The second layer alone (without the static scan of check_checkpoint): ultralytics' own loading inside
    `restricted_unpickling` uses torch's weights_only unpickler, which refuses the payload's global."""
    from vision.locator.yolo import import_yolo, restricted_unpickling

    YOLO = import_yolo()
    with pytest.raises(Exception, match="outside the supported") as err:  # noqa: PT011 - ultralytics' TypeError
        with restricted_unpickling():
            YOLO(str(payload), task="detect")
    assert UnsafeModelFile.blocked_by_weights_only(err.value) is not None
    assert not marker.exists()
    import ultralytics.nn.tasks as tasks
    import ultralytics.utils as ul_utils

    assert tasks.SAFE_LOAD == ul_utils.SAFE_LOAD  # the switch is put back after the block


def test_payload_as_embedder_checkpoint_is_refused_before_it_runs(payload, marker):
    from defect_agent.config import EmbedderConfig
    from vision.embedder import load_embedder

    with pytest.raises(UnsafeModelFile) as err:
        load_embedder(EmbedderConfig(pretrained=str(payload)))
    assert err.value.path == payload and "exec" in str(err.value)
    assert not marker.exists()


# -------------------------------------------------------------------------------------------------------- manifest


def test_payload_placed_in_models_is_refused_by_the_manifest(home, marker):
    from vision.locator.model import Locator

    target = home / "models" / "locator" / "battery_tab.pt"
    _torch_payload(target, marker)
    expected = read_manifest()["locator/battery_tab.pt"]
    with pytest.raises(ModelDigestMismatch) as err:
        Locator.from_line(load_line("battery_tab"))
    assert not marker.exists()
    msg = str(err.value)
    assert err.value.path == target and str(target) in msg
    assert err.value.expected == expected and err.value.actual == file_sha256(target)
    assert expected[:12] in msg and file_sha256(target)[:12] in msg
    assert "DEFECT_AGENT_TRUST_MODELS=" in msg and "python -m defect_agent.files record" in msg


def test_trusting_a_payload_accepts_its_digest_never_its_code(home, marker, monkeypatch):
    from vision.locator.model import Locator

    target = _torch_payload(home / "models" / "locator" / "battery_tab.pt", marker)
    monkeypatch.setenv("DEFECT_AGENT_TRUST_MODELS", str(target))
    with pytest.raises(UnsafeModelFile):
        Locator.from_line(load_line("battery_tab"))
    assert not marker.exists()


def test_a_retrained_model_is_refused_until_trusted_or_recorded(home, monkeypatch):
    from vision.locator.model import Locator

    target = _retrained_locator(home / "models" / "locator" / "battery_tab.pt")
    with pytest.raises(ModelDigestMismatch):
        Locator.from_line(load_line("battery_tab"))

    # for one run: the override, a list separated by os.pathsep (relative entries count from the project root)
    monkeypatch.setenv("DEFECT_AGENT_TRUST_MODELS", f"models/locator/other.pt:{target.relative_to(home)}")
    loc = Locator.from_line(load_line("battery_tab"))
    assert loc.class_names == BATTERY_NAMES
    assert loc.version == f"battery_tab.pt@{file_sha256(target)[:12]}"

    # for good: record it in the (scratch root's) manifest, as the training commands do
    monkeypatch.delenv("DEFECT_AGENT_TRUST_MODELS")
    assert main(["record", str(target)]) == 0
    assert read_manifest()["locator/battery_tab.pt"] == file_sha256(target)
    assert Locator.from_line(load_line("battery_tab")).version == loc.version
    assert manifest_path() == home / "models" / "MANIFEST.json"


def test_a_file_the_manifest_does_not_list_is_refused(home):
    from vision.locator.model import Locator

    other = home / "models" / "locator" / "downloaded.pt"
    shutil.copyfile(BATTERY, other)
    with pytest.raises(ModelDigestMismatch, match="not listed") as err:
        Locator.from_weights(other)
    assert err.value.expected is None
    # a link placed in models/ is checked like a file, wherever it points
    link = home / "models" / "locator" / "link.pt"
    link.symlink_to(BATTERY)
    with pytest.raises(ModelDigestMismatch):
        verify_model_file(link)


def test_files_outside_models_load_through_the_safe_path_only(tmp_path, home):
    from vision.locator.model import Locator

    own = _retrained_locator(tmp_path / "own.pt")
    assert Locator.from_weights(own).class_names == BATTERY_NAMES
    assert record_model(own) is None  # not in the manifest: nothing recorded
    assert main(["record", str(own)]) == 2


def test_safetensors_and_json_models_are_checked_too(home):
    """safetensors run no code, but a swapped shipped adapter or an edited verifier config is still refused."""
    from vision.locator.lora import read_adapter
    from vision.verifier.model import DefectVerifier

    locator = home / "models" / "locator"
    adapter = locator / "pcb_adapter.safetensors"
    adapter.write_bytes(b"not the shipped adapter")
    with pytest.raises(ModelDigestMismatch, match="pcb_adapter.safetensors"):
        read_adapter(adapter)
    for name in ("pcb_verifier.safetensors", "pcb_verifier.json"):
        shutil.copyfile(ROOT / "models" / "locator" / name, locator / name)
    DefectVerifier.from_file(locator / "pcb_verifier.safetensors")  # unchanged copies load
    meta = locator / "pcb_verifier.json"
    meta.write_text(meta.read_text(encoding="utf-8").replace('"crop": 48', '"crop": 64'), encoding="utf-8")
    with pytest.raises(ModelDigestMismatch, match="pcb_verifier.json"):
        DefectVerifier.from_file(locator / "pcb_verifier.safetensors")


def test_payload_as_embedder_in_models_is_refused_by_the_manifest(home, marker):
    from vision.embedder.checkpoint import read_checkpoint

    target = home / "models" / "embedder" / "defect-lite-minilm.pt"
    target.parent.mkdir()
    _torch_payload(target, marker)
    with pytest.raises(ModelDigestMismatch, match="defect-lite-minilm.pt"):
        read_checkpoint(target)
    assert not marker.exists()


# ------------------------------------------------------------------------------------------------- shipped models


def test_the_manifest_lists_every_shipped_model_file_and_they_match():
    listed = read_manifest()
    on_disk = {
        p.relative_to(models_dir()).as_posix()
        for pattern in ("*.pt", "*.safetensors")
        for p in models_dir().rglob(pattern)
    }
    assert on_disk <= set(listed), sorted(on_disk - set(listed))
    for rel, digest in listed.items():
        assert verify_model_file(models_dir() / rel) == digest


def test_shipped_models_load_and_their_versions_carry_the_digests():
    """What `Inspector.versions()` reads into every verdict: locator.version, locator.adapter_version,
    embedder.version, verifier.version."""
    from vision.embedder import load_embedder
    from vision.locator.model import Locator
    from vision.verifier.model import DefectVerifier

    digest = {rel.rsplit("/", 1)[-1]: sha[:12] for rel, sha in read_manifest().items()}
    battery = Locator.from_line(load_line("battery_tab"))
    assert battery.version == f"battery_tab.pt@{digest['battery_tab.pt']}"
    assert battery.adapter_version is None

    pcb_line = load_line("pcb")
    pcb = Locator.from_line(pcb_line)
    adapter = f"pcb_adapter.safetensors@{digest['pcb_adapter.safetensors']}"
    assert pcb.version == f"defect_base.pt@{digest['defect_base.pt']}+{adapter}"
    assert pcb.adapter_version == adapter
    verifier = DefectVerifier.for_line(pcb_line)
    assert verifier.version == f"pcb_verifier.safetensors@{digest['pcb_verifier.safetensors']}"
    assert load_embedder().version == f"defect-lite-minilm@{digest['defect-lite-minilm.pt']}"
