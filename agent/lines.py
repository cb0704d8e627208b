"""Product lines a quality engineer brings up without drawing boxes: `defect-agent line new|list|show|rm|
add-examples|mark-normal`.

`create_line` fits the line's normal-only anomaly model (vision.anomaly) on the normal images, calibrates its
thresholds at a false-alarm target on held-back normal images, measures that rate on images the threshold was not
set on (two folds), writes the line config (configs/lines/<line>.yaml: classes named after the example folders,
synonyms and prompts in zh + en to edit), the model and its card (var/lines/<line>/), and files the examples in the
knowledge base, where they name and move the anomaly regions of later inspections (agent.anomaly_stage)."""

from __future__ import annotations

import logging
import re
import shutil
import time
from contextlib import nullcontext
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pydantic import BaseModel, Field

from agent.images import collect_images, read_image
from defect_agent.config import LineConfig, available_lines, load_line
from defect_agent.errors import ConfigError, DefectAgentError, EmptyInput
from defect_agent.files import atomic_write
from defect_agent.paths import configs_dir, data_dir, project_root

log = logging.getLogger(__name__)

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]{1,39}$")
MIN_NORMAL = 8  # fewer normal images cannot both fit a bank and calibrate a threshold on held-back ones
CARD_JSON = "card.json"
CARD_MD = "MODEL_CARD.md"
MODEL_STEM = "anomaly"


class ExampleFigures(BaseModel):
    """How the fitted model sees one class's example images."""

    images: int
    flagged: int = Field(description="Examples whose image score lies above the calibrated threshold.")
    added_to_kb: int = 0


class LineCard(BaseModel):
    """What `line new` measured, stored beside the model (card.json) and printed by `line show`."""

    line: str
    created_at: str
    created_by: str = "defect-agent line new"
    normal_source: str
    fit_images: int
    held_back_images: int
    max_false_alarm: float
    threshold: float
    map_threshold: float
    false_alarm_held_back: float = Field(
        description="Two-fold: the threshold set on one half of the held-back normals, the false-alarm rate measured "
        "on the other half, averaged over both halves."
    )
    fit_seconds: float
    ms_per_image: float = Field(description="Scoring the held-back images, milliseconds per image (this machine).")
    image_size: int
    stages: list[int]
    model: str
    model_version: str
    examples: dict[str, ExampleFigures] = Field(default_factory=dict)
    normal_added: int = 0


def line_dir(name: str) -> Path:
    """Where a created line keeps its model and card: var/lines/<line>/."""
    return data_dir() / "lines" / name


def config_path(name: str) -> Path:
    return configs_dir() / "lines" / f"{name}.yaml"


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(project_root()))
    except ValueError:
        return str(path.resolve())


def _class_name(folder: str) -> str:
    name = re.sub(r"[^a-z0-9]+", "_", folder.strip().lower()).strip("_")
    if not name or not name[0].isalpha():
        raise ConfigError(f"example folder {folder!r} does not make a class name (letters, digits, _; a letter first)")
    return name


def _defect_words() -> dict[str, list[str]]:
    path = configs_dir() / "defect_words.yaml"
    if not path.is_file():
        return {}
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return {str(k): [str(w) for w in v] for k, v in data.items()}


def _class_entry(name: str, words: dict[str, list[str]]) -> dict[str, Any]:
    spoken = name.replace("_", " ")
    en = list(dict.fromkeys([spoken, name, spoken + "s"]))
    zh = words.get(name, [])
    return {
        "name": name,
        "synonyms": {"en": en, "zh": zh},
        "description": {"en": [f"a {spoken} on the part"], "zh": [f"产品上有{zh[0]}"] if zh else []},
    }


