"""LoRA adapters over a YOLO base: what is trainable, file size, save/load, switching, merging, the ultralytics
predict path and the bank. The base is a randomly initialised YOLOv8n built from ultralytics' bundled YAML (no
download, no ../shared needed); LoRA weights are set to random values so that adapters really change outputs."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from defect_agent.errors import ConfigError

BASE_NAMES = ["tab", "weld", "spatter"]
PCB_NAMES = ["open", "short", "mousebite", "spur", "copper", "pin_hole"]
OTHER_NAMES = ["scratch", "dent"]


def _fp16_exact_(model: nn.Module, adapter: str, seed: int) -> None:
    """Random adapter weights that survive the fp16 file unchanged."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, p in model.named_parameters():
            if f".{adapter}." in key:
                p.copy_((torch.randn(p.shape, generator=gen) * 0.05).half().float())


def _tiny_cfg(family: str) -> dict:
    """ultralytics' bundled YOLOv8 / YOLO11 architecture at an eighth of the nano width: same layer types, fast."""
    from defect_agent.runtime import configure_offline

    configure_offline()
    from ultralytics.nn.tasks import yaml_model_load

    cfg = yaml_model_load(f"{family}n.yaml")
    cfg["scales"] = {"n": [0.33, 0.125, 256]}
    cfg["scale"] = "n"
    return cfg


def _build_base(path: Path, family: str = "yolov8") -> Path:
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    model = DetectionModel(_tiny_cfg(family), nc=len(BASE_NAMES), verbose=False)
    model.names = dict(enumerate(BASE_NAMES))
    with torch.no_grad():  # non-trivial BatchNorm statistics, so that folding them matters
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    torch.save({"model": copy.deepcopy(model).half(), "train_args": {"imgsz": 64}, "version": "test"}, path)
    return path


@pytest.fixture(scope="module")
def base_path(tmp_path_factory) -> Path:
    return _build_base(tmp_path_factory.mktemp("lora") / "base.pt")


@pytest.fixture(scope="module")
def adapters(base_path, tmp_path_factory) -> dict[str, Path]:
    """Two adapters with different classes over the same base, saved to files."""
    from vision.locator.lora import LoraSettings, add_lora, load_detection_model, make_meta, prepare_base, save_adapter

    out = tmp_path_factory.mktemp("adapters")
    paths = {}
    for name, names, rank, seed in (("pcb", PCB_NAMES, 4, 1), ("steel", OTHER_NAMES, 8, 2)):
        model = prepare_base(load_detection_model(base_path))
        meta = add_lora(model, name, names, LoraSettings(rank=rank))
        _fp16_exact_(model, name, seed)
        paths[name] = save_adapter(model, name, out / f"{name}.safetensors", make_meta(meta, base_path, line=name))
    return paths


def _forward(model: nn.Module, seed: int = 0) -> torch.Tensor:
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(seed))
    model.eval()
    with torch.no_grad():
        return model(x)[0]


def test_injection_trains_only_lora_and_class_head(base_path):
    from vision.locator.lora import (
        LoraSettings,
        add_lora,
        assert_adapter_only,
        class_head_modules,
        load_detection_model,
        lora_target_modules,
        mark_trainable,
        prepare_base,
    )

    model = prepare_base(load_detection_model(base_path))
    base_before = {k: v.clone() for k, v in model.state_dict().items()}
    targets = lora_target_modules(model)
    heads = class_head_modules(model)
    convs = dict(model.named_modules())
    assert all(convs[t].groups == 1 for t in targets)
    assert not any(".dfl" in t for t in targets) and not set(heads) & set(targets)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # folded: statistics cannot move
    rank = 4
    expected_lora = sum(
        rank * (convs[t].in_channels * convs[t].kernel_size[0] * convs[t].kernel_size[1] + convs[t].out_channels)
        for t in targets
    )
    expected_head = sum(convs[h].in_channels * len(PCB_NAMES) + len(PCB_NAMES) for h in heads)

    add_lora(model, "pcb", PCB_NAMES, LoraSettings(rank=rank))
    counts = mark_trainable(model, "pcb")
    assert counts["lora"] == expected_lora
    assert counts["head"] == expected_head
    assert counts["other"] == 0
    assert_adapter_only(model, "pcb")
    assert counts["trainable"] < 0.25 * counts["base"]
    # every weight of the base is frozen and untouched by injection
    state = model.state_dict()
    for key, value in base_before.items():
        wrapped = key.rsplit(".", 1)
        candidates = [key, f"{wrapped[0]}.base_layer.{wrapped[1]}", f"{wrapped[0]}.original_module.{wrapped[1]}"]
        found = [c for c in candidates if c in state]
        assert found, key
        assert torch.equal(state[found[0]], value)
    frozen = [k for k, p in model.named_parameters() if p.requires_grad and ".pcb." not in k]
    assert frozen == []
    # a full unfreeze (what ultralytics' trainer does in its set-up) is caught and undone
    for p in model.parameters():
        p.requires_grad_(True)
    with pytest.raises(RuntimeError, match="outside the adapter"):
        assert_adapter_only(model, "pcb")
    assert mark_trainable(model, "pcb")["other"] == 0


