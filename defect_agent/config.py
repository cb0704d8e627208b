"""Typed configuration: the application config (`configs/default.yaml`) and one config per product line
(`configs/lines/<line>.yaml`). Every other module reads settings through these models."""

from __future__ import annotations

import os
import re
from functools import cache
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from defect_agent.errors import ConfigError
from defect_agent.paths import configs_dir


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Synonyms(_Strict):
    """Words or sentences in English (`en`) and Chinese (`zh`)."""

    en: list[str] = Field(default_factory=list)
    zh: list[str] = Field(default_factory=list)


class ClassSpec(_Strict):
    """A detector class. `role: part` marks structural parts (tab, weld) that are located but are not defects."""

    name: str
    # "anomaly": the region class of the line's anomaly model (regions nothing else names); never a detector class
    role: Literal["defect", "part", "anomaly"] = "defect"
    synonyms: Synonyms = Field(default_factory=Synonyms)
    description: Synonyms = Field(
        default_factory=Synonyms
    )  # report-style sentences used to train / prompt the embedder


class DerivedDefect(_Strict):
    """A defect that is measured or inferred, not detected directly.

    rule `offset`: distance between the centre of `parts[0]` (e.g. weld) and the centre of `parts[1]` (e.g. tab),
    reported as measurement `offset_mm`; present when above `tolerance_mm`.
    rule `absent`: `parts[1]` (e.g. tab) was located but no `parts[0]` (e.g. weld) inside it."""

    name: str
    rule: Literal["offset", "absent"]
    parts: tuple[str, str]
    tolerance_mm: float = 0.0
    synonyms: Synonyms = Field(default_factory=Synonyms)
    description: Synonyms = Field(default_factory=Synonyms)


class Calibration(_Strict):
    """The line's image scale: millimetres per pixel, to turn pixel sizes into mm, and how sure the line is of it."""

    mm_per_px: float = Field(gt=0)
    # relative error of mm_per_px (0.01 = 1 %): it adds to every finding's ± (agent.uncertainty), lengths once and
    # areas twice; 0 where the scale is exact (a generated line) or not known
    mm_per_px_uncertainty: float = Field(0.0, ge=0.0, lt=1.0)


class ReferenceConfig(_Strict):
    """How a line finds each part's defect-free reference image (its golden template), for locators that compare
    every image with it (`locator.reference: template`).

    Either one fixed golden `image` for every part, or a name rule: `pattern` (a regex on the inspected image's file
    stem, with a named group `id`) and `name` (the reference's stem built from that match), looked up in `folder`
    (None: beside the image; a relative folder counts from the image's folder; or an absolute one) with the image's
    own extension first, then any image extension. DeepPCB's `<id>_test.jpg` / `<id>_temp.jpg` pairs are
    `pattern: "^(?P<id>.+)_test$"`, `name: "{id}_temp"`."""

    pattern: str = r"^(?P<id>.+)$"
    name: str = "{id}"
    folder: str | None = None
    image: str | None = None  # relative to the project root, or absolute

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            compiled = re.compile(value)
        except re.error as exc:
            raise ValueError(f"reference.pattern {value!r} is not a regular expression: {exc}") from exc
        if "id" not in compiled.groupindex:
            raise ValueError(f"reference.pattern {value!r} needs a named group (?P<id>...)")
        return value

    @field_validator("name")
    @classmethod
    def _names_id(cls, value: str) -> str:
        try:
            value.format(id="x")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"reference.name {value!r} may only use the field {{id}}: {exc}") from exc
        return value