def example_classes(examples: Path | None) -> dict[str, list[str]]:
    """class -> image paths, one class per sub-folder of `examples` (images directly in it are refused)."""
    if examples is None:
        return {}
    if not examples.is_dir():
        raise EmptyInput(f"--examples {examples}: not a folder (expected one sub-folder per defect class)")
    out: dict[str, list[str]] = {}
    for sub in sorted(p for p in examples.iterdir() if p.is_dir()):
        out.setdefault(_class_name(sub.name), []).extend(collect_images([sub]))
    if not out:
        raise EmptyInput(
            f"--examples {examples} holds no sub-folders: put each class's images in a folder named after it"
        )
    return out


def _split(paths: list[str], holdout: float) -> tuple[list[str], list[str]]:
    """Every n-th image held back (spread over the capture order), at least 4, the rest fitted."""
    n_held = min(max(4, round(len(paths) * holdout)), len(paths) - 4)
    step = len(paths) / n_held
    held_idx = {int(i * step) for i in range(n_held)}
    return [p for i, p in enumerate(paths) if i not in held_idx], [p for i, p in enumerate(paths) if i in held_idx]


def _two_fold_false_alarm(scores: list[float], max_false_alarm: float) -> float:
    from vision.embedder.texture import calibrate_threshold

    a, b = scores[0::2], scores[1::2]
    rates = []
    for cal, test in ((a, b), (b, a)):
        if cal and test:
            t = calibrate_threshold(cal, max_false_alarm)
            rates.append(sum(s > t for s in test) / len(test))
    return float(np.mean(rates)) if rates else float("nan")


def _line_yaml(
    name: str, title: tuple[str, str], mm_per_px: float, classes: dict[str, list[str]], model: str
) -> dict[str, Any]:
    words = _defect_words()
    zh_title, en_title = title
    return {
        "name": name,
        "title": {"en": [en_title], "zh": [zh_title]},
        "subject": {"en": ["part", "parts", en_title], "zh": ["产品", "工件", zh_title]},
        "calibration": {"mm_per_px": mm_per_px},
        "classes": [_class_entry(c, words) for c in classes],
        "anomaly": {"model": model},
        "prompts": {
            "templates": {
                "en": ["a photo of {state} {object}", "an inspection image of {state} {object}"],
                "zh": ["{state}{object}的照片"],
            },
            "object_name": {"en": [en_title], "zh": [zh_title]},
            "normal_states": {"en": ["a clean", "a flawless", "a normal"], "zh": ["正常的", "完好的"]},
            "defect_states": {"en": ["a damaged", "a defective"], "zh": ["有缺陷的", "损坏的"]},
        },
    }


def _write_config(name: str, data: dict[str, Any], header: str) -> Path:
    LineConfig.model_validate(data)  # never write a config `load_line` would refuse
    path = config_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = header + yaml.safe_dump(data, allow_unicode=True, sort_keys=False, width=120)
    atomic_write(path, text.encode("utf-8"))
    load_line.cache_clear()
    return path


def card_folder(name: str) -> Path:
    """Where the line's anomaly card lies: beside its anomaly model (var/lines/<line>/ for lines made here)."""
    try:
        cfg = load_line(name)
    except DefectAgentError:
        return line_dir(name)
    if cfg.anomaly is None:
        return line_dir(name)
    from defect_agent.paths import resolve

    return resolve(cfg.anomaly.model).parent


def _read_card(name: str) -> LineCard:
    path = card_folder(name) / CARD_JSON
    if not path.is_file():
        raise ConfigError(f"line {name!r} has no anomaly model card (no {path}); create lines with `line new`")
    return LineCard.model_validate_json(path.read_text(encoding="utf-8"))


def _write_card(card: LineCard, folder: Path | None = None) -> None:
    folder = folder or card_folder(card.line)
    atomic_write(folder / CARD_JSON, (card.model_dump_json(indent=1) + "\n").encode("utf-8"))
    atomic_write(folder / CARD_MD, render_card(card).encode("utf-8"))


