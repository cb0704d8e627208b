"""Per-line LoRA adapters (peft) over one shared ultralytics YOLO base detector.

How a base is adapted (`prepare_base` + `add_lora`):
- BatchNorm is folded into the convolutions first (ultralytics' own `fuse`). The base's normalisation statistics
  therefore stay exactly as trained, whatever mode the trainer puts the model in, and ultralytics never tries to fuse
  the model again (it only fuses models that still hold BatchNorm, and fusing fails on LoRA-wrapped convolutions).
- LoRA goes into an explicit list of ordinary convolutions (`lora_target_modules`: groups == 1), never into
  depthwise convolutions nor into the fixed DFL convolution.
- The class-score convolutions at the end of each detection branch (`class_head_modules`) are peft
  `modules_to_save`: a line has its own classes, so each adapter carries its own copy of them, sized to its class
  count (the base keeps its own head for its own line).
Everything else is frozen. An adapter file holds only the LoRA matrices and the class convolutions, in fp16
(safetensors), with JSON metadata: class names, LoRA settings, target list and the sha256 of the base it was trained
over (loading it over another base is refused).

`AdapterBank` keeps one base in memory and switches between lines' adapters in place."""

from __future__ import annotations

import copy
import json
import logging
import math
import re
import sys
import threading
import time
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import torch
from pydantic import BaseModel, Field, field_validator, model_validator
from torch import nn

from defect_agent.errors import ConfigError, ModelFileMissing
from defect_agent.files import file_sha256, record_model, verify_model_file
from vision.locator.yolo import BASE_COMMAND, load_yolo

if TYPE_CHECKING:
    from ultralytics import YOLO
    from ultralytics.nn.modules.head import Detect
    from ultralytics.nn.tasks import DetectionModel

log = logging.getLogger(__name__)

ADAPTER_FORMAT = "defect-agent-lora/1"
META_KEY = "defect_agent"
BASE_ATTR = "_defect_agent_base_names"  # the base head's class names, kept on the model for `activate(model, None)`
_ADAPTER_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_LORA_PARTS = ("lora_A", "lora_B", "lora_magnitude_vector")  # the low-rank update (and DoRA's magnitudes)
_PEFT_PARTS = (*_LORA_PARTS, "modules_to_save")


class LoraSettings(BaseModel):
    """How a line's LoRA adapter is built: rank (overall, in the head, per module), alpha, dropout, and the
    optional output bias or DoRA."""

    rank: int = Field(8, ge=1)
    alpha: float | None = None  # default 2 * rank (LoRA scale 2)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    # a per-line output bias on every adapted convolution (peft `lora_bias`), the one shift folded-and-frozen
    # BatchNorm leaves no room for; off by default: on DeepPCB it did not help (benchmarks/results/lora_cpu320.md)
    bias: bool = False
    # DoRA (peft `use_dora`): a per-line magnitude for every output channel of every adapted convolution, i.e. the
    # per-channel scale (BatchNorm's gamma) that a folded, frozen BatchNorm and a low-rank update cannot express.
    # Off by default: on DeepPCB it was within noise of plain LoRA (benchmarks/results/lora_cpu320.md)
    dora: bool = False
    # a separate rank for the Detect head's convolutions (box and class towers), None: `rank` everywhere (a new
    # line's class semantics live in the head's towers). Also within noise on DeepPCB at the same parameter budget
    head_rank: int | None = Field(None, ge=1)
    # per-module ranks: regular expression over the target's module name -> rank, first match wins, ahead of
    # head_rank and rank (named allocations: configs/lora_ranks.yaml). Where a line's update needs rank is not
    # uniform: an r16 adapter's updates on DeepPCB span many directions on the stride-8 path (layers 1-4, 15-18,
    # the head's P3 / P4 towers) and are near rank 1-2 on the stride-32 path, where most parameters sit
    rank_pattern: dict[str, int] = Field(default_factory=dict)

    @field_validator("rank_pattern")
    @classmethod
    def _patterns_compile(cls, value: dict[str, int]) -> dict[str, int]:
        for pattern, r in value.items():
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"rank pattern {pattern!r} is not a regular expression: {exc}") from exc
            if int(r) < 1:
                raise ValueError(f"rank pattern {pattern!r}: rank {r} must be >= 1")
        return value

    @model_validator(mode="after")
    def _bias_or_dora(self) -> LoraSettings:
        if self.bias and self.dora:
            raise ValueError("LoRA output biases and DoRA cannot be combined (peft supports lora_bias without DoRA)")
        return self

    @property
    def lora_alpha(self) -> float:
        return float(self.alpha if self.alpha is not None else 2 * self.rank)

    def rank_of(self, target: str, head_prefix: str) -> int:
        """The rank of one target module: the first matching rank_pattern, else head_rank in the head, else rank."""
        for pattern, r in self.rank_pattern.items():
            if re.match(pattern, target):
                return int(r)
        if self.head_rank is not None and target.startswith(head_prefix):
            return self.head_rank
        return self.rank

    def patterns(self, targets: list[str], head_prefix: str) -> tuple[dict[str, int], dict[str, float]]:
        """peft rank_pattern / alpha_pattern, one exact entry per target whose rank is not `rank` (same LoRA scale
        alpha / r everywhere)."""
        scale = self.lora_alpha / self.rank
        ranks = {re.escape(t): r for t in targets if (r := self.rank_of(t, head_prefix)) != self.rank}
        return ranks, {t: scale * r for t, r in ranks.items()}


