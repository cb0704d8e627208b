"""Training a line's LoRA adapter through ultralytics' trainer, on a tiny drawn dataset over the shipped base:
only LoRA and class-head weights train, the base file's weights stay untouched, the adapter is a small file that
loads for prediction, and a warm start continues from an adapter instead of starting at B = 0."""

from __future__ import annotations

import pytest
import torch
from test_locator_train import make_tiny_dataset

from defect_agent.errors import ConfigError
from defect_agent.paths import resolve

BASE = resolve("models/locator/battery_tab.pt")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_dataset(tmp_path_factory.mktemp("tiny-adapter"), n_train=8, n_val=4)


@pytest.fixture(scope="module")
def first(tiny, tmp_path_factory):
    from vision.locator.adapter_train import train_adapter

    out = tmp_path_factory.mktemp("adapter") / "tiny.safetensors"
    return train_adapter(
        tiny, BASE, out, rank=4, epochs=1, imgsz=128, batch=4, line="tiny", run_dir=tmp_path_factory.mktemp("runs")
    )


def test_only_lora_and_class_head_train_and_the_file_is_small(first):
    assert first.trainable["other"] == 0 and first.trainable["lora"] > 0 and first.trainable["head"] > 0
    assert first.trainable["trainable"] < 0.1 * first.trainable["base"]
    assert first.adapter_bytes < 0.05 * first.base_bytes
    assert first.epochs_run == 1 and all(v == v for v in first.epoch_losses[0].values())  # finite, not NaN


def test_adapter_loads_over_the_untouched_base(first, tiny):
    import numpy as np

    from vision.locator.lora import file_sha256, load_adapted_yolo, read_adapter_meta

    meta = read_adapter_meta(first.adapter)
    assert meta.base_sha256 == file_sha256(BASE) == first.base_sha256  # the base file was not rewritten
    assert meta.names == ["square", "disc"] and meta.rank == 4
    from vision.locator.adapter_train import LORA_LR0

    assert meta.provenance["lr0"] == LORA_LR0 and meta.provenance["optimizer"] == "AdamW"
    yolo = load_adapted_yolo(BASE, first.adapter)
    img = np.full((128, 128, 3), 60, np.uint8)
    res = yolo.predict(img, imgsz=128, conf=0.0, device="cpu", verbose=False)[0]
    assert res.boxes is not None and int(res.boxes.cls.max()) <= 1


def test_warm_start_continues_the_adapter(first, tiny, tmp_path):
    from vision.locator.adapter_train import train_adapter
    from vision.locator.lora import read_adapter, read_adapter_meta

    out = tmp_path / "continued.safetensors"
    res = train_adapter(
        tiny,
        BASE,
        out,
        rank=16,
        epochs=1,
        imgsz=128,
        batch=4,
        line="tiny",
        run_dir=tmp_path / "r",
        init_adapter=first.adapter,
        keep="last",
    )
    meta = read_adapter_meta(out)
    assert meta.rank == 4  # the initial adapter's rank, not the argument's
    # --keep last: the schedule's end is written, with that epoch's validation row as its metrics
    import csv

    with (res.run_dir / "results.csv").open(newline="") as fh:
        last_row = list(csv.DictReader(fh))[-1]
    assert meta.provenance["checkpoint"] == "last"
    assert res.final_metrics == {k.strip(): float(v) for k, v in last_row.items() if k.strip().startswith("metrics/")}
    assert res.final_metrics
    assert meta.provenance["continued_from"]["file"] == first.adapter.name
    _, before = read_adapter(first.adapter)
    _, after = read_adapter(out)
    lora_b = [k for k in before if "lora_B" in k]
    assert lora_b and any(before[k].abs().sum() > 0 for k in lora_b)  # the first run moved B away from zero
    assert any(not torch.equal(before[k], after[k]) for k in lora_b)  # and the second kept training it
    assert res.trainable["other"] == 0


def test_warm_start_with_other_classes_is_refused(first, tmp_path):
    from test_locator_train import make_tiny_dataset

    from vision.locator.adapter_train import train_adapter

    data = make_tiny_dataset(tmp_path / "other", n_train=4, n_val=2)
    data.write_text(data.read_text().replace("square", "blob"))
    with pytest.raises(ConfigError, match="same classes"):
        train_adapter(
            data,
            BASE,
            tmp_path / "x.safetensors",
            epochs=1,
            imgsz=128,
            batch=4,
            run_dir=tmp_path / "r",
            init_adapter=first.adapter,
        )


def test_lora_bias_trains_through_the_trainer_and_stays_in_the_adapter(first, tiny, tmp_path):
    from vision.locator.adapter_train import train_adapter
    from vision.locator.lora import read_adapter, read_adapter_meta

    out = tmp_path / "bias.safetensors"
    res = train_adapter(
        tiny, BASE, out, rank=4, lora_bias=True, epochs=1, imgsz=128, batch=4, line="tiny", run_dir=tmp_path / "r"
    )
    assert res.trainable["other"] == 0  # the base's own (folded) biases stay frozen
    meta, tensors = read_adapter(out)
    assert meta.bias is True and read_adapter_meta(out).rank == 4
    biases = [k for k in tensors if "lora_B" in k and k.endswith(".bias")]
    assert len(biases) == len(meta.target_modules)
    assert any(tensors[k].abs().sum() > 0 for k in biases)  # trained away from their zero start
    assert res.trainable["lora"] - first.trainable["lora"] == sum(tensors[k].numel() for k in biases)