def test_a_new_line_starts_near_the_class_prior_whatever_the_base_features(base_path):
    """Fresh class convolutions put every cell near the same prior logit: a base with large features (one
    fine-tuned on defects) cannot make the first class loss explode, as PyTorch's default init did."""
    import math

    from vision.locator.lora import LoraSettings, add_lora, class_head_modules, load_detection_model, prepare_base

    model = prepare_base(load_detection_model(base_path)).eval()
    add_lora(model, "pcb", PCB_NAMES, LoraSettings(rank=4))
    det = model.model[-1]
    torch.manual_seed(0)
    for name in class_head_modules(model):
        conv = model.get_submodule(name).modules_to_save["pcb"]
        level = int(name.split(".")[-2])
        prior = math.log(5 / len(PCB_NAMES) / (640 / float(det.stride[level])) ** 2)
        assert torch.allclose(conv.bias, torch.full_like(conv.bias, prior))
        default = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, bias=False)
        features = 10.0 * torch.randn(2, conv.in_channels, 4, 4)  # far larger than any base's
        with torch.no_grad():
            spread = (conv(features) - prior).std()
            assert spread < 0.25 * default(features).std()


def test_depthwise_convs_are_not_targeted(tmp_path):
    from vision.locator.lora import LoraSettings, add_lora, load_detection_model, lora_target_modules, prepare_base

    base = _build_base(tmp_path / "y11.pt", "yolo11")  # YOLO11's class branches hold depthwise convs
    model = prepare_base(load_detection_model(base))
    depthwise = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert depthwise
    targets = lora_target_modules(model)
    assert not set(depthwise) & set(targets)
    add_lora(model, "pcb", PCB_NAMES, LoraSettings(rank=4))
    assert _forward(model).shape[1] == 4 + len(PCB_NAMES)


def test_adapter_file_holds_only_the_adapter_in_fp16(base_path, adapters):
    from vision.locator.lora import read_adapter

    for name, path in adapters.items():
        meta, tensors = read_adapter(path)
        assert meta.line == name and meta.base_sha256 and meta.names
        assert all(t.dtype == torch.float16 for t in tensors.values())
        assert all(("lora_A" in k or "lora_B" in k or "modules_to_save" in k) for k in tensors)
        payload = sum(t.numel() * 2 for t in tensors.values())
        assert path.stat().st_size < payload + 64_000  # tensors + header / metadata, nothing else


def test_rank4_adapter_is_at_most_5_percent_of_the_real_base(tmp_path):
    from defect_agent.paths import project_root
    from vision.locator.lora import LoraSettings, add_lora, load_detection_model, make_meta, prepare_base, save_adapter

    base = project_root().parent / "shared" / "weights" / "yolov8n_from_int8onnx.pt"
    if not base.is_file():
        pytest.skip("../shared/weights/yolov8n_from_int8onnx.pt is absent (the real YOLOv8n base)")
    model = prepare_base(load_detection_model(base))
    meta = add_lora(model, "pcb", PCB_NAMES, LoraSettings(rank=4))
    path = save_adapter(model, "pcb", tmp_path / "pcb.safetensors", make_meta(meta, base, line="pcb"))
    assert path.stat().st_size <= 0.05 * base.stat().st_size


def test_save_load_round_trip_is_exact(base_path, tmp_path):
    from vision.locator.lora import (
        LoraSettings,
        add_lora,
        file_sha256,
        load_adapter,
        load_detection_model,
        make_meta,
        prepare_base,
        save_adapter,
    )

    model = prepare_base(load_detection_model(base_path))
    meta = add_lora(model, "pcb", PCB_NAMES, LoraSettings(rank=4))
    _fp16_exact_(model, "pcb", 7)
    before = _forward(model)
    path = save_adapter(model, "pcb", tmp_path / "a.safetensors", make_meta(meta, base_path, line="pcb"))
    fresh = prepare_base(load_detection_model(base_path))
    load_adapter(fresh, path, "anyname", file_sha256(base_path))
    after = _forward(fresh)
    assert after.shape == (2, 4 + len(PCB_NAMES), before.shape[2])
    assert torch.equal(before, after)
    plain = _forward(prepare_base(load_detection_model(base_path)))
    assert not torch.allclose(plain[:, :4], after[:, :4])  # the adapter does change the boxes