class AdapterMeta(BaseModel):
    """What an adapter file says about itself (safetensors metadata, key `defect_agent`)."""

    format: str = ADAPTER_FORMAT
    line: str | None = None
    names: list[str]  # class names in id order (the line's classes)
    rank: int
    alpha: float
    dropout: float = 0.0
    bias: bool = False  # per-line output biases (LoraSettings.bias); files written before it have none
    dora: bool = False  # per-channel magnitudes (LoraSettings.dora)
    head_rank: int | None = None  # LoraSettings.head_rank
    rank_pattern: dict[str, int] = Field(default_factory=dict)  # LoraSettings.rank_pattern
    target_modules: list[str]
    head_modules: list[str]
    base_file: str
    base_sha256: str
    base_names: list[str]
    imgsz: int | None = None
    reference: Literal["none", "template"] = "none"
    provenance: dict[str, Any] = Field(default_factory=dict)  # data, command, metrics


def _dora_tolerates_channels_last() -> None:
    """ultralytics' AutoBackend turns a PyTorch model channels_last on x86 CPUs (validation, prediction); peft's
    DoRA convolution layer `view`s lora_A's weight as a matrix, which a channels_last tensor refuses. `reshape`
    gives the same matrix either way."""
    from peft.tuners.lora import dora

    layer = dora._DoraConvNdLayer
    if getattr(layer, "_defect_agent_reshape", False):
        return

    @dora.cache_decorator("lora-weight")
    def get_lora_weight(self, lora_A, lora_B, adapter_name: str | None = None) -> torch.Tensor:
        r = lora_A.weight.shape[0]
        return torch.mm(lora_B.weight.reshape(-1, r), lora_A.weight.reshape(r, -1))

    # a deliberate patch of a peft class: outside what its declared type allows
    layer.get_lora_weight = get_lora_weight  # type: ignore[method-assign]
    layer._defect_agent_reshape = True  # type: ignore[attr-defined]


def _check_adapter_name(name: str) -> str:
    if not _ADAPTER_NAME_RE.match(name) or name in {"model", "default_base", *_PEFT_PARTS, "base_layer"}:
        raise ConfigError(f"adapter name {name!r} must be an identifier (letters, digits, _) and not a module name")
    return name


# ---------------------------------------------------------------------------------------------------------------- base


def load_detection_model(path: Path | str, own_checkpoint: bool = False) -> DetectionModel:
    """An ultralytics checkpoint as an FP32 DetectionModel in eval mode (local file only), loaded without running
    code from it (vision.locator.yolo.load_detection_model).

    `own_checkpoint`: a checkpoint the adapter trainer of this process has just written to its run folder. It
    pickles peft's LoRA layers and config, which lie outside the restricted unpickler's allow-list, so it is loaded
    with ultralytics' full unpickler; never pass it for a file this process did not write."""
    from vision.locator.yolo import import_yolo
    from vision.locator.yolo import load_detection_model as load_checked

    path = Path(path)
    if not own_checkpoint:
        return load_checked(path, BASE_COMMAND)
    if not path.is_file():
        raise ModelFileMissing(path, BASE_COMMAND, what="locator base weights")
    import_yolo()  # offline set-up
    from ultralytics.nn.tasks import load_checkpoint

    model, _ = load_checkpoint(str(path))
    return model


