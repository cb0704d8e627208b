"""Creating, extending and removing lines without boxes: `create_line` (line new), `add_anomaly` (line anomaly),
`add_examples`, `mark_normal`, `list_lines`, `show_line`, `remove_line`."""

from __future__ import annotations

import logging
import re
import shutil
from contextlib import nullcontext
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from agent.images import collect_images, read_image
from agent.lines.card import (
    CARD_JSON,
    ExampleFigures,
    LineCard,
    line_dir,
    model_path,
    read_card,
    relative_path,
    write_card,
)
from agent.lines.config_writer import (
    class_entry,
    config_path,
    defect_words,
    example_classes,
    header_of,
    line_yaml,
    title_pair,
    write_config,
)
from agent.lines.fit import ExampleReading, example_figures, fit_anomaly, read_examples, region_box
from defect_agent.config import LineConfig, available_lines, load_line
from defect_agent.errors import ConfigError, DefectAgentError
from defect_agent.files import atomic_write

log = logging.getLogger(__name__)

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]{1,39}$")


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
    zh_title, en_title = title_pair(title, name)
    classes = example_classes(examples)
    folder = line_dir(name)
    if folder.exists() and force:
        shutil.rmtree(folder)
    model, card = fit_anomaly(name, normal, folder, max_false_alarm, image_size, stages, holdout, progress, margin)
    readings = {c: read_examples(model, paths, mm_per_px) for c, paths in classes.items()}
    figures = {c: example_figures(r) for c, r in readings.items()}
    header = (
        f"# Line {name}: created by `defect-agent line new` on {datetime.now(UTC):%Y-%m-%d}. Edit the "
        "synonyms, prompts and calibration.mm_per_px\n# (the camera's scale) freely; the anomaly model lives in "
        f"{relative_path(folder)}/ with its card.\n"
    )
    write_config(name, line_yaml(name, (zh_title, en_title), mm_per_px, classes, card.model), header)
    card.examples = figures
    write_card(card)
    if classes:
        added = file_examples(name, readings, kb_dir)
        for c, n in added.items():
            card.examples[c].added_to_kb = n
        write_card(card)
    log.info(
        "line %s created: threshold %.4f, held-back false alarms %.1f %%",
        name,
        card.threshold,
        100 * card.false_alarm_held_back,
    )
    return card


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
    write_card(card, folder)
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
        text = header_of(path) + yaml.safe_dump(data, allow_unicode=True, sort_keys=False, width=120)
    LineConfig.model_validate(yaml.safe_load(text))
    atomic_write(path, text.encode("utf-8"))
    load_line.cache_clear()
    return card


def file_examples(name: str, readings: dict[str, list[ExampleReading]], kb_dir: Path | None) -> dict[str, int]:
    """Add example images to the knowledge base as cases of their class (box: the strongest anomaly region, as
    `read_examples` found it), once each (re-adding the same image is a no-op). Returns class -> cases added."""
    from knowledge_base.case import CaseInput, Disposition
    from knowledge_base.cli import open_kb

    added: dict[str, int] = {}
    with open_kb(kb_dir, create=True) as kb:
        for cls, examples in readings.items():
            added[cls] = 0
            for example in examples:
                _, new = kb.add_unique(
                    CaseInput(
                        line=name,
                        defect_class=cls,
                        image_path=str(example.path),
                        box=example.box,
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

    card = read_card(name)
    classes = example_classes(examples)
    path = config_path(name)
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    known = {c["name"] for c in data.get("classes", [])}
    words = defect_words()
    data["classes"] = data.get("classes", []) + [class_entry(c, words) for c in classes if c not in known]
    write_config(name, data, header_of(path))
    model = AnomalyModel.load(model_path(card))
    readings = {c: read_examples(model, paths, load_line(name).calibration.mm_per_px) for c, paths in classes.items()}
    for c, found in readings.items():
        figures = example_figures(found)
        old = card.examples.get(c)
        card.examples[c] = (
            figures
            if old is None
            else ExampleFigures(
                images=old.images + figures.images, flagged=old.flagged + figures.flagged, added_to_kb=old.added_to_kb
            )
        )
    added = file_examples(name, readings, kb_dir)
    for c, n in added.items():
        card.examples[c].added_to_kb += n
    write_card(card)
    return added


def mark_normal(
    name: str, images: list[str], kb_dir: Path | None = None, file_case: bool = True, knowledge_base: Any = None
) -> int:
    """An engineer's "this was a false alarm": the images join the line's normal model (no refit; the bank grows, so
    the next inspection scores them and their like lower) and, with `file_case`, the knowledge base as normal
    examples (disposition `accept`) of their strongest region, into `knowledge_base` (an open one, e.g. a server's)
    or the one at `kb_dir`. Returns the patch features added."""
    from vision.anomaly import AnomalyModel

    card = read_card(name)
    paths = collect_images(images)
    arrays = [read_image(p) for p in paths]
    model = AnomalyModel.load(model_path(card))
    added, scored = model.score_and_add_normal(arrays)
    mm_per_px = load_line(name).calibration.mm_per_px
    boxes = [region_box(model, result, mm_per_px) for result in scored] if file_case else []
    bank = model.save(model_path(card))
    card.normal_added += len(paths)
    card.model_version = model.version
    card.model = relative_path(bank)
    write_card(card)
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
        out["card"] = read_card(name).model_dump(mode="json")
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