class LocatorConfig(_Strict):
    """The line's detector (locator): weights or LoRA adapter, input size, thresholds, template mode and the
    optional second-stage verifier."""

    weights: str  # shipped base or merged model, relative to the project root
    adapter: str | None = None  # peft LoRA adapter for this line over `base`
    base: str | None = None
    imgsz: int = 640
    conf: float = 0.25
    iou: float = 0.5
    # "template": the detector reads (image, reference, |difference|) composites; the line's `reference` says
    # where each part's reference image lies
    reference: Literal["none", "template"] = "none"
    verifier: str | None = None  # template lines: second-stage class verifier (vision.verifier.model)
    verifier_relabel_min: float = Field(0.5, ge=0.0, le=1.0)  # verifier probability needed to change a class
    verifier_tta: bool = False  # average the verifier over the eight rotations / flips of each crop
    # overlapping same-class boxes that both verify at least this much become one (their union); None: never
    verifier_union_min: float | None = Field(None, ge=0.0, le=1.0)
    # scoring a ranked list (eval verifier): the box a whole / part or union merge drops stays a candidate at this
    # share of its confidence (Soft-NMS); None: dropped. Findings never hold such candidates
    verifier_demote: float | None = Field(None, ge=0.0, le=1.0)
    # with a verifier: the detector's confidence floor for the boxes the verifier re-reads (default `conf`); the
    # fused probability, not the detector alone, then decides what is a defect
    proposal_conf: float | None = Field(None, ge=0.0, le=1.0)

    @property
    def verifies(self) -> bool:
        """A second-stage verifier re-reads the detector's boxes (it needs the golden template)."""
        return bool(self.verifier) and self.reference == "template"

    @property
    def detector_conf(self) -> float:
        """The confidence the detector runs at: `proposal_conf` where a verifier follows and sets one."""
        return self.proposal_conf if self.verifies and self.proposal_conf is not None else self.conf


class PromptConfig(_Strict):
    """Zero-shot texture prompts (WinCLIP): sentence templates filled with normal / defect states and object
    names, per language."""

    templates: Synonyms = Field(default_factory=Synonyms)  # "a photo of {state} {object}"
    normal_states: Synonyms = Field(default_factory=Synonyms)
    defect_states: Synonyms = Field(default_factory=Synonyms)
    object_name: Synonyms = Field(default_factory=Synonyms)


class TextureConfig(_Strict):
    """The texture score's decision threshold, set by `defect-agent calibrate --normal`, and the false-alarm
    rate it was set for."""

    threshold: float | None = None  # set by `defect-agent calibrate`
    max_false_alarm: float | None = None


class AcceptanceRule(_Strict):
    """How findings of one defect class judge the part. With no `limits`, any real finding of the class rejects;
    with limits, a finding rejects only when one of its measurements exceeds its limit."""

    reject: bool = True  # False: the class is recorded (cosmetic, informational) but never rejects the part
    review_only: bool = False  # True: a real finding sends the part to a person, never fails it by itself
    limits: dict[str, float] = Field(default_factory=dict)  # measurement key (length_mm, offset_mm, ...) -> max OK

    @field_validator("limits")
    @classmethod
    def _finite_limits(cls, value: dict[str, float]) -> dict[str, float]:
        import math

        bad = {k: v for k, v in value.items() if not math.isfinite(v) or v < 0}
        if bad:
            raise ValueError(f"acceptance limits must be finite and >= 0, got {bad}")
        return value


class AcceptanceConfig(_Strict):
    """The line's acceptance rules: what makes a part `fail` or `review`, whatever the instruction asked.

    Defaults: every defect class rejects; a derived offset defect rejects beyond its `tolerance_mm`; a finding whose
    fused probability lies in `review_band` (default: the app's fusion band) or whose measurement lies within
    `measurement_margin_mm` of a limit sends the part to review."""

    rules: dict[str, AcceptanceRule] = Field(default_factory=dict)  # defect class -> rule; unlisted: defaults
    review_band: tuple[float, float] | None = None
    measurement_margin_mm: float | None = Field(None, ge=0.0)


ANOMALY_CLASS = "anomaly"


def default_anomaly_label() -> ClassSpec:
    return ClassSpec(
        name=ANOMALY_CLASS,
        role="anomaly",
        synonyms=Synonyms(
            # not "anomaly" / 异常 themselves: the lexicon reads those as "any defect", which includes this class
            en=["anomalous region", "anomaly region", "abnormal region", "unknown defect", "unexplained anomaly"],
            zh=["异常区域", "异常点", "未知缺陷", "不明缺陷"],
        ),
        description=Synonyms(en=["a region unlike the line's normal parts"], zh=["与正常产品不同的区域"]),
    )


