"""The card of a line's anomaly model: what `line new` / `line anomaly` measured, kept beside the model
(card.json + MODEL_CARD.md) and printed by `line show`."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field

from defect_agent.config import load_line
from defect_agent.errors import ConfigError, DefectAgentError
from defect_agent.files import atomic_write
from defect_agent.paths import data_dir, project_root, resolve

CARD_JSON = "card.json"
CARD_MD = "MODEL_CARD.md"


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


def relative_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(project_root()))
    except ValueError:
        return str(path.resolve())


def card_folder(name: str) -> Path:
    """Where the line's anomaly card lies: beside its anomaly model (var/lines/<line>/ for lines made here)."""
    try:
        cfg = load_line(name)
    except DefectAgentError:
        return line_dir(name)
    if cfg.anomaly is None:
        return line_dir(name)

    return resolve(cfg.anomaly.model).parent


def read_card(name: str) -> LineCard:
    path = card_folder(name) / CARD_JSON
    if not path.is_file():
        raise ConfigError(f"line {name!r} has no anomaly model card (no {path}); create lines with `line new`")
    return LineCard.model_validate_json(path.read_text(encoding="utf-8"))


def write_card(card: LineCard, folder: Path | None = None) -> None:
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


def model_path(card: LineCard) -> Path:

    return resolve(card.model)