def render_card(card: LineCard) -> str:
    """The model card in Markdown: what the model is, what it was fitted on and what was measured."""
    rows = [
        f"# Line `{card.line}` — normal-only anomaly model",
        "",
        f"Created {card.created_at} by `{card.created_by}` from `{card.normal_source}`.",
        "",
        "| | |",
        "|---|---|",
        f"| model | PatchCore on EfficientNet-Lite0 blocks {card.stages}, {card.image_size} px (`{card.model}`) |",
        f"| version | `{card.model_version}` |",
        f"| fitted on | {card.fit_images} normal images ({card.fit_seconds:.1f} s) |",
        f"| calibrated on | {card.held_back_images} held-back normal images, target false alarms "
        f"{card.max_false_alarm:.1%} |",
        f"| threshold | image {card.threshold:.4f}, map {card.map_threshold:.4f} |",
        f"| false alarms, held back (two-fold) | {card.false_alarm_held_back:.1%} |",
        f"| scoring | {card.ms_per_image:.0f} ms per image (this machine) |",
        f"| normal images added since | {card.normal_added} |",
    ]
    if card.examples:
        rows += ["", "Examples (defect images given by the engineer):", "", "| class | images | above threshold |"]
        rows += ["|---|---:|---:|"]
        rows += [f"| {c} | {e.images} | {e.flagged} |" for c, e in card.examples.items()]
    rows += [
        "",
        "Limits: the threshold only knows normal variation seen in the normal images; a held-back false-alarm rate "
        "over a few dozen images is a coarse figure. Examples flagged below the threshold are defects this model "
        "ranks as normal: add more normal images or examples, or give the line a detector.",
        "",
    ]
    return "\n".join(rows)


def create_line(
    name: str,
    normal: Path,
    examples: Path | None = None,
    title: str | None = None,
    mm_per_px: float = 0.1,
    max_false_alarm: float = 0.01,
    image_size: int = 256,
    stages: tuple[int, ...] = (2, 4),
    holdout: float = 0.25,
    kb_dir: Path | None = None,
    force: bool = False,
    progress: bool = True,
    margin: int = 0,
) -> LineCard:
    """Bring up a line from normal images (and optional example folders, one per defect class): fit, calibrate,
    measure, write config + model + card, file the examples in the knowledge base. Raises on bad input before
    writing anything."""

    if not NAME_PATTERN.match(name):
        raise ConfigError(f"line name {name!r}: use 2-40 lower-case letters, digits or _, starting with a letter")
    if not 0.0 < max_false_alarm < 0.5:
        raise ConfigError(f"--max-false-alarm {max_false_alarm}: expected a rate in (0, 0.5), e.g. 0.01")
    if mm_per_px <= 0:
        raise ConfigError(f"--mm-per-px {mm_per_px}: must be positive")
    if config_path(name).exists() and not force:
        raise ConfigError(
            f"line {name!r} exists ({config_path(name)}): pick another name or pass --force to replace it"
        )
    if name in available_lines() and force and not (line_dir(name) / CARD_JSON).is_file():
        raise ConfigError(f"line {name!r} was not created by `line new` (it has no card): --force will not replace it")
    zh_title, en_title = _title(title, name)
    classes = example_classes(examples)
    folder = line_dir(name)
    if folder.exists() and force:
        shutil.rmtree(folder)
    model, card = fit_anomaly(name, normal, folder, max_false_alarm, image_size, stages, holdout, progress, margin)
    figures = {c: _example_figures(model, paths) for c, paths in classes.items()}
    header = (
        f"# Line {name}: created by `defect-agent line new` on {datetime.now(UTC):%Y-%m-%d}. Edit the "
        "synonyms, prompts and calibration.mm_per_px\n# (the camera's scale) freely; the anomaly model lives in "
        f"{_relative(folder)}/ with its card.\n"
    )
    _write_config(name, _line_yaml(name, (zh_title, en_title), mm_per_px, classes, card.model), header)
    card.examples = figures
    _write_card(card)
    if classes:
        added = file_examples(name, classes, model, kb_dir)
        for c, n in added.items():
            card.examples[c].added_to_kb = n
        _write_card(card)
    log.info(
        "line %s created: threshold %.4f, held-back false alarms %.1f %%",
        name,
        card.threshold,
        100 * card.false_alarm_held_back,
    )
    return card


