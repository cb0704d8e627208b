"""Product lines a quality engineer brings up without drawing boxes: `defect-agent line new|list|show|rm|
add-examples|mark-normal|anomaly` (agent.line_cli).

`create_line` fits the line's normal-only anomaly model (vision.anomaly) on the normal images, calibrates its
thresholds at a false-alarm target on held-back normal images, measures that rate on images the threshold was not
set on (two folds), writes the line config (configs/lines/<line>.yaml: classes named after the example folders,
synonyms and prompts in zh + en to edit), the model and its card (var/lines/<line>/), and files the examples in the
knowledge base, where they name and move the anomaly regions of later inspections (agent.anomaly_stage)."""

from agent.lines.card import ExampleFigures, LineCard, card_folder, line_dir, render_card
from agent.lines.config_writer import config_path, example_classes
from agent.lines.fit import fit_anomaly
from agent.lines.manage import (
    LineSummary,
    add_anomaly,
    add_examples,
    create_line,
    file_examples,
    list_lines,
    mark_normal,
    remove_line,
    show_line,
)

__all__ = [
    "ExampleFigures",
    "LineCard",
    "LineSummary",
    "add_anomaly",
    "add_examples",
    "card_folder",
    "config_path",
    "create_line",
    "example_classes",
    "file_examples",
    "fit_anomaly",
    "line_dir",
    "list_lines",
    "mark_normal",
    "remove_line",
    "render_card",
    "show_line",
]