def _detect(model: nn.Module) -> Detect:
    head = cast(nn.Sequential, model.model)[-1]
    if not hasattr(head, "cv3") or not hasattr(head, "reg_max"):
        raise ConfigError(f"the last layer of the model is {type(head).__name__}, not a YOLO Detect head")
    return cast("Detect", head)


def prepare_base(model: DetectionModel) -> DetectionModel:
    """Fold BatchNorm into the convolutions (frozen statistics), freeze every weight, eval mode. Idempotent."""
    if not model.is_fused():
        model.fuse(verbose=False)
    for p in model.parameters():
        p.requires_grad_(False)
    if not hasattr(model, BASE_ATTR):
        setattr(model, BASE_ATTR, model_class_names(model))
    return model.eval()


def model_class_names(model: nn.Module) -> list[str]:
    names = getattr(model, "names", None) or {}
    if isinstance(names, dict):
        return [str(names[k]) for k in sorted(names)]
    return [str(n) for n in names]


def class_head_modules(model: nn.Module) -> list[str]:
    """Names of the final class-score convolutions of the Detect head (one per scale, both heads if end-to-end)."""
    det = _detect(model)
    idx = len(cast(nn.Sequential, model.model)) - 1
    names = []
    for attr in ("cv3", "one2one_cv3"):
        branches = getattr(det, attr, None)
        if branches is None:
            continue
        for i, seq in enumerate(branches):
            last = len(seq) - 1
            names.append(f"model.{idx}.{attr}.{i}.{last}")
    return names