def test_switching_adapters_and_back_is_exact(base_path, adapters):
    from vision.locator.lora import activate, file_sha256, load_adapter, load_detection_model, prepare_base

    sha = file_sha256(base_path)
    plain = _forward(prepare_base(load_detection_model(base_path)))
    alone = {}
    for name in adapters:
        m = prepare_base(load_detection_model(base_path))
        load_adapter(m, adapters[name], name, sha)
        alone[name] = _forward(m)
    shared = prepare_base(load_detection_model(base_path))
    metas = {name: load_adapter(shared, path, name, sha) for name, path in adapters.items()}
    for name in ["pcb", "steel", "pcb", None, "steel"]:
        activate(shared, name, metas[name].names if name else None)
        out = _forward(shared)
        assert torch.equal(out, plain if name is None else alone[name]), name


def test_merged_model_matches_adapter(base_path, adapters, tmp_path):
    from vision.locator.lora import (
        _set_head_shape,
        file_sha256,
        load_adapter,
        load_detection_model,
        merge_adapter,
        merge_into_base,
        prepare_base,
    )

    model = prepare_base(load_detection_model(base_path))
    load_adapter(model, adapters["pcb"], "pcb", file_sha256(base_path))
    adapted = _forward(model)
    merged = merge_into_base(model, "pcb")
    _set_head_shape(merged, PCB_NAMES)
    assert not any("lora" in k for k in merged.state_dict())
    torch.testing.assert_close(_forward(merged), adapted, rtol=1e-4, atol=1e-3)

    from vision.locator.lora import load_merged_yolo

    in_memory = load_merged_yolo(base_path, adapters["pcb"])  # what a one-line process (a batch) predicts with
    assert not any("lora" in k for k in in_memory.model.state_dict())
    torch.testing.assert_close(_forward(in_memory.model), adapted, rtol=1e-4, atol=1e-3)

    out = merge_adapter(base_path, adapters["pcb"], tmp_path / "pcb.pt")
    from ultralytics import YOLO

    standalone = YOLO(str(out))
    assert [standalone.names[i] for i in range(len(PCB_NAMES))] == PCB_NAMES
    # the file is fp16: compare boxes / scores with fp16 tolerance
    torch.testing.assert_close(_forward(standalone.model.float()), adapted, rtol=2e-2, atol=5e-2)


def test_load_adapted_yolo_predicts_and_locator_uses_it(base_path, adapters):
    from defect_agent.config import LineConfig
    from vision.locator.lora import load_adapted_yolo
    from vision.locator.model import Locator

    yolo = load_adapted_yolo(base_path, adapters["pcb"])
    img = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
    res = yolo.predict(img, imgsz=64, conf=0.0, iou=0.5, device="cpu", verbose=False)[0]  # no fuse error on LoRA layers
    assert len(res.boxes) > 0 and int(res.boxes.cls.max()) < len(PCB_NAMES)
    line = LineConfig.model_validate(
        {
            "name": "pcb",
            "calibration": {"mm_per_px": 0.02},
            "classes": [{"name": n} for n in PCB_NAMES],
            "locator": {
                "weights": str(base_path),
                "base": str(base_path),
                "adapter": str(adapters["pcb"]),
                "imgsz": 64,
                "conf": 0.0,
            },
        }
    )
    locator = Locator.from_line(line)
    dets = locator.predict([img])[0]
    assert dets and {d.defect_class for d in dets} <= set(PCB_NAMES)
    assert "+pcb.safetensors@" in locator.version
    np.testing.assert_allclose(
        sorted(d.confidence for d in dets)[-5:], sorted(res.boxes.conf.numpy().tolist())[-5:], rtol=1e-5
    )


def test_adapter_over_another_base_is_refused(adapters, tmp_path):
    from vision.locator.lora import load_adapted_yolo

    other = _build_base(tmp_path / "other.pt")
    with torch.no_grad():  # a different base file: same architecture, different weights
        ckpt = torch.load(other, weights_only=False)
        next(ckpt["model"].parameters()).add_(1)
        torch.save(ckpt, other)
    with pytest.raises(ConfigError, match="retrain"):
        load_adapted_yolo(other, adapters["pcb"])