def fit_anomaly(
    name: str,
    normal: Path,
    folder: Path,
    max_false_alarm: float = 0.01,
    image_size: int = 256,
    stages: tuple[int, ...] = (2, 4),
    holdout: float = 0.25,
    progress: bool = True,
    margin: int = 0,
) -> tuple[Any, LineCard]:
    """Fit a normal-only anomaly model on `normal`'s images minus a held-back share, calibrate its thresholds on
    the held-back ones, measure the false-alarm rate two-fold, save model + card into `folder`."""
    from vision.anomaly import AnomalyConfig, AnomalyModel

    normals = collect_images([normal])
    if len(normals) < MIN_NORMAL:
        raise EmptyInput(f"{normal} holds {len(normals)} images; a line needs at least {MIN_NORMAL} normal images")
    fit_paths, held_paths = _split(normals, holdout)

    def load(paths: list[str]) -> list[np.ndarray]:
        return [read_image(p) for p in paths]  # the house reader: size and pixel limits, never a FIFO

    try:
        config = AnomalyConfig(image_size=image_size, stages=stages, margin=margin)
    except ValueError as exc:
        raise ConfigError(f"anomaly model settings: {exc}") from exc
    model = AnomalyModel(config)
    t0 = time.perf_counter()
    model.fit(load(fit_paths), progress=progress)
    fit_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    held = model.score_batch(load(held_paths))
    ms_per_image = (time.perf_counter() - t0) * 1000.0 / len(held)
    scores = [r.score for r in held]
    measured_fa = _two_fold_false_alarm(scores, max_false_alarm)
    threshold = model.calibrate(scores, max_false_alarm, normal_map_peaks=[r.peak for r in held])
    folder.mkdir(parents=True, exist_ok=True)
    bank = model.save(folder / MODEL_STEM)
    card = LineCard(
        line=name,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        normal_source=str(normal),
        fit_images=len(fit_paths),
        held_back_images=len(held_paths),
        max_false_alarm=max_false_alarm,
        threshold=threshold,
        map_threshold=float(model.map_threshold or 0.0),  # set by calibrate with normal_map_peaks
        false_alarm_held_back=measured_fa,
        fit_seconds=round(fit_seconds, 2),
        ms_per_image=round(ms_per_image, 1),
        image_size=image_size,
        stages=list(stages),
        model=_relative(bank),
        model_version=model.version,
    )
    _write_card(card, folder)
    return model, card


def add_anomaly(
    name: str,
    normal: Path,
    out: Path | None = None,
    max_false_alarm: float = 0.01,
    image_size: int = 256,
    stages: tuple[int, ...] = (2, 4),
    holdout: float = 0.25,
) -> LineCard:
    """Give a line that has a detector an anomaly model beside it (defects it was never trained on go to review):
    fit on `normal`, save into `out` (default var/lines/<line>/), add `anomaly: {model: ...}` to its config."""
    cfg = load_line(name)
    folder = out if out is not None else line_dir(name)
    _, card = fit_anomaly(name, normal, folder, max_false_alarm, image_size, stages, holdout)
    card.created_by = "defect-agent line anomaly"
    _write_card(card, folder)
    path = config_path(name)
    text = path.read_text(encoding="utf-8")
    if cfg.anomaly is None:
        # appended as text: the config's comments are the engineers' notes and must survive
        text = (
            text.rstrip("\n")
            + f"\nanomaly:                     # normal-only model beside the detector (line anomaly)\n  model: {card.model}\n"
        )
    else:
        data = yaml.safe_load(text)
        data["anomaly"]["model"] = card.model
        text = _header_of(path) + yaml.safe_dump(data, allow_unicode=True, sort_keys=False, width=120)
    LineConfig.model_validate(yaml.safe_load(text))
    atomic_write(path, text.encode("utf-8"))
    load_line.cache_clear()
    return card