def lora_target_modules(model: nn.Module) -> list[str]:
    """Every ordinary convolution of the base: groups == 1, not the fixed DFL convolution, not a class-score
    convolution (those are trained in full as modules_to_save). Layers already wrapped by an earlier adapter count
    as their base convolution, so every adapter of a bank gets the same list."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils.other import ModulesToSaveWrapper

    heads = set(class_head_modules(model))
    targets: list[str] = []
    inside: tuple[str, ...] = ()
    for name, m in model.named_modules():
        if inside and name.startswith(inside):
            continue  # the inner modules of a LoRA layer or of a class-head wrapper
        if isinstance(m, (BaseTunerLayer, ModulesToSaveWrapper)):
            inside = (name + ".",)
            m = m.get_base_layer() if isinstance(m, BaseTunerLayer) else m.original_module
        if type(m) is not nn.Conv2d:
            continue
        if m.groups != 1 or ".dfl" in name or name in heads:
            continue
        targets.append(name)
    if not targets:
        raise ConfigError("no ordinary convolution to adapt in this model")
    return targets


def _set_head_shape(model: DetectionModel, names: list[str]) -> None:
    det = _detect(model)
    nc = len(names)
    det.nc = nc
    det.no = nc + det.reg_max * 4
    model.names = dict(enumerate(names))
    if isinstance(getattr(model, "yaml", None), dict):
        cast("dict[str, Any]", model.yaml)["nc"] = nc
    model.nc = nc  # type: ignore[assignment]  # torch types nn.Module attributes as Tensor | Module


def _new_class_conv(like: nn.Conv2d, nc: int, stride: float) -> nn.Conv2d:
    # torch's stubs type these attributes tuple[int, ...], its constructor asks for pairs
    conv = nn.Conv2d(like.in_channels, nc, like.kernel_size, like.stride, like.padding, bias=True)  # type: ignore[arg-type]
    with torch.no_grad():
        # Small weights (RetinaNet's N(0, 0.01)): every line starts near the prior whatever the base's feature scale.
        # PyTorch's default init makes the first logits grow with the features (mean |feature| about 4.5 over bases
        # fine-tuned on defects, 2 in COCO YOLOv8n): over the first defect_base a 50-image adapter diverged (mAP50 0).
        # Zero weights starve the class branch's LoRA of gradient at first (COCO base 0.612 vs 0.787 default);
        # N(0, 0.01): 0.701 over that base, 0.720 over COCO (benchmarks/results/lora_cpu320_*50*.md)
        conv.weight.normal_(0.0, 0.01)
        assert conv.bias is not None  # built with bias=True
        conv.bias.fill_(math.log(5 / nc / (640 / stride) ** 2))  # ultralytics' Detect.bias_init: ~0.01 objects/cell
    return conv.to(like.weight.device, like.weight.dtype)


# ------------------------------------------------------------------------------------------------------------- adapter


def _wrappers(model: nn.Module):
    if "peft" not in sys.modules:
        return  # only peft makes wrappers: a base no adapter was added to has none (and importing peft costs 3 s)
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils.other import ModulesToSaveWrapper

    for name, m in model.named_modules():
        if isinstance(m, (BaseTunerLayer, ModulesToSaveWrapper)):
            yield name, m


def adapter_names(model: nn.Module) -> list[str]:
    from peft.utils.other import ModulesToSaveWrapper

    for _, m in _wrappers(model):
        if isinstance(m, ModulesToSaveWrapper):
            return list(m.modules_to_save.keys())
    return []


def add_lora(
    model: DetectionModel,
    adapter_name: str,
    names: list[str],
    settings: LoraSettings,
    target_modules: list[str] | None = None,
    trainable: bool = True,
) -> AdapterMeta:
    """Inject a new LoRA adapter (and its own class convolutions for `names`) into a prepared base; activates it.
    Returns the metadata to save with it (base fields left for the caller)."""
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils.other import ModulesToSaveWrapper

    _check_adapter_name(adapter_name)
    if adapter_name in adapter_names(model):
        raise ConfigError(f"the model already holds an adapter named {adapter_name!r}")
    if not hasattr(model, BASE_ATTR):
        raise ConfigError("prepare_base(model) must run before add_lora")
    targets = list(target_modules) if target_modules is not None else lora_target_modules(model)
    heads = class_head_modules(model)
    if settings.dora:
        _dora_tolerates_channels_last()
    rank_pattern, alpha_pattern = settings.patterns(targets, f"model.{len(cast(nn.Sequential, model.model)) - 1}.")
    config = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.lora_alpha,  # type: ignore[arg-type]  # peft declares int; a float scale works
        lora_dropout=settings.dropout,
        target_modules=targets,
        modules_to_save=heads,
        bias="none",
        lora_bias=settings.bias,
        use_dora=settings.dora,
        rank_pattern=rank_pattern,
        alpha_pattern=alpha_pattern,
        init_lora_weights=True,
    )
    with warnings.catch_warnings():  # a second adapter on the same model is what the bank is for
        warnings.filterwarnings("ignore", message=".*peft_config.*multiple adapters.*")
        inject_adapter_in_model(config, model, adapter_name=adapter_name)

    base_names = getattr(model, BASE_ATTR)
    det = _detect(model)
    for name in heads:
        wrapper = model.get_submodule(name)
        if not isinstance(wrapper, ModulesToSaveWrapper):
            raise RuntimeError(f"peft did not wrap class head {name}")
        if list(names) != list(base_names):  # other classes: a fresh classifier, not the base's one relabelled
            level = int(name.split(".")[-2])
            wrapper.modules_to_save[adapter_name] = _new_class_conv(
                wrapper.original_module, len(names), float(det.stride[level])
            )
    activate(model, adapter_name, names, trainable=trainable)
    return AdapterMeta(
        names=list(names),
        rank=settings.rank,
        alpha=settings.lora_alpha,
        dropout=settings.dropout,
        bias=settings.bias,
        dora=settings.dora,
        head_rank=settings.head_rank,
        rank_pattern=dict(settings.rank_pattern),
        target_modules=targets,
        head_modules=heads,
        base_file="",
        base_sha256="",
        base_names=list(base_names),
    )


def activate(
    model: DetectionModel, adapter_name: str | None, names: list[str] | None = None, trainable: bool = False
) -> None:
    """Make `adapter_name` the active adapter (None: the plain base with its own head) and size the Detect head for
    its classes. `trainable` marks the adapter's weights as requiring gradients (training), else all frozen."""
    if adapter_name is None:
        for _, m in _wrappers(model):
            m.enable_adapters(False)
        _set_head_shape(model, getattr(model, BASE_ATTR))
        return
    from peft.tuners.tuners_utils import BaseTunerLayer

    if names is None:
        raise ValueError("class names are required to activate an adapter")
    for _, m in _wrappers(model):
        if isinstance(m, BaseTunerLayer) and m.merged:
            m.unmerge()
        m.enable_adapters(True)
        m.set_adapter(adapter_name, inference_mode=not trainable)
    if not trainable:
        for p in model.parameters():
            p.requires_grad_(False)
    _set_head_shape(model, names)