class AnomalyLineConfig(_Strict):
    """The line's normal-only anomaly model (vision.anomaly): on a line without a detector it finds the defects; beside
    a detector it catches what the detector was never trained on.

    A region of the anomaly map becomes a finding: its confidence is `sigmoid(steepness * (peak / map_threshold - 1)
    + logit(threshold_confidence))`: at the calibrated threshold it lies in the review band (a region just above the
    99th percentile of normal parts goes to a person; well above it fails the part; below it passes), and similar
    knowledge-base cases move it:
    defect examples up, normal examples (disposition `accept`) down, by `evidence_weight` in logit space; only cases
    with cosine >= `case_min_similarity` count. Regions from `candidate_ratio` x the threshold up are candidates, so
    that examples can lift a faint defect. Each region is named by its close defect examples, else `anomaly`."""

    model: str  # the memory bank (.safetensors; its .json meta beside it), relative to the project root or absolute
    unexplained: Literal["review", "reject"] | None = (
        None  # an `anomaly` region; None: review beside a detector, else reject
    )
    threshold: float | None = None  # overrides the model's calibrated image threshold
    map_threshold: float | None = None  # overrides the model's calibrated map threshold (regions)
    candidate_ratio: float = Field(0.8, gt=0.0, le=1.0)
    steepness: float = Field(10.0, gt=0.0)
    threshold_confidence: float = Field(0.4, gt=0.0, lt=1.0)
    evidence_weight: float = Field(1.0, ge=0.0)
    evidence_cap: float = Field(
        0.95, gt=0.5, lt=1.0
    )  # evidence clipped to [1 - cap, cap]: one case never decides alone
    case_min_similarity: float = Field(0.8, ge=-1.0, le=1.0)
    min_region_px: int = Field(16, ge=1)
    max_regions: int = Field(8, ge=1)
    detector_overlap: float = Field(0.3, ge=0.0, le=1.0)  # a region this much inside a detector box is explained
    # False: a region below the review band on its own is reported without embedding it - no similar cases, so no
    # example can name or lift it - which saves one image-tower pass per faint region (battery_tab on a line PC:
    # ~2.9 per cell; docs/results.md, "Faint regions")
    embed_faint: bool = True
    label: ClassSpec = Field(default_factory=default_anomaly_label)  # the unnamed region's class and its words


class LineConfig(_Strict):
    """One product line (`configs/lines/<line>.yaml`): its detector classes and derived defects, image scale,
    locator and the settings of its other stages."""

    name: str
    title: Synonyms = Field(default_factory=Synonyms)
    subject: Synonyms = Field(default_factory=Synonyms)  # words for the inspected item: cell / 电芯, board / 板
    image_size: tuple[int, int] | None = None  # (width, height) expected; None = any
    calibration: Calibration
    classes: list[ClassSpec]
    derived: list[DerivedDefect] = Field(default_factory=list)
    locator: LocatorConfig | None = None  # the box-trained detector; None: the line inspects with `anomaly` alone
    anomaly: AnomalyLineConfig | None = None  # normal-only anomaly model (alone, or beside the detector)
    prompts: PromptConfig = Field(default_factory=PromptConfig)
    texture: TextureConfig = Field(default_factory=TextureConfig)
    reference: ReferenceConfig | None = None  # each part's golden reference image, for template locators
    acceptance: AcceptanceConfig = Field(default_factory=AcceptanceConfig)  # the part's verdict rules

    @model_validator(mode="after")
    def _has_a_model(self) -> LineConfig:
        if self.locator is None and self.anomaly is None:
            raise ValueError(
                "the line has neither a `locator:` (box-trained detector) nor an `anomaly:` model; create an "
                "anomaly line with `defect-agent line new NAME --normal DIR`"
            )
        if self.anomaly is not None and not any(c.role == "anomaly" for c in self.classes):
            # appended last: detector class ids (the order of `classes`) stay as trained
            label = self.anomaly.label.model_copy(update={"role": "anomaly"})
            self.classes = [*self.classes, label]
        return self

    @model_validator(mode="after")
    def _acceptance_names_known_classes(self) -> LineConfig:
        known = {c.name for c in self.classes if c.role == "defect"} | {d.name for d in self.derived}
        unknown = sorted(set(self.acceptance.rules) - known)
        if unknown:
            raise ValueError(f"acceptance.rules name classes the line does not have: {unknown}; known: {sorted(known)}")
        return self

    @model_validator(mode="after")
    def _template_needs_reference(self) -> LineConfig:
        if self.locator is not None and self.locator.reference == "template" and self.reference is None:
            raise ValueError(
                "locator.reference is 'template' but the line has no `reference:` block saying where "
                "each part's reference image lies (pattern + name, folder, or a fixed image)"
            )
        return self

    @property
    def class_names(self) -> list[str]:
        """The detector's classes in class-id order (the anomaly model's region class is not one)."""
        return [c.name for c in self.classes if c.role != "anomaly"]

    @property
    def defect_names(self) -> list[str]:
        """Everything an operator can ask for: detected defects, anomaly regions and derived (measured) ones."""
        return [c.name for c in self.classes if c.role in ("defect", "anomaly")] + [d.name for d in self.derived]

    @property
    def detector(self) -> LocatorConfig:
        """The locator settings; a ConfigError on a line that has only an anomaly model."""
        if self.locator is None:
            raise ConfigError(
                f"line {self.name!r} has no box-trained detector (`locator:`); it inspects with its anomaly model"
            )
        return self.locator

    @property
    def anomaly_class(self) -> str | None:
        """Name of the anomaly model's region class, None on a line without one."""
        return next((c.name for c in self.classes if c.role == "anomaly"), None)

    def class_spec(self, name: str) -> ClassSpec | DerivedDefect:
        specs: list[ClassSpec | DerivedDefect] = [*self.classes, *self.derived]
        for spec in specs:
            if spec.name == name:
                return spec
        raise ConfigError(f"line {self.name!r} has no class {name!r}; known: {', '.join(self.class_names)}")