def test_dora_trains_its_magnitudes_through_the_trainer(first, tiny, tmp_path):
    from vision.locator.adapter_train import train_adapter
    from vision.locator.lora import load_adapted_yolo, read_adapter

    out = tmp_path / "dora.safetensors"
    res = train_adapter(
        tiny, BASE, out, rank=4, dora=True, epochs=1, imgsz=128, batch=4, line="tiny", run_dir=tmp_path / "r"
    )
    assert res.trainable["other"] == 0
    meta, tensors = read_adapter(out)
    assert meta.dora is True
    mags = [k for k in tensors if "lora_magnitude_vector" in k]
    assert len(mags) == len(meta.target_modules)
    assert res.trainable["lora"] - first.trainable["lora"] == sum(tensors[k].numel() for k in mags)
    assert res.adapter_bytes < 0.06 * res.base_bytes
    load_adapted_yolo(BASE, out)  # loads back over the untouched base


def test_dora_with_lora_bias_is_a_config_error(tiny, tmp_path):
    from vision.locator.adapter_train import train_adapter

    with pytest.raises(ConfigError, match="cannot be combined"):
        train_adapter(
            tiny,
            BASE,
            tmp_path / "x.safetensors",
            rank=4,
            dora=True,
            lora_bias=True,
            epochs=1,
            imgsz=128,
            batch=4,
            run_dir=tmp_path / "r",
        )


def test_class_convolutions_get_their_own_learning_rate(tiny, tmp_path):
    """lr0 drives the LoRA matrices only, head_lr0 the line's class convolutions: with lr0 = 0 every B stays at its
    zero start while the class convs train; with head_lr0 = 0 the LoRA trains and the class convs stay put."""
    from vision.locator.adapter_train import train_adapter
    from vision.locator.lora import read_adapter, read_adapter_meta

    runs = {}
    for name, lr0, head_lr0 in (("head_only", 0.0, 0.01), ("lora_only", 0.01, 0.0)):
        out = tmp_path / f"{name}.safetensors"
        train_adapter(
            tiny,
            BASE,
            out,
            rank=4,
            epochs=1,
            imgsz=128,
            batch=4,
            line="tiny",
            run_dir=tmp_path / name,
            lr0=lr0,
            head_lr0=head_lr0,
        )
        runs[name] = read_adapter(out)[1]
        assert read_adapter_meta(out).provenance["head_lr0"] == head_lr0
    lora_b = [k for k in runs["head_only"] if "lora_B" in k]
    heads = [k for k in runs["head_only"] if "lora_" not in k]
    assert lora_b and heads
    assert all(runs["head_only"][k].abs().sum() == 0 for k in lora_b)
    assert any(runs["lora_only"][k].abs().sum() > 0 for k in lora_b)
    # same seed, same fresh class convs at the start: only the run whose head_lr0 > 0 moved them
    assert any(not torch.equal(runs["head_only"][k], runs["lora_only"][k]) for k in heads)


def test_split_head_group_moves_only_class_convolutions_and_keeps_group_settings():
    from vision.locator.adapter_train import ADAPTER_NAME, split_head_group
    from vision.locator.lora import LoraSettings, add_lora, load_detection_model, mark_trainable, prepare_base

    model = prepare_base(load_detection_model(BASE))
    add_lora(model, ADAPTER_NAME, ["square", "disc"], LoraSettings(rank=4), trainable=True)
    mark_trainable(model, ADAPTER_NAME)
    named = {id(p): k for k, p in model.named_parameters() if p.requires_grad}
    biases = [p for p in model.parameters() if p.requires_grad and named[id(p)].endswith("bias")]
    weights = [p for p in model.parameters() if p.requires_grad and not named[id(p)].endswith("bias")]
    opt = torch.optim.AdamW(
        [
            {"params": biases, "param_group": "bias", "weight_decay": 0.0},
            {"params": weights, "param_group": "weight", "weight_decay": 5e-4},
        ],
        lr=0.012,
    )
    moved = split_head_group(opt, model, ADAPTER_NAME, 0.001)
    assert moved == sum(".modules_to_save." in k for k in named.values()) > 0
    seen = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(seen) == sorted(named)  # nothing lost, nothing twice
    for g in opt.param_groups:
        is_head = {".modules_to_save." in named[id(p)] for p in g["params"]}
        assert len(is_head) == 1
        assert g["lr"] == (0.001 if is_head.pop() else 0.012)
    # the only trainable biases are the class convs' (LoRA has none): their group moves whole, the emptied one goes
    assert sorted((g["param_group"], g["weight_decay"], g["lr"]) for g in opt.param_groups) == [
        ("bias", 0.0, 0.001),
        ("weight", 5e-4, 0.001),
        ("weight", 5e-4, 0.012),
    ]


def test_unknown_checkpoint_choice_is_refused_before_training(tiny, tmp_path):
    from vision.locator.adapter_train import train_adapter

    with pytest.raises(ConfigError, match="keep"):
        train_adapter(
            tiny, BASE, tmp_path / "x.safetensors", epochs=1, imgsz=128, batch=4, keep="median", run_dir=tmp_path / "r"
        )