def mark_trainable(model: nn.Module, adapter_name: str) -> dict[str, int]:
    """Freeze everything but the adapter's LoRA matrices and class convolutions; returns the counts
    (ultralytics' trainer unfreezes every floating-point weight during its set-up: this undoes it)."""
    for p in model.parameters():
        p.requires_grad_(False)
    for key, p in model.named_parameters():
        if _adapter_param(key, adapter_name):
            p.requires_grad_(True)
    return trainable_counts(model, adapter_name)


def _adapter_param(key: str, adapter_name: str) -> bool:
    return any(f".{part}.{adapter_name}." in key for part in _PEFT_PARTS)


def trainable_counts(model: nn.Module, adapter_name: str) -> dict[str, int]:
    """Trainable parameter counts split into LoRA, class head and anything else (must be 0 when adapting)."""
    lora = head = other = 0
    for key, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if f".modules_to_save.{adapter_name}." in key:
            head += p.numel()
        elif any(f".{part}.{adapter_name}." in key for part in _LORA_PARTS):
            lora += p.numel()
        else:
            other += p.numel()
    base = sum(p.numel() for k, p in model.named_parameters() if not any(f".{part}." in k for part in _PEFT_PARTS))
    return {"lora": lora, "head": head, "other": other, "trainable": lora + head + other, "base": base}


def assert_adapter_only(model: nn.Module, adapter_name: str) -> dict[str, int]:
    counts = trainable_counts(model, adapter_name)
    if counts["other"] or counts["lora"] == 0:
        offenders = [k for k, p in model.named_parameters() if p.requires_grad and not _adapter_param(k, adapter_name)]
        raise RuntimeError(
            f"adapter training would update weights outside the adapter: {offenders[:5]} "
            f"({counts['other']} parameters); LoRA parameters trainable: {counts['lora']}"
        )
    return counts


def adapter_state_dict(model: nn.Module, adapter_name: str) -> dict[str, torch.Tensor]:
    """The adapter's own tensors, keys without the adapter name (portable between adapter names)."""
    out = {}
    for key, t in model.state_dict().items():
        for part in _PEFT_PARTS:
            tag = f".{part}.{adapter_name}."
            if tag in key:
                out[key.replace(tag, f".{part}.")] = t.detach()
                break
    if not out:
        raise ConfigError(f"the model holds no adapter named {adapter_name!r}")
    return out