class FusionConfig(_Strict):
    """When a finding goes to review: fused probability inside `review_band`, or a measurement within
    `measurement_margin_mm` of a query threshold."""

    review_band: tuple[float, float] = (0.35, 0.65)  # fused probability inside the band -> review
    measurement_margin_mm: float = 0.02  # a measurement this close to a query threshold -> review


class RetrievalConfig(_Strict):
    """Similar-case search: how many cases to return (`k`) and the knowledge-base size below which the
    search is exact."""

    k: int = 5
    exact_below: int = 50_000  # exact search below this many cases; IVF / HNSW above


class EmbedderConfig(_Strict):
    """Which open_clip model embeds crops and text.

    `model`: an open_clip architecture name (e.g. ViT-B-32) or the project's registered default
    (`defect-lite-minilm`). `pretrained`: an open_clip pretrained tag, a local checkpoint file, or None."""

    model: str = "defect-lite-minilm"
    pretrained: str | None = "models/embedder/defect-lite-minilm.pt"
    image_size: int = 224


class LimitsConfig(_Strict):
    """Bounds on what an input may cost before it is refused (checked on the file header, before decoding)."""

    max_image_pixels: int = Field(60_000_000, gt=0)  # width x height; a 30000 x 30000 PNG bomb is 900 M
    max_image_mb: float = Field(256.0, gt=0)  # bytes of one image file read from disk
    max_upload_mb: float = Field(25.0, gt=0)  # per uploaded file (serve)
    max_files_per_request: int = Field(64, gt=0)  # serve: images in one POST /inspect


class ServerConfig(_Strict):
    """`defect-agent serve`: where it listens and which folder `POST /inspect` may read paths from."""

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    capture_root: str | None = None  # paths given to POST /inspect must lie under it; None: uploads only
    token_env: str = "DEFECT_AGENT_TOKEN"  # the API token's environment variable (required beyond localhost)


class OnnxRuntimeConfig(_Strict):
    """What runs the exported files on the onnx engine. `openvino` reads the same .onnx files (no second export);
    `precision: bf16` (OpenVINO only) computes in bfloat16 on CPUs with AVX512-BF16 / AMX - measured 1.6-2x faster
    than float32 on this project's 2-core EPYC with the same verdicts (docs/results.md); elsewhere OpenVINO runs
    float32. DEFECT_AGENT_ONNX_RUNTIME and DEFECT_AGENT_ONNX_PRECISION override them."""

    runtime: Literal["onnxruntime", "openvino"] = "onnxruntime"
    precision: Literal["f32", "bf16"] = "f32"

    @model_validator(mode="after")
    def _bf16_needs_openvino(self) -> OnnxRuntimeConfig:
        if self.precision == "bf16" and self.runtime != "openvino":
            raise ValueError("precision bf16 needs runtime openvino (onnxruntime's CPU kernels compute in float32)")
        return self