def _title(title: str | None, name: str) -> tuple[str, str]:
    """`--title "中文/English"` -> (zh, en); either half may be left out."""
    spoken = name.replace("_", " ")
    if not title:
        return spoken, spoken
    zh, sep, en = title.partition("/")
    zh, en = zh.strip(), en.strip()
    if not sep:
        return (zh, spoken) if re.search(r"[\u4e00-\u9fff]", zh) else (spoken, zh)
    return zh or spoken, en or spoken


def _example_figures(model, paths: list[str]) -> ExampleFigures:
    results = model.score_batch([read_image(p) for p in paths])
    return ExampleFigures(images=len(paths), flagged=sum(model.is_anomalous(r) for r in results))


def _example_box(model, image: np.ndarray, mm_per_px: float):
    """The example's defect without a drawn box: the strongest region of its anomaly map at the calibrated map
    threshold, else (a defect the model ranks as normal, or a false alarm below it) the compact region around the
    map's peak (above 90 % of it). Region-sized, like the regions inspection compares it with: a whole-image crop
    would be compared with region crops and match nothing, or everything."""
    result = model.score(image)
    threshold = model.map_threshold if result.peak > model.map_threshold else 0.9 * result.peak
    regions = model.regions(result, mm_per_px=mm_per_px, threshold=threshold)
    return regions[0].box if regions else None


def file_examples(name: str, classes: dict[str, list[str]], model, kb_dir: Path | None) -> dict[str, int]:
    """Add example images to the knowledge base as cases of their class (box: the strongest anomaly region), once
    each (re-adding the same image is a no-op). Returns class -> cases added."""
    from knowledge_base.case import CaseInput, Disposition
    from knowledge_base.cli import open_kb

    line = load_line(name)
    added: dict[str, int] = {}
    with open_kb(kb_dir, create=True) as kb:
        for cls, paths in classes.items():
            added[cls] = 0
            for path in paths:
                box = _example_box(model, read_image(path), line.calibration.mm_per_px)
                _, new = kb.add_unique(
                    CaseInput(
                        line=name,
                        defect_class=cls,
                        image_path=str(path),
                        box=box,
                        disposition=Disposition.scrap,
                        report=f"example of {cls} given when the line was set up",
                        author="defect-agent line",
                    )
                )
                added[cls] += int(new)
    return added


def add_examples(name: str, examples: Path, kb_dir: Path | None = None) -> dict[str, int]:
    """More example folders for a created line: new classes join its config, every image joins the knowledge base.
    No refit: the normal model does not change, the examples act through similar-case evidence."""
    from vision.anomaly import AnomalyModel

    card = _read_card(name)
    classes = example_classes(examples)
    path = config_path(name)
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    known = {c["name"] for c in data.get("classes", [])}
    words = _defect_words()
    data["classes"] = data.get("classes", []) + [_class_entry(c, words) for c in classes if c not in known]
    _write_config(name, data, _header_of(path))
    model = AnomalyModel.load(_model_path(card))
    for c, paths in classes.items():
        figures = _example_figures(model, paths)
        old = card.examples.get(c)
        card.examples[c] = (
            figures
            if old is None
            else ExampleFigures(
                images=old.images + figures.images, flagged=old.flagged + figures.flagged, added_to_kb=old.added_to_kb
            )
        )
    added = file_examples(name, classes, model, kb_dir)
    for c, n in added.items():
        card.examples[c].added_to_kb += n
    _write_card(card)
    return added