def test_bank_switches_in_place_with_fresh_detections(base_path, adapters):
    from ultralytics import YOLO

    from vision.locator.lora import AdapterBank, load_adapted_yolo

    img = (np.random.default_rng(1).random((64, 64, 3)) * 255).astype(np.uint8)

    def boxes(yolo) -> torch.Tensor:
        return yolo.predict(img, imgsz=64, conf=0.0, device="cpu", verbose=False)[0].boxes.data

    fresh = {name: boxes(load_adapted_yolo(base_path, path)) for name, path in adapters.items()}
    fresh[None] = boxes(YOLO(str(base_path)))
    bank = AdapterBank(base_path)
    for name, path in adapters.items():
        bank.add(name, path)
    assert bank.lines == ["pcb", "steel"]
    model_id = id(bank.yolo.model)
    for name in ["pcb", "steel", None, "pcb", "steel"]:
        yolo = bank.use(name)
        assert id(yolo.model) == model_id  # one base in memory
        assert torch.equal(boxes(yolo), fresh[name]), name
        assert [yolo.predictor.model.names[i] for i in range(len(bank.class_names(name)))] == bank.class_names(name)
    assert bank.switch_ms("pcb") < 1000  # generous: the benchmark measures it properly


def test_pool_shares_one_base_across_lines_with_fresh_detections(base_path, adapters):
    from defect_agent.config import LineConfig
    from vision.locator.lora import load_detection_model, model_class_names
    from vision.locator.model import Locator, LocatorPool

    def line(name, names, adapter):
        locator = {"weights": str(base_path), "imgsz": 64, "conf": 0.0}
        if adapter:
            locator.update(base=str(base_path), adapter=str(adapters[adapter]))
        return LineConfig.model_validate(
            {
                "name": name,
                "calibration": {"mm_per_px": 0.02},
                "classes": [{"name": n} for n in names],
                "locator": locator,
            }
        )

    lines = [
        line("pcb", PCB_NAMES, "pcb"),
        line("steel", OTHER_NAMES, "steel"),
        line("plain", model_class_names(load_detection_model(base_path)), None),
    ]
    img = (np.random.default_rng(3).random((64, 64, 3)) * 255).astype(np.uint8)
    fresh = {ln.name: Locator.from_line(ln).predict([img])[0] for ln in lines}
    pool = LocatorPool()
    pooled = {ln.name: pool.locator(ln) for ln in lines}
    assert len({id(p.model.model) for p in pooled.values()}) == 1  # one base in memory for the three lines
    for name in ["steel", "pcb", "plain", "steel", "plain", "pcb"]:
        got = pooled[name].predict([img])[0]
        want = fresh[name]
        assert [(d.defect_class, d.box, round(d.confidence, 5)) for d in got] == [
            (d.defect_class, d.box, round(d.confidence, 5)) for d in want
        ], name
    assert pool.locator(lines[0]).version == pooled["pcb"].version and "+pcb.safetensors@" in pooled["pcb"].version


def test_adapter_added_after_the_first_prediction_is_used(base_path, adapters):
    from vision.locator.lora import AdapterBank, load_adapted_yolo

    img = (np.random.default_rng(4).random((64, 64, 3)) * 255).astype(np.uint8)

    def boxes(yolo) -> torch.Tensor:
        return yolo.predict(img, imgsz=64, conf=0.0, device="cpu", verbose=False)[0].boxes.data

    bank = AdapterBank(base_path)
    boxes(bank.use(None))  # the predictor is set up before any adapter exists
    bank.add("steel", adapters["steel"])
    assert torch.equal(boxes(bank.use("steel")), boxes(load_adapted_yolo(base_path, adapters["steel"])))


