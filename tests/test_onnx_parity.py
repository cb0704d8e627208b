"""The ONNX engines of a line PC (`defect-agent export --line L --format onnx`, loaded with engine="onnx") against
the torch models they come from, exported once per module into a temporary folder:

- locator (battery_tab, generated images; pcb base + LoRA adapter merged, on DeepPCB composites where
  ../shared/datasets holds them): every torch box at least `conf + CONF_TOL` has an ONNX box of its class with
  IoU >= IOU_MIN and |confidence difference| <= CONF_TOL, and no ONNX box at least `conf + CONF_TOL` is left over;
- embedder image tower: cosine >= COSINE_MIN per crop; texts and version unchanged; the numpy crop preprocessing
  equal to the torch transform's;
- anomaly features (battery_tab): image scores and maps within MAP_TOL of the map's peak, the same regions;
- the whole onnx engine in a process where importing torch, torchvision, timm or ultralytics fails: the verdicts
  of the torch engine;
- pcb verifier: class probabilities (eight-view TTA, as the line runs it) within PROB_TOL, refined boxes within
  BOX_TOL px, on reference composites of DeepPCB pairs (synthetic boards without ../shared);
- the same files on OpenVINO (`onnx.runtime: openvino`, skipped without it): float32 within the tolerances above,
  bfloat16 within the BF16_* ones, the anomaly graph float32 either way.

Sockets are blocked for the whole suite (pytest-socket): the exports download nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from defect_agent.config import EmbedderConfig, load_line
from defect_agent.errors import ConfigError, DefectAgentError, ModelFileMissing
from defect_agent.paths import shared_datasets_dir
from vision.detection import Box, Detection

pytest.importorskip("onnxruntime", reason="the onnx engine needs onnxruntime (pip install onnxruntime==1.31.1)")
pytest.importorskip("onnx", reason="ONNX export needs the onnx package")

IOU_MIN = 0.95
CONF_TOL = 0.02
COSINE_MIN = 0.999
PROB_TOL = 1e-3
BOX_TOL = 0.5  # px: the verifier's refined box corners
MAP_TOL = 1e-4  # of the anomaly map's peak
THREADS = 2


def _app() -> typer.Typer:
    from agent.export_cli import register

    root, train, ev, data = typer.Typer(), typer.Typer(), typer.Typer(), typer.Typer()
    root.add_typer(train, name="train")
    root.add_typer(ev, name="eval")
    root.add_typer(data, name="data")
    register(root, train, ev, data)
    return root


def _export(line: str, out: Path | None, *parts: str) -> None:
    args = ["export", "--line", line, "--format", "onnx", *(["--out", str(out)] if out is not None else [])]
    for part in parts:
        args += ["--part", part]
    res = CliRunner().invoke(_app(), args)
    assert res.exit_code == 0, res.output
    for part in parts:
        assert f"wrote {part} " in res.output


@pytest.fixture(scope="module")
def battery_onnx(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("onnx-battery_tab")
    _export("battery_tab", out, "locator", "anomaly", "embedder")
    return out


@pytest.fixture(scope="module")
def pcb_onnx(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("onnx-pcb")
    _export("pcb", out, "locator", "verifier")
    return out


@pytest.fixture(scope="module")
def battery_images(tmp_path_factory) -> list[np.ndarray]:
    from vision.datasets.synth.battery_tab import generate_batch

    paths = generate_batch(tmp_path_factory.mktemp("battery"), n=6, seed=4242, progress=False)
    return [cv2.imread(str(p), cv2.IMREAD_COLOR) for p in paths]


def _deeppcb_pairs(n: int):
    root = shared_datasets_dir()
    if root is None or not (root / "deeppcb").is_dir():
        return None
    from vision.datasets.deeppcb import parse_annotation, scan_deeppcb
    from vision.reference import read_grey, reference_composite

    pairs = [p for p in scan_deeppcb(root / "deeppcb") if p.template is not None][::97][:n]
    return [
        (
            reference_composite(read_grey(p.test), read_grey(p.template)),
            parse_annotation(p.annotation.read_text(encoding="utf-8"), str(p.annotation)),
        )
        for p in pairs
    ]


def _synthetic_boards(n: int):
    """Template boards with pads and traces; the test board has holes and blobs punched in (no ../shared)."""
    rng = np.random.default_rng(7)
    out = []
    for _ in range(n):
        template = np.zeros((640, 640), np.uint8)
        for _ in range(12):
            x, y = (int(v) for v in rng.integers(20, 560, 2))
            cv2.rectangle(template, (x, y), (x + int(rng.integers(20, 80)), y + int(rng.integers(20, 80))), 255, -1)
        test = template.copy()
        truth = []
        for k in range(6):
            x, y = (int(v) for v in rng.integers(30, 610, 2))
            r = int(rng.integers(3, 9))
            cv2.circle(test, (x, y), r, 0 if k % 2 else 255, -1)
            truth.append((k, Box(x1=x - r, y1=y - r, x2=x + r, y2=y + r)))
        from vision.reference import reference_composite

        out.append((reference_composite(test, template), truth))
    return out


@pytest.fixture(scope="module")
def pcb_composites():
    return _deeppcb_pairs(3) or _synthetic_boards(3)


def box_deviation(
    torch_dets: list[Detection],
    onnx_dets: list[Detection],
    conf: float,
    iou_min: float = IOU_MIN,
    conf_tol: float = CONF_TOL,
) -> tuple[float, float]:
    """Asserts the tolerance of the module docstring; returns (lowest IoU, largest |conf diff|) over the matches."""
    worst_iou, worst_conf = 1.0, 0.0
    used: set[int] = set()
    for t in torch_dets:
        candidates = [(i, o) for i, o in enumerate(onnx_dets) if o.defect_class == t.defect_class and i not in used]
        best = max(candidates, key=lambda io: t.box.iou(io[1].box), default=None)
        if t.confidence < conf + conf_tol and (best is None or t.box.iou(best[1].box) < iou_min):
            continue  # at the threshold the other engine may fall just below it
        assert best is not None, f"torch box {t} has no ONNX box of its class"
        i, o = best
        iou, dconf = t.box.iou(o.box), abs(t.confidence - o.confidence)
        assert iou >= iou_min and dconf <= conf_tol, (t, o, iou, dconf)
        used.add(i)
        worst_iou, worst_conf = min(worst_iou, iou), max(worst_conf, dconf)
    extra = [o for i, o in enumerate(onnx_dets) if i not in used and o.confidence >= conf + conf_tol]
    assert not extra, f"ONNX boxes without a torch box: {extra}"
    return worst_iou, worst_conf


def _cells_on_disk(folder: Path, images: list[np.ndarray]) -> list[str]:
    paths = []
    for i, image in enumerate(images):
        paths.append(str(folder / f"cell{i}.png"))
        cv2.imwrite(paths[-1], image)
    return paths


def _inspect_cells(app, paths: list[str]) -> tuple[Any, list]:
    """An Inspector of battery_tab on `app` (no knowledge base) and its verdicts on the cells."""
    from agent.pipeline import Inspector

    inspector = Inspector.from_config(line="battery_tab", app=app, use_kb=False)
    query = inspector.parse("find every defect")
    return inspector, [inspector.inspect_image(query, p) for p in paths]


def assert_same_verdicts(reference: list, other: list) -> None:
    """Part verdict, instruction answer and the classes found at probability >= 0.5, image by image."""
    for t, o in zip(reference, other, strict=True):
        assert (t.verdict, t.matches_query) == (o.verdict, o.matches_query)
        assert sorted(d.defect_class for d in t.defects if d.probability >= 0.5) == sorted(
            d.defect_class for d in o.defects if d.probability >= 0.5
        )


def test_battery_tab_locator_boxes_match_torch(battery_onnx, battery_images):
    from vision.locator import Locator
    from vision.locator.model import OnnxLocator

    line = load_line("battery_tab")
    torch_loc = Locator.from_line(line)
    onnx_loc = Locator.from_line(line, engine="onnx", onnx_dir=battery_onnx, threads=THREADS)
    assert isinstance(onnx_loc, OnnxLocator) and onnx_loc.class_names == torch_loc.class_names
    assert onnx_loc.version.startswith(torch_loc.version + "|onnx@")
    from vision.locator import shared_pool

    pooled = shared_pool().locator(line, engine="onnx", onnx_dir=battery_onnx, threads=THREADS)
    assert isinstance(pooled, OnnxLocator) and pooled.detector is onnx_loc.detector  # one session per file
    # one pass at a low threshold covers the line's: greedy NMS only lets a box suppress less confident ones, so the
    # boxes above 0.25 are the same whether those below were there or not
    conf = 0.05
    found = onnx_loc.predict(battery_images, conf=conf)
    figures = [box_deviation(t, o, conf) for t, o in zip(torch_loc.predict(battery_images, conf=conf), found)]
    assert sum(d.confidence >= line.locator.conf for dets in found for d in dets) > len(battery_images)
    # mixed sizes: ultralytics letterboxes both engines to the square imgsz instead of the smallest stride multiple
    mixed = [battery_images[0], cv2.resize(battery_images[1], (512, 400)), battery_images[2][:300, :500].copy()]
    for t, o in zip(torch_loc.predict(mixed), onnx_loc.predict(mixed)):
        figures.append(box_deviation(t, o, line.locator.conf))
    print(
        f"battery_tab locator: 1 - min IoU {1 - min(f[0] for f in figures):.2e}, max |dconf| {max(f[1] for f in figures):.2e}"
    )


def test_pcb_locator_with_merged_adapter_matches_torch(pcb_onnx, pcb_composites):
    from vision.locator import Locator

    line = load_line("pcb")
    torch_loc = Locator.from_line(line)  # base + adapter, unmerged
    onnx_loc = Locator.from_line(line, engine="onnx", onnx_dir=pcb_onnx, threads=THREADS)
    assert onnx_loc.adapter_version == torch_loc.adapter_version and onnx_loc.adapter_version
    images = [c for c, _ in pcb_composites]
    conf = line.locator.detector_conf
    figures = [
        box_deviation(t, o, conf) for t, o in zip(torch_loc.predict(images, conf), onnx_loc.predict(images, conf))
    ]
    print(
        f"pcb locator (merged): 1 - min IoU {1 - min(f[0] for f in figures):.2e}, max |dconf| {max(f[1] for f in figures):.2e}"
    )


def test_pcb_verifier_probabilities_match_torch(pcb_onnx, pcb_composites):
    from vision.verifier.model import DefectVerifier

    line = load_line("pcb")
    torch_ver = DefectVerifier.for_line(line)
    onnx_ver = DefectVerifier.for_line(line, engine="onnx", onnx_dir=pcb_onnx, threads=THREADS)
    assert onnx_ver.tta and onnx_ver.meta == torch_ver.meta
    assert onnx_ver.version.startswith(torch_ver.version + "|onnx@")
    rng = np.random.default_rng(3)
    worst_p = worst_box = 0.0
    for composite, truth in pcb_composites:
        boxes = [b for _, b in truth]
        # detector boxes are a few pixels off the annotation: shifted and grown ones exercise the box head too
        shifts = rng.normal(0, 3, (len(boxes), 2))
        boxes += [
            Box(x1=b.x1 + dx - abs(dy), y1=b.y1 + dy, x2=b.x2 + dx + abs(dy), y2=b.y2 + dy)
            for b, (dx, dy) in zip(boxes, shifts)
        ]
        a, b = torch_ver.read(composite, boxes), onnx_ver.read(composite, boxes)
        worst_p = max(worst_p, float(np.abs(a.probabilities - b.probabilities).max()))
        corners = [
            abs(getattr(ba, k) - getattr(bb, k)) for ba, bb in zip(a.boxes, b.boxes) for k in ("x1", "y1", "x2", "y2")
        ]
        worst_box = max(worst_box, max(corners))
    composite, truth = pcb_composites[0]
    dets = [Detection(defect_class=line.class_names[c], class_id=c, box=bx, confidence=0.5) for c, bx in truth]
    va, vb = torch_ver.verify(composite, dets), onnx_ver.verify(composite, dets)
    assert [d.defect_class for d in va] == [d.defect_class for d in vb]
    assert all(a.box.iou(b.box) >= 0.999 for a, b in zip(va, vb))
    assert worst_p <= PROB_TOL and worst_box <= BOX_TOL, (worst_p, worst_box)
    print(f"pcb verifier: max |dp| {worst_p:.2e}, max box corner {worst_box:.2e} px")


def test_embedder_image_tower_matches_torch(battery_onnx, battery_images):
    from vision.crops import crop_region
    from vision.embedder import load_embedder
    from vision.embedder.model import OnnxImageEmbedder

    cfg = EmbedderConfig()
    torch_emb = load_embedder(cfg)
    onnx_emb = load_embedder(cfg, engine="onnx", onnx_dir=battery_onnx, threads=THREADS)
    assert isinstance(onnx_emb, OnnxImageEmbedder) and onnx_emb.version == torch_emb.version
    rng = np.random.default_rng(5)
    crops = []
    for image in battery_images[:6]:
        h, w = image.shape[:2]
        for _ in range(4):
            x, y = int(rng.integers(0, w - 40)), int(rng.integers(0, h - 40))
            side = float(rng.integers(24, 160))
            crops.append(crop_region(image, Box(x1=x, y1=y, x2=min(w, x + side), y2=min(h, y + 0.7 * side))))
    crops.append(cv2.cvtColor(battery_images[0][:50, :70], cv2.COLOR_BGR2GRAY))  # grey and not square
    a, b = torch_emb.embed_images(crops), onnx_emb.embed_images(crops)
    cosine = (a * b).sum(axis=1)
    assert a.shape == b.shape and cosine.min() >= COSINE_MIN, cosine.min()
    np.testing.assert_allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-5)
    texts = ["weld spatter", "焊渣飞溅"]
    np.testing.assert_array_equal(torch_emb.embed_texts(texts), onnx_emb.embed_texts(texts))
    print(
        f"embedder image tower: 1 - min cosine {1 - cosine.min():.2e}, max |d| {np.abs(a - b).max():.2e} over "
        f"{len(crops)} crops"
    )


def test_missing_or_stale_exports_name_the_export_command(battery_onnx, tmp_path):
    from vision.locator import Locator

    line = load_line("battery_tab")
    with pytest.raises(ModelFileMissing, match="defect-agent export --line battery_tab --format onnx"):
        Locator.from_line(line, engine="onnx", onnx_dir=tmp_path)
    other = line.model_copy(
        update={"locator": line.locator.model_copy(update={"weights": "models/locator/defect_base.pt"})}
    )
    with pytest.raises(ConfigError, match="re-export"):
        Locator.from_line(other, engine="onnx", onnx_dir=battery_onnx)
    with pytest.raises(ConfigError, match="engine"):
        Locator.from_line(line, engine="tensorrt")  # type: ignore[arg-type]
    from vision.embedder import load_embedder

    with pytest.raises(ModelFileMissing, match="--format onnx"):
        load_embedder(EmbedderConfig(), engine="onnx", onnx_dir=tmp_path)
    from agent.anomaly_stage import AnomalyStage

    with pytest.raises(ModelFileMissing, match="defect-agent export --line battery_tab --format onnx"):
        AnomalyStage.for_line(line, engine="onnx", onnx_dir=tmp_path)
    # an export traced for another input size no longer serves the model
    from defect_agent.paths import resolve
    from vision.anomaly import AnomalyModel
    from vision.anomaly.onnx_features import export_features

    bank = resolve(line.anomaly.model)
    model = AnomalyModel.load(bank)
    other = export_features(model.config.model_copy(update={"image_size": 320}), "0" * 64, tmp_path / "other.onnx")
    with pytest.raises(ConfigError, match="re-export"):
        AnomalyModel.load(bank, engine="onnx", onnx_file=other)


def test_export_never_writes_into_models(tmp_path):
    from defect_agent.paths import models_dir

    res = CliRunner().invoke(
        _app(), ["export", "--line", "battery_tab", "--format", "onnx", "--part", "locator", "--out", str(models_dir())]
    )
    assert res.exit_code != 0 and isinstance(res.exception, DefectAgentError)
    assert "models/" in str(res.exception)
    assert not (models_dir() / "locator.onnx").exists()
    res = CliRunner().invoke(_app(), ["export", "--line", "battery_tab", "--format", "onnx", "--part", "nope"])
    assert isinstance(res.exception, ConfigError)


def test_the_engine_is_chosen_in_the_config_and_gives_the_same_verdicts(tmp_path, battery_images):
    """`engine: onnx` in the app config: the Inspector runs the exported files from their default place
    (var/onnx/<line>, var/onnx/embedder) and judges the sample cells as the torch engine does."""
    from defect_agent.config import load_app_config
    from vision.locator.model import OnnxLocator

    _export("battery_tab", None, "locator", "anomaly", "embedder")
    paths = _cells_on_disk(tmp_path, battery_images)
    base = load_app_config()
    _, torch_verdicts = _inspect_cells(base.model_copy(update={"engine": "torch"}), paths)
    inspector, onnx_verdicts = _inspect_cells(base.model_copy(update={"engine": "onnx"}), paths)
    assert isinstance(inspector.locator, OnnxLocator)
    assert_same_verdicts(torch_verdicts, onnx_verdicts)


def test_numpy_crop_preprocessing_equals_the_torch_transform(battery_images):
    from vision.embedder import load_embedder
    from vision.embedder.onnx_image import _normalisation
    from vision.embedder.preprocess import numpy_batch, to_batch

    embedder = load_embedder(EmbedderConfig())
    mean, std = _normalisation(embedder.transform)
    image = battery_images[1]
    crops = [image[10:90, 30:200], image[:224, :224], image[5:300, 40:100], cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)]
    expected = to_batch(crops, embedder.transform).numpy()
    got = numpy_batch(crops, expected.shape[-1], mean, std)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    # crops prepared side by side on a pool land in their own rows, value for value
    np.testing.assert_array_equal(numpy_batch(crops, expected.shape[-1], mean, std, threads=3), got)


def _corners(box: Box) -> tuple[int, ...]:
    return (round(box.x1), round(box.y1), round(box.x2), round(box.y2))


def test_anomaly_features_match_torch(battery_onnx, battery_images):
    from agent.anomaly_stage import AnomalyStage

    line = load_line("battery_tab")
    torch_stage = AnomalyStage.for_line(line)
    onnx_stage = AnomalyStage.for_line(line, engine="onnx", onnx_dir=battery_onnx, threads=THREADS)
    assert onnx_stage.model.engine == "onnx" and onnx_stage.version == torch_stage.version
    for image in battery_images:
        t, o = torch_stage.model.score(image), onnx_stage.model.score(image)
        assert abs(t.score - o.score) <= MAP_TOL * t.score
        assert np.abs(t.map - o.map).max() <= MAP_TOL * t.map.max()
        (ts, tr), (os_, or_) = torch_stage.run(image, []), onnx_stage.run(image, [])
        assert ts.anomalous == os_.anomalous
        assert [_corners(m.box) for m in tr] == [_corners(m.box) for m in or_]
    with pytest.raises(RuntimeError, match="torch engine"):
        onnx_stage.model.fit(battery_images[:1])


def test_the_onnx_engine_process_never_imports_torch(tmp_path, battery_images):
    """A line PC's process on `engine: onnx` (DEFECT_AGENT_ENGINE) with torch, torchvision, timm and ultralytics made
    unimportable: it inspects, and its verdicts are the torch engine's on the same cells."""
    import json
    import os
    import subprocess
    import sys

    data = tmp_path / "data"
    env = {**os.environ, "DEFECT_AGENT_DATA": str(data)}
    exe = str(Path(sys.executable).with_name("defect-agent"))
    export = subprocess.run(
        [exe, "export", "--line", "battery_tab", "--format", "onnx"], env=env, capture_output=True, text=True
    )
    assert export.returncode == 0, export.stderr
    paths = _cells_on_disk(tmp_path, battery_images[:3])
    blocker = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'torchvision', 'timm', 'ultralytics'):\n"
        "            raise ImportError('blocked on a torch-free line PC: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "sys.argv = ['defect-agent', *sys.argv[1:]]\n"
        "from agent.cli import main\n"
        "main()\n"
    )
    outs = {}
    for engine in ("torch", "onnx"):
        out = tmp_path / f"{engine}.jsonl"
        cmd = [exe] if engine == "torch" else [sys.executable, "-c", blocker]
        run = subprocess.run(
            [*cmd, "inspect", "find every defect", *paths, "--line", "battery_tab", "--out", str(out)],
            env={**env, "DEFECT_AGENT_ENGINE": engine},
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parent.parent,
        )
        assert run.returncode in (0, 1), run.stderr[-2000:]
        outs[engine] = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(outs["onnx"]) == len(paths)
    for t, o in zip(outs["torch"], outs["onnx"]):
        assert (t["verdict"], t["matches_query"]) == (o["verdict"], o["matches_query"])
        assert [(d["defect_class"], d["probability"] >= 0.5) for d in t["defects"]] == [
            (d["defect_class"], d["probability"] >= 0.5) for d in o["defects"]
        ]