def mark_normal(
    name: str, images: list[str], kb_dir: Path | None = None, file_case: bool = True, knowledge_base: Any = None
) -> int:
    """An engineer's "this was a false alarm": the images join the line's normal model (no refit; the bank grows, so
    the next inspection scores them and their like lower) and, with `file_case`, the knowledge base as normal
    examples (disposition `accept`) of their strongest region, into `knowledge_base` (an open one, e.g. a server's)
    or the one at `kb_dir`. Returns the patch features added."""
    from vision.anomaly import AnomalyModel

    card = _read_card(name)
    paths = collect_images(images)
    arrays = [read_image(p) for p in paths]
    model = AnomalyModel.load(_model_path(card))
    boxes = [_example_box(model, a, load_line(name).calibration.mm_per_px) for a in arrays] if file_case else []
    added = model.add_normal(arrays)
    bank = model.save(_model_path(card))
    card.normal_added += len(paths)
    card.model_version = model.version
    card.model = _relative(bank)
    _write_card(card)
    if file_case:
        from knowledge_base.case import CaseInput, Disposition
        from knowledge_base.cli import open_kb

        label = load_line(name).anomaly_class or "anomaly"
        with nullcontext(knowledge_base) if knowledge_base is not None else open_kb(kb_dir, create=True) as kb:
            for path, box in zip(paths, boxes):
                kb.add_unique(
                    CaseInput(
                        line=name,
                        defect_class=label,
                        image_path=str(path),
                        box=box,
                        disposition=Disposition.accept,
                        report="marked normal: a false alarm of the anomaly model",
                        author="defect-agent line",
                    )
                )
    return added


def _model_path(card: LineCard) -> Path:
    from defect_agent.paths import resolve

    return resolve(card.model)


def _header_of(path: Path) -> str:
    lines = []
    for text in path.read_text(encoding="utf-8").splitlines(keepends=True):
        if not text.startswith("#"):
            break
        lines.append(text)
    return "".join(lines)


class LineSummary(BaseModel):
    """One row of `line list`."""

    name: str
    detector: bool
    anomaly: bool
    classes: list[str]
    created_by_line_new: bool
    error: str | None = None


def list_lines() -> list[LineSummary]:
    """Every configured line, including ones whose config does not load (with the reason)."""
    out = []
    for name in available_lines():
        created = (line_dir(name) / CARD_JSON).is_file()
        try:
            cfg = load_line(name)
        except DefectAgentError as exc:
            out.append(
                LineSummary(
                    name=name, detector=False, anomaly=False, classes=[], created_by_line_new=created, error=str(exc)
                )
            )
            continue
        out.append(
            LineSummary(
                name=name,
                detector=cfg.locator is not None,
                anomaly=cfg.anomaly is not None,
                classes=cfg.defect_names,
                created_by_line_new=created,
            )
        )
    return out


def show_line(name: str) -> dict[str, Any]:
    """The line's config and, for created lines, its card."""
    cfg = load_line(name)
    out: dict[str, Any] = {"config": str(config_path(name)), "line": cfg.model_dump(mode="json", exclude_defaults=True)}
    if (line_dir(name) / CARD_JSON).is_file():
        out["card"] = _read_card(name).model_dump(mode="json")
    return out


def remove_line(name: str) -> list[Path]:
    """Remove a line created by `line new`: its config and its model folder. Its knowledge-base cases stay (`kb list
    --line`); shipped lines (with a detector, no card) are refused."""
    if not (line_dir(name) / CARD_JSON).is_file():
        raise ConfigError(f"line {name!r} was not created by `defect-agent line new`: `line rm` leaves it alone")
    if load_line(name).locator is not None:
        raise ConfigError(f"line {name!r} has a box-trained detector: `line rm` removes only lines made by `line new`")
    removed = []
    path = config_path(name)
    if path.exists():
        path.unlink()
        removed.append(path)
    folder = line_dir(name)
    if folder.exists():
        shutil.rmtree(folder)
        removed.append(folder)
    load_line.cache_clear()
    return removed