def test_lora_bias_is_per_line_saved_switched_and_merged(base_path, tmp_path):
    """`bias=True` adds one output bias per adapted conv: stored in the adapter, gone when another line (or the
    plain base) is active, folded into the base bias on merge."""
    from vision.locator.lora import (
        LoraSettings,
        _set_head_shape,
        activate,
        add_lora,
        file_sha256,
        load_adapter,
        load_detection_model,
        lora_target_modules,
        make_meta,
        mark_trainable,
        merge_into_base,
        prepare_base,
        read_adapter_meta,
        save_adapter,
    )

    model = prepare_base(load_detection_model(base_path))
    convs = dict(model.named_modules())
    targets = lora_target_modules(model)
    probe = prepare_base(load_detection_model(base_path))
    add_lora(probe, "pcb", PCB_NAMES, LoraSettings(rank=4))
    plain_counts = mark_trainable(probe, "pcb")

    meta = add_lora(model, "pcb", PCB_NAMES, LoraSettings(rank=4, bias=True))
    counts = mark_trainable(model, "pcb")
    assert counts["lora"] == plain_counts["lora"] + sum(convs[t].out_channels for t in targets)
    assert counts["other"] == 0
    _fp16_exact_(model, "pcb", 11)
    adapted = _forward(model)
    path = save_adapter(model, "pcb", tmp_path / "b.safetensors", make_meta(meta, base_path, line="pcb"))
    assert read_adapter_meta(path).bias is True

    sha = file_sha256(base_path)
    shared = prepare_base(load_detection_model(base_path))
    base_out = _forward(shared)
    loaded = load_adapter(shared, path, "pcb", sha)
    assert torch.equal(_forward(shared), adapted)
    activate(shared, None)
    assert torch.equal(_forward(shared), base_out)  # the line's biases do not leak into the base
    activate(shared, "pcb", loaded.names)
    assert torch.equal(_forward(shared), adapted)

    merged = merge_into_base(shared, "pcb")
    _set_head_shape(merged, PCB_NAMES)
    torch.testing.assert_close(_forward(merged), adapted, rtol=1e-4, atol=1e-3)


def test_dora_magnitudes_are_per_line_saved_switched_and_merged(base_path, tmp_path):
    """`dora=True` adds one magnitude per output channel of each adapted conv (peft DoRA): it starts at the base
    weights' norms (the adapted model starts exactly at the base), is stored in the adapter, leaves the base and
    other lines untouched when they are active, and folds into the convolution on merge."""
    from vision.locator.lora import (
        LoraSettings,
        _set_head_shape,
        activate,
        add_lora,
        file_sha256,
        load_adapter,
        load_detection_model,
        lora_target_modules,
        make_meta,
        mark_trainable,
        merge_into_base,
        prepare_base,
        read_adapter,
        save_adapter,
    )

    model = prepare_base(load_detection_model(base_path))
    base_out = _forward(model)
    convs = dict(model.named_modules())
    targets = lora_target_modules(model)
    probe = prepare_base(load_detection_model(base_path))
    add_lora(probe, "pcb", BASE_NAMES, LoraSettings(rank=4))
    plain_counts = mark_trainable(probe, "pcb")

    meta = add_lora(model, "pcb", BASE_NAMES, LoraSettings(rank=4, dora=True))  # same classes: same head start
    counts = mark_trainable(model, "pcb")
    assert counts["lora"] == plain_counts["lora"] + sum(convs[t].out_channels for t in targets)
    assert counts["other"] == 0
    torch.testing.assert_close(_forward(model), base_out, rtol=1e-4, atol=1e-4)  # B = 0, magnitude = ||W||
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for key, p in model.named_parameters():
            if ".lora_magnitude_vector.pcb." in key:  # a per-channel rescale, as a line's BatchNorm gamma would be
                p.copy_((p * (1 + 0.2 * torch.rand(p.shape, generator=gen))).half().float())
            elif ".lora_B.pcb." in key or ".lora_A.pcb." in key:
                p.copy_((torch.randn(p.shape, generator=gen) * 0.05).half().float())
    adapted = _forward(model)
    assert not torch.allclose(adapted, base_out, atol=1e-2)
    path = save_adapter(model, "pcb", tmp_path / "d.safetensors", make_meta(meta, base_path, line="pcb"))
    file_meta, tensors = read_adapter(path)
    assert file_meta.dora is True
    assert sum("lora_magnitude_vector" in k for k in tensors) == len(targets)

    sha = file_sha256(base_path)
    shared = prepare_base(load_detection_model(base_path))
    loaded = load_adapter(shared, path, "pcb", sha)
    torch.testing.assert_close(_forward(shared), adapted, rtol=1e-4, atol=1e-4)
    activate(shared, None)
    assert torch.equal(_forward(shared), base_out)  # the line's magnitudes do not leak into the base
    activate(shared, "pcb", loaded.names)
    torch.testing.assert_close(_forward(shared), adapted, rtol=1e-4, atol=1e-4)

    # ultralytics' AutoBackend makes CPU models channels_last before validating or predicting
    torch.testing.assert_close(
        _forward(copy.deepcopy(shared).to(memory_format=torch.channels_last)), adapted, rtol=1e-4, atol=1e-4
    )

    merged = merge_into_base(shared, "pcb")
    _set_head_shape(merged, BASE_NAMES)
    torch.testing.assert_close(_forward(merged), adapted, rtol=1e-4, atol=1e-3)