def test_sessions_take_the_inspectors_thread_count(battery_onnx):
    """onnxruntime fixes a session's pool when it is built: the app's `threads` must be settled before any model
    loads (a second inspector at another count used to get the first one's), and a batch keeps that count."""
    from agent.batch.threads import tuner_for
    from agent.pipeline import Inspector
    from defect_agent.config import load_app_config

    _export("battery_tab", None, "locator", "anomaly", "embedder")
    for n in (1, 2):
        app = load_app_config().model_copy(update={"engine": "onnx", "threads": n})
        inspector = Inspector.from_config(line="battery_tab", app=app, use_kb=False)
        sessions = [
            inspector.locator.detector.session,
            inspector.anomaly.model._extractor.session,
            inspector.embedder.session,
        ]
        assert [s.get_session_options().intra_op_num_threads for s in sessions] == [n, n, n]
        assert tuner_for("auto", "onnx").fixed == n


def test_setting_threads_never_imports_torch():
    import subprocess
    import sys

    code = (
        "import sys; from defect_agent.runtime import set_threads; set_threads(1); set_threads('auto', 'onnx'); "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# OpenVINO over the same files (`onnx.runtime: openvino`). float32: onnxruntime's tolerances. bfloat16 (`precision:
# bf16`, computed in bf16 where the CPU has AVX512-BF16 / AMX, else float32): boxes and crops move by the rounding of
# an 8-bit mantissa, so its tolerances are wider; the anomaly graph stays float32 (its distances cancel in bf16).
BF16_IOU_MIN = 0.9
BF16_CONF_TOL = 0.03
BF16_COSINE_MIN = 0.99
BF16_PROB_TOL = 0.01


@pytest.fixture
def openvino_backend(monkeypatch):
    """Sets the process's onnx runtime for one test (what `Inspector.from_config` does from `onnx:`), undone after."""
    pytest.importorskip("openvino", reason="onnx.runtime openvino needs OpenVINO (pip install openvino==2026.4.1)")
    from defect_agent import runtime

    def use(precision: str) -> None:
        monkeypatch.setattr(runtime, "_onnx_backend", ("openvino", precision))

    return use


@pytest.mark.parametrize("precision", ["f32", "bf16"])
def test_openvino_runs_the_exported_files(openvino_backend, precision, battery_onnx, battery_images):
    """The same exported files on OpenVINO: locator boxes, embeddings and anomaly maps against torch, within
    onnxruntime's tolerances in float32 and the wider bf16 ones in bfloat16; versions name the runtime."""
    from agent.anomaly_stage import AnomalyStage
    from vision.crops import crop_region
    from vision.embedder import load_embedder
    from vision.locator import Locator
    from vision.onnx_session import OpenVinoSession

    openvino_backend(precision)
    line = load_line("battery_tab")
    torch_loc = Locator.from_line(line)
    ov_loc = Locator.from_line(line, engine="onnx", onnx_dir=battery_onnx, threads=THREADS)
    session = ov_loc.detector.session
    assert isinstance(session, OpenVinoSession) and session.precision == precision
    assert session.compiled.get_property("INFERENCE_NUM_THREADS") == THREADS
    # unpinned: two 1-thread processes would otherwise both run on core 0 (benchmarks/bench_pinning.py)
    assert session.compiled.get_property("ENABLE_CPU_PINNING") is False
    assert ov_loc.version.endswith(f"+openvino-{precision}")
    iou_min, conf_tol = (IOU_MIN, CONF_TOL) if precision == "f32" else (BF16_IOU_MIN, BF16_CONF_TOL)
    conf = line.locator.conf
    found = ov_loc.predict(battery_images, conf=conf)
    figures = [
        box_deviation(t, o, conf, iou_min, conf_tol) for t, o in zip(torch_loc.predict(battery_images, conf), found)
    ]

    cfg = EmbedderConfig()
    torch_emb = load_embedder(cfg)
    ov_emb = load_embedder(cfg, engine="onnx", onnx_dir=battery_onnx, threads=THREADS)
    crops = [crop_region(im, d.box) for im, dets in zip(battery_images, found) for d in dets]
    crops += [im[100:300, 150:400] for im in battery_images]
    cosine = (torch_emb.embed_images(crops) * ov_emb.embed_images(crops)).sum(axis=1)
    assert cosine.min() >= (COSINE_MIN if precision == "f32" else BF16_COSINE_MIN), cosine.min()

    torch_stage = AnomalyStage.for_line(line)
    ov_stage = AnomalyStage.for_line(line, engine="onnx", onnx_dir=battery_onnx, threads=THREADS)
    assert ov_stage.model._extractor.session.precision == "f32"  # whatever the process chose
    for image in battery_images:
        t, o = torch_stage.model.score(image), ov_stage.model.score(image)
        assert np.abs(t.map - o.map).max() <= MAP_TOL * t.map.max()
    print(
        f"openvino {precision}: 1 - min IoU {1 - min(f[0] for f in figures):.2e}, max |dconf| "
        f"{max(f[1] for f in figures):.2e}, 1 - min cosine {1 - cosine.min():.2e} over {len(crops)} crops"
    )


def test_openvino_bf16_inspector_gives_the_torch_verdicts(tmp_path, battery_images, monkeypatch):
    """`onnx: {runtime: openvino, precision: bf16}` in the app config: the Inspector opens every session on
    OpenVINO and judges the sample cells as the torch engine does."""
    pytest.importorskip("openvino", reason="onnx.runtime openvino needs OpenVINO (pip install openvino==2026.4.1)")
    from defect_agent import runtime
    from defect_agent.config import OnnxRuntimeConfig, load_app_config
    from vision.onnx_session import OpenVinoSession

    # the Inspector settles the process's runtime from its app: put back what the process had afterwards
    monkeypatch.setattr(runtime, "_onnx_backend", runtime._onnx_backend)
    _export("battery_tab", None, "locator", "anomaly", "embedder")
    paths = _cells_on_disk(tmp_path, battery_images)
    base = load_app_config()
    onnx = OnnxRuntimeConfig(runtime="openvino", precision="bf16")
    _, torch_verdicts = _inspect_cells(base.model_copy(update={"engine": "torch"}), paths)
    inspector, openvino_verdicts = _inspect_cells(base.model_copy(update={"engine": "onnx", "onnx": onnx}), paths)
    assert isinstance(inspector.embedder.session, OpenVinoSession)
    assert isinstance(inspector.locator.detector.session, OpenVinoSession)
    assert_same_verdicts(torch_verdicts, openvino_verdicts)


def test_the_onnx_runtime_is_checked_and_overridable(monkeypatch):
    from defect_agent.config import AppConfig, load_app_config

    with pytest.raises(ValueError, match="bf16 needs runtime openvino"):
        AppConfig.model_validate({"onnx": {"precision": "bf16"}})
    load_app_config.cache_clear()
    monkeypatch.setenv("DEFECT_AGENT_ONNX_RUNTIME", "openvino")
    monkeypatch.setenv("DEFECT_AGENT_ONNX_PRECISION", "bf16")
    try:
        assert load_app_config().onnx.model_dump() == {"runtime": "openvino", "precision": "bf16"}
        monkeypatch.setenv("DEFECT_AGENT_ONNX_RUNTIME", "onnxruntime")
        load_app_config.cache_clear()
        with pytest.raises(ConfigError, match="DEFECT_AGENT_ONNX_PRECISION=bf16"):
            load_app_config()
    finally:
        monkeypatch.delenv("DEFECT_AGENT_ONNX_RUNTIME")
        monkeypatch.delenv("DEFECT_AGENT_ONNX_PRECISION")
        load_app_config.cache_clear()


def test_bf16_on_a_cpu_without_it_runs_float32_and_versions_say_so(monkeypatch, caplog):
    """A line PC without AVX512-BF16 / AMX: OpenVINO would compute float32 while versions said bf16; the backend
    settles on f32 with one warning naming the CPU's capabilities. With bfloat16 it stays bf16."""
    from defect_agent import runtime

    ov = pytest.importorskip("openvino", reason="onnx.runtime openvino needs OpenVINO (pip install openvino==2026.4.1)")

    def core_with(capabilities: list[str]) -> type:
        class Core:
            def get_property(self, device: str, name: str) -> list[str]:
                assert (device, name) == ("CPU", "OPTIMIZATION_CAPABILITIES")
                return capabilities

        return Core

    monkeypatch.setattr(runtime, "_onnx_backend", None)  # the process's choice, restored after the test
    try:
        monkeypatch.setattr(ov, "Core", core_with(["WINOGRAD", "FP32", "INT8"]))
        runtime._openvino_has_bf16.cache_clear()
        with caplog.at_level("WARNING", logger="defect_agent.runtime"):
            runtime.set_onnx_backend("openvino", "bf16")
            assert runtime.chosen_onnx_backend() == ("openvino", "f32")
            runtime.set_onnx_backend("openvino", "bf16")  # asked again: no second warning
        assert caplog.text.count("this CPU has no bfloat16") == 1 and "FP32" in caplog.text
        monkeypatch.setattr(ov, "Core", core_with(["BF16", "FP32"]))
        runtime._openvino_has_bf16.cache_clear()
        runtime.set_onnx_backend("openvino", "bf16")
        assert runtime.chosen_onnx_backend() == ("openvino", "bf16")
    finally:
        runtime._openvino_has_bf16.cache_clear()


def test_openvino_missing_or_a_bad_file_is_a_clear_error(monkeypatch, tmp_path):
    import sys

    from vision.onnx_session import OpenVinoSession

    bad = tmp_path / "locator.onnx"
    bad.write_bytes(b"not an onnx file")
    if _has_openvino():
        with pytest.raises(ConfigError, match=str(bad)):
            OpenVinoSession(bad, threads=1)
    monkeypatch.setitem(sys.modules, "openvino", None)  # as on a PC without it
    with pytest.raises(ConfigError, match="pip install openvino=="):
        OpenVinoSession(bad, threads=1)


def _has_openvino() -> bool:
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


@pytest.mark.parametrize("precision", ["f32", "bf16"])
def test_openvino_verifier_reads_boxes_as_torch_does(openvino_backend, precision, pcb_onnx, pcb_composites):
    """The pcb verifier's exported CNN on OpenVINO: the same class for every annotated box, probabilities within
    PROB_TOL in float32 and BF16_PROB_TOL in bfloat16."""
    from vision.onnx_session import OpenVinoSession
    from vision.verifier.model import DefectVerifier

    openvino_backend(precision)
    line = load_line("pcb")
    torch_ver = DefectVerifier.for_line(line)
    ov_ver = DefectVerifier.for_line(line, engine="onnx", onnx_dir=pcb_onnx, threads=THREADS)
    assert ov_ver.version.endswith(f"+openvino-{precision}")
    assert isinstance(ov_ver.model.session, OpenVinoSession)
    worst = 0.0
    for composite, truth in pcb_composites:
        boxes = [b for _, b in truth]
        a, b = torch_ver.read(composite, boxes), ov_ver.read(composite, boxes)
        assert (a.probabilities.argmax(1) == b.probabilities.argmax(1)).all()
        worst = max(worst, float(np.abs(a.probabilities - b.probabilities).max()))
    assert worst <= (PROB_TOL if precision == "f32" else BF16_PROB_TOL), worst
    print(f"openvino {precision} verifier: max |dp| {worst:.2e}")