class AppConfig(_Strict):
    """The application config (`configs/default.yaml`): default line, threads, engine (torch / onnx),
    knowledge-base folder, and the embedder, fusion and retrieval settings."""

    default_line: str = "battery_tab"
    # intra-op threads: N, null (DEFECT_AGENT_THREADS, else every core) or auto (torch: by the machine's load, a batch
    # re-measuring 1 vs every core as it runs, agent/batch/threads.py; onnx: every core, defect_agent/runtime.py)
    threads: int | Literal["auto"] | None = None
    # "onnx": locator, verifier, anomaly features and the embedder's image tower run by onnxruntime from the files
    # `defect-agent export --line L --format onnx` wrote into var/onnx/ (parity with torch: tests/test_onnx_parity.py);
    # the process then never imports torch. DEFECT_AGENT_ENGINE overrides it.
    engine: Literal["torch", "onnx"] = "torch"
    onnx: OnnxRuntimeConfig = Field(default_factory=OnnxRuntimeConfig)
    kb_dir: str = "var/kb"
    embedder: EmbedderConfig = Field(default_factory=EmbedderConfig)
    fusion: FusionConfig = Field(default_factory=FusionConfig)
    retrieval: RetrievalConfig = Field(default_factory=RetrievalConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)


def _load_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


ENGINE_ENV = "DEFECT_AGENT_ENGINE"
# a line PC picks its engine without editing the shipped config (as DEFECT_AGENT_THREADS does threads)
ENV_OVERRIDES: dict[str, tuple[str, ...]] = {
    ENGINE_ENV: ("engine",),
    "DEFECT_AGENT_ONNX_RUNTIME": ("onnx", "runtime"),
    "DEFECT_AGENT_ONNX_PRECISION": ("onnx", "precision"),
}


def _with_env_overrides(data: dict) -> tuple[dict, list[str]]:
    """The config file's data with ENV_OVERRIDES applied (copies, the file's dict untouched), and which applied."""
    used: list[str] = []
    data = dict(data)
    for env, keys in ENV_OVERRIDES.items():
        value = os.environ.get(env)
        if not value:
            continue
        used.append(f"{env}={value}")
        node = data
        for key in keys[:-1]:
            node[key] = dict(node.get(key) or {})
            node = node[key]
        node[keys[-1]] = value
    return data, used


@cache
def load_app_config(path: str | None = None) -> AppConfig:
    cfg_path = Path(path) if path else configs_dir() / "default.yaml"
    data, overrides = _with_env_overrides(_load_yaml(cfg_path))
    try:
        return AppConfig.model_validate(data)
    except ValidationError as exc:
        where = f"{cfg_path} with {', '.join(overrides)}" if overrides else str(cfg_path)
        raise ConfigError(f"{where}: {exc}") from exc


def available_lines() -> list[str]:
    return sorted(p.stem for p in (configs_dir() / "lines").glob("*.yaml"))


@cache
def load_line(name: str) -> LineConfig:
    path = configs_dir() / "lines" / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(available_lines()) or "none"
        raise ConfigError(f"unknown product line {name!r}: no {path}. Known lines: {known}")
    try:
        return LineConfig.model_validate(_load_yaml(path))
    except ValidationError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def rank_allocations() -> dict[str, dict[str, int]]:
    """Named LoRA rank allocations (configs/lora_ranks.yaml): name -> {module-name regex: rank}."""
    path = configs_dir() / "lora_ranks.yaml"
    data = _load_yaml(path)
    out: dict[str, dict[str, int]] = {}
    for name, entry in data.items():
        patterns = entry.get("ranks") if isinstance(entry, dict) else None
        if not isinstance(patterns, dict) or not patterns:
            raise ConfigError(f"{path}: allocation {name!r} needs a non-empty 'ranks' mapping (regex: rank)")
        out[str(name)] = {str(k): int(v) for k, v in patterns.items()}
    return out


def load_rank_allocation(name: str) -> dict[str, int]:
    allocations = rank_allocations()
    if name not in allocations:
        from difflib import get_close_matches

        near = get_close_matches(name, allocations, n=3) or sorted(allocations)
        raise ConfigError(
            f"unknown LoRA rank allocation {name!r} in {configs_dir() / 'lora_ranks.yaml'}; known: {', '.join(near)}"
        )
    return allocations[name]