def save_adapter(
    model: nn.Module, adapter_name: str, path: Path | str, meta: AdapterMeta, dtype: torch.dtype = torch.float16
) -> Path:
    """Write the adapter as safetensors (fp16 by default) with its metadata."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.to("cpu", dtype).contiguous() for k, v in adapter_state_dict(model, adapter_name).items()}
    save_file(tensors, str(path), metadata={META_KEY: meta.model_dump_json()})
    record_model(path)  # a file written into models/ is accepted by writing it
    return path


def read_adapter(path: Path | str) -> tuple[AdapterMeta, dict[str, torch.Tensor]]:
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ModelFileMissing(path, "defect-agent train adapter --line <line> --data DATA_YAML", what="LoRA adapter")
    verify_model_file(path)  # safetensors runs no code; the manifest still catches a swapped shipped adapter
    try:
        with safe_open(str(path), framework="pt") as fh:
            raw = (fh.metadata() or {}).get(META_KEY)
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:  # not a safetensors file, truncated
        raise ConfigError(f"cannot read LoRA adapter {path}: {exc}") from exc
    if raw is None:
        raise ConfigError(f"{path} is not a defect-agent adapter (no '{META_KEY}' metadata)")
    meta = AdapterMeta.model_validate_json(raw)
    if meta.format != ADAPTER_FORMAT:
        raise ConfigError(f"{path}: adapter format {meta.format!r}, this version reads {ADAPTER_FORMAT!r}")
    return meta, tensors


def read_adapter_meta(path: Path | str) -> AdapterMeta:
    return read_adapter(path)[0]


def load_adapter(
    model: DetectionModel, path: Path | str, adapter_name: str, base_sha256: str | None = None
) -> AdapterMeta:
    """Inject the adapter stored at `path` under `adapter_name` and load its weights; activates it (frozen)."""
    meta, tensors = read_adapter(path)
    if base_sha256 is not None and meta.base_sha256 and meta.base_sha256 != base_sha256:
        raise ConfigError(
            f"adapter {path} was trained over base {meta.base_file} (sha256 {meta.base_sha256[:12]}), but the base "
            f"given has sha256 {base_sha256[:12]}; retrain it: defect-agent train adapter --line {meta.line or '<line>'}"
        )
    settings = LoraSettings(
        rank=meta.rank,
        alpha=meta.alpha,
        dropout=meta.dropout,
        bias=meta.bias,
        dora=meta.dora,
        head_rank=meta.head_rank,
        rank_pattern=meta.rank_pattern,
    )
    if class_head_modules(model) != meta.head_modules:
        raise ConfigError(
            f"adapter {path} was made for heads {meta.head_modules}, the base has {class_head_modules(model)}"
        )
    add_lora(model, adapter_name, meta.names, settings, target_modules=meta.target_modules, trainable=False)
    state = model.state_dict()
    update = {}
    for key, t in tensors.items():
        part = next((p for p in _PEFT_PARTS if f".{p}." in key), None)
        full = key.replace(f".{part}.", f".{part}.{adapter_name}.") if part else key
        if full not in state:
            raise ConfigError(f"adapter {path}: tensor {key} has no place in the base model")
        if state[full].shape != t.shape:
            raise ConfigError(
                f"adapter {path}: {key} has shape {tuple(t.shape)}, the model expects {tuple(state[full].shape)}"
            )
        update[full] = t.to(state[full].dtype)
    expected = set(adapter_state_dict(model, adapter_name))
    got = {k.replace(f".{adapter_name}.", ".") for k in update}
    if expected != got:
        raise ConfigError(
            f"adapter {path} lacks {len(expected - got)} tensors the model needs (e.g. {sorted(expected - got)[:3]})"
        )
    model.load_state_dict(update, strict=False)
    activate(model, adapter_name, meta.names)
    return meta


def make_meta(meta: AdapterMeta, base_path: Path | str, line: str | None = None, **fields: Any) -> AdapterMeta:
    """Fill the base fields (file name, sha256) and anything else."""
    base_path = Path(base_path)
    return meta.model_copy(
        update={"base_file": base_path.name, "base_sha256": file_sha256(base_path), "line": line, **fields}
    )


# ------------------------------------------------------------------------------------------------------------- loading


def load_adapted_yolo(base_path: Path | str, adapter_path: Path | str) -> YOLO:
    """An ultralytics YOLO ready to predict: the base with the adapter injected, active and unmerged (BatchNorm is
    folded beforehand, so ultralytics does not fuse again)."""
    base_path, adapter_path = Path(base_path), Path(adapter_path)
    if not base_path.is_file():
        raise ModelFileMissing(base_path, BASE_COMMAND, what="locator base weights")
    meta = read_adapter_meta(adapter_path)
    yolo = load_yolo(base_path, BASE_COMMAND, what="locator base weights")
    model = cast("DetectionModel", yolo.model)  # a loaded checkpoint's model, never the name ultralytics types it as
    prepare_base(model)
    load_adapter(model, adapter_path, _check_adapter_name(meta.line or "adapter"), file_sha256(base_path))
    return yolo


def load_merged_yolo(base_path: Path | str, adapter_path: Path | str) -> YOLO:
    """`load_adapted_yolo` with the adapter folded into the convolutions: for a process that serves one line (a
    batch, `inspect`) no LoRA products run per call (pcb: locate 145 -> 93 ms, issue 23); detections equal the
    adapted model's to float rounding (tests/test_lora_adapters.py)."""
    meta = read_adapter_meta(adapter_path)
    yolo = load_adapted_yolo(base_path, adapter_path)
    model = cast("DetectionModel", yolo.model)
    merge_into_base(model, _check_adapter_name(meta.line or "adapter"))
    _set_head_shape(model, meta.names)
    if hasattr(model, BASE_ATTR):
        delattr(model, BASE_ATTR)
    yolo.predictor = None
    return yolo


def merge_into_base(model: DetectionModel, adapter_name: str) -> DetectionModel:
    """Fold the adapter into the convolutions and replace the class heads: a plain ultralytics model again."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils.other import ModulesToSaveWrapper

    for name, m in list(_wrappers(model)):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        if isinstance(m, ModulesToSaveWrapper):
            setattr(parent, child, copy.deepcopy(m.modules_to_save[adapter_name]))
        elif isinstance(m, BaseTunerLayer):
            m.merge(adapter_names=[adapter_name])
            setattr(parent, child, m.get_base_layer())
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def merged_detection_model(base_path: Path | str, adapter_path: Path | str) -> tuple[DetectionModel, AdapterMeta]:
    """Base + adapter folded together in memory (FP32, eval mode): a plain ultralytics model with the line's head."""
    base_path = Path(base_path)
    model = prepare_base(load_detection_model(base_path))
    meta = load_adapter(model, adapter_path, "merge", file_sha256(base_path))
    merge_into_base(model, "merge")
    _set_head_shape(model, meta.names)
    if hasattr(model, BASE_ATTR):
        delattr(model, BASE_ATTR)
    return model, meta