def test_rank_pattern_sets_ranks_per_module_first_match_wins_and_survives_the_file(base_path, tmp_path):
    from vision.locator.lora import (
        LoraSettings,
        add_lora,
        load_adapter,
        load_detection_model,
        make_meta,
        prepare_base,
        read_adapter_meta,
        save_adapter,
    )

    model = prepare_base(load_detection_model(base_path))
    pattern = {r"model\.[01]\.": 16, r"model\.22\.cv3\.0\.": 6, r"model\.[0-4]\.": 8}
    meta = add_lora(model, "pcb", PCB_NAMES, LoraSettings(rank=2, head_rank=4, rank_pattern=pattern))
    ranks = {name: m.r["pcb"] for name, m in model.named_modules() if name in meta.target_modules}
    scales = {name: m.scaling["pcb"] for name, m in model.named_modules() if name in meta.target_modules}
    assert ranks["model.0.conv"] == ranks["model.1.conv"] == 16  # the first matching pattern, not the later 8
    assert {r for n, r in ranks.items() if n.startswith(("model.2.", "model.3.", "model.4."))} == {8}
    assert {r for n, r in ranks.items() if n.startswith("model.22.cv3.0.")} == {6}  # a pattern beats head_rank
    assert {r for n, r in ranks.items() if n.startswith("model.22.cv2.")} == {4}
    assert ranks["model.9.cv1.conv"] == 2
    assert set(scales.values()) == {2.0}  # alpha follows each rank: one LoRA scale everywhere
    _fp16_exact_(model, "pcb", 3)
    adapted = _forward(model)
    path = save_adapter(model, "pcb", tmp_path / "p.safetensors", make_meta(meta, base_path, line="pcb"))
    assert read_adapter_meta(path).rank_pattern == pattern
    fresh = prepare_base(load_detection_model(base_path))
    load_adapter(fresh, path, "pcb")
    assert torch.equal(_forward(fresh), adapted)


def test_rank_pattern_errors_are_clear():
    from defect_agent.config import load_rank_allocation
    from defect_agent.errors import ConfigError
    from vision.locator.lora import LoraSettings

    with pytest.raises(ValueError, match="not a regular expression"):
        LoraSettings(rank=2, rank_pattern={"model\\.[0-4": 16})
    with pytest.raises(ValueError, match="must be >= 1"):
        LoraSettings(rank=2, rank_pattern={"model": 0})
    with pytest.raises(ConfigError, match="known: p3"):
        load_rank_allocation("p4")
    assert load_rank_allocation("p3")  # the shipped allocation file parses


def test_dora_and_lora_bias_together_are_refused():
    from vision.locator.lora import LoraSettings

    with pytest.raises(ValueError, match="cannot be combined"):
        LoraSettings(rank=4, bias=True, dora=True)


def test_head_rank_gives_the_detect_head_its_own_rank_and_survives_the_file(base_path, tmp_path):
    from vision.locator.lora import (
        LoraSettings,
        add_lora,
        load_adapter,
        load_detection_model,
        make_meta,
        prepare_base,
        read_adapter_meta,
        save_adapter,
    )

    model = prepare_base(load_detection_model(base_path))
    meta = add_lora(model, "pcb", PCB_NAMES, LoraSettings(rank=2, head_rank=8))
    head = f"model.{len(model.model) - 1}."
    ranks = {name: m.r["pcb"] for name, m in model.named_modules() if name in meta.target_modules}
    scales = {name: m.scaling["pcb"] for name, m in model.named_modules() if name in meta.target_modules}
    assert {r for n, r in ranks.items() if n.startswith(head)} == {8}
    assert {r for n, r in ranks.items() if not n.startswith(head)} == {2}
    assert set(scales.values()) == {2.0}  # alpha follows the rank: the same LoRA scale everywhere
    _fp16_exact_(model, "pcb", 3)
    adapted = _forward(model)
    path = save_adapter(model, "pcb", tmp_path / "h.safetensors", make_meta(meta, base_path, line="pcb"))
    assert read_adapter_meta(path).head_rank == 8
    fresh = prepare_base(load_detection_model(base_path))
    load_adapter(fresh, path, "pcb")
    assert torch.equal(_forward(fresh), adapted)