def merge_adapter(base_path: Path | str, adapter_path: Path | str, out: Path | str) -> Path:
    """Write a standalone ultralytics checkpoint (fp16) of base + adapter, loadable with `YOLO(out)`."""
    from ultralytics import __version__

    base_path, adapter_path, out = Path(base_path), Path(adapter_path), Path(out)
    model, meta = merged_detection_model(base_path, adapter_path)
    model.pt_path = str(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    train_args = dict(getattr(model, "args", {}) or {})
    train_args.update({"imgsz": meta.imgsz or train_args.get("imgsz", 640), "task": "detect"})
    torch.save(
        {
            "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "version": __version__,
            "license": "AGPL-3.0 (ultralytics); data: see the model card",
            "model": copy.deepcopy(model).half(),
            "train_args": train_args,
            META_KEY: json.loads(meta.model_dump_json()) | {"merged_from": adapter_path.name},
        },
        out,
    )
    record_model(out)
    return out


class AdapterBank:
    """One base detector in memory; line adapters are added once and switched in place by `use(line)`.

    `use(None)` gives the plain base (its own head and classes). Switching only flips which LoRA matrices and class
    convolutions are active and resizes the head's class count: no weights are copied or reloaded."""

    def __init__(self, base_path: Path | str) -> None:
        self.base_path = Path(base_path)
        if not self.base_path.is_file():
            raise ModelFileMissing(self.base_path, BASE_COMMAND, what="locator base weights")
        self.base_sha256 = file_sha256(self.base_path)
        self.yolo: YOLO = load_yolo(self.base_path, BASE_COMMAND, what="locator base weights")
        prepare_base(cast("DetectionModel", self.yolo.model))
        self.base_names = getattr(self.yolo.model, BASE_ATTR)
        self._meta: dict[str, AdapterMeta] = {}
        self.active: str | None = None
        self.lock = threading.RLock()  # held by callers across use() + predict when several lines share the bank

    @property
    def lines(self) -> list[str]:
        return list(self._meta)

    def meta(self, line: str) -> AdapterMeta:
        if line not in self._meta:
            raise ConfigError(f"no adapter for line {line!r} in the bank; loaded: {', '.join(self._meta) or 'none'}")
        return self._meta[line]

    def class_names(self, line: str | None) -> list[str]:
        return list(self.base_names) if line is None else list(self.meta(line).names)

    def add(self, line: str, adapter_path: Path | str) -> AdapterMeta:
        meta = load_adapter(
            cast("DetectionModel", self.yolo.model), adapter_path, _check_adapter_name(line), self.base_sha256
        )
        self._meta[line] = meta
        # ultralytics' predictor runs a copy of the model taken at its first call: that copy lacks the new adapter,
        # so let the next predict set up a fresh one (once per added line)
        self.yolo.predictor = None
        self.use(self.active)  # loading activates the new adapter: restore what was active
        return meta

    def use(self, line: str | None) -> YOLO:
        """Activate a line's adapter (None: the base) and return the shared YOLO object."""
        names = self.class_names(line)
        activate(cast("DetectionModel", self.yolo.model), line, names)
        backend = getattr(getattr(self.yolo, "predictor", None), "model", None)
        if backend is not None:
            # ultralytics' predictor runs a deep copy of the model made at its first call (adapters included):
            # switch that copy too, or it keeps predicting with the line that was active back then
            copy_ = getattr(backend, "model", None)
            if isinstance(copy_, nn.Module) and copy_ is not self.yolo.model:
                activate(cast("DetectionModel", copy_), line, names)
            backend.names = dict(enumerate(names))
        self.active = line
        return self.yolo

    def switch_ms(self, line: str | None) -> float:
        started = time.perf_counter()
        self.use(line)
        return (time.perf_counter() - started) * 1000.0


def adapter_file_size(path: Path | str) -> int:
    return Path(path).stat().st_size


def parameter_count(tensors: Iterable[torch.Tensor]) -> int:
    return sum(int(t.numel()) for t in tensors)
