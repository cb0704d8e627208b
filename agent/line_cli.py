"""`defect-agent line ...`: bring up a product line from normal images and a few examples, without drawing boxes
(agent.lines), and list, show or remove lines.

Exit codes: 0 done; 2 an error (bad folder, existing line, too few images), printed without a traceback by agent.cli."""

from __future__ import annotations

import json
from pathlib import Path

import typer

line_app = typer.Typer(no_args_is_help=True, help="Product lines: create one from normal images, list, show, remove.")

KB_OPTION = typer.Option(None, "--kb", help="knowledge base folder for the examples (default: kb_dir of the config)")


@line_app.command("new")
def line_new(
    name: str = typer.Argument(..., help="the line's name: lower-case letters, digits, _ (e.g. solar_el)"),
    normal: Path = typer.Option(..., "--normal", help="folder of normal (defect-free) images of the part"),
    examples: Path | None = typer.Option(
        None, "--examples", help="folder with one sub-folder of defect images per class (the folder names the class)"
    ),
    title: str | None = typer.Option(
        None, "--title", help='the product\'s name, "中文/English" (e.g. "电池片/solar cell")'
    ),
    mm_per_px: float = typer.Option(0.1, "--mm-per-px", help="the camera's scale, millimetres per pixel"),
    max_false_alarm: float = typer.Option(
        0.01, "--max-false-alarm", help="target share of normal parts flagged (calibrated on held-back normal images)"
    ),
    image_size: int = typer.Option(256, "--image-size", help="side the anomaly model resizes images to, px"),
    stages: str = typer.Option(
        "2,4", "--stages", help="EfficientNet-Lite0 blocks of the features: 2,4 for textures; 1,2 for fine detail"
    ),
    margin: int = typer.Option(0, "--margin", help="border left uninspected, model px (parts cut at the image edge)"),
    kb: Path | None = KB_OPTION,
    force: bool = typer.Option(False, "--force", help="replace a line created earlier by `line new`"),
) -> None:
    """Create a line: fit its normal-only anomaly model, calibrate the threshold, measure it on held-back normal
    images, write configs/lines/NAME.yaml and the model card, file the examples in the knowledge base. The line is
    then usable by inspect, batch, serve and kb."""
    from agent.lines import config_path, create_line, line_dir
    from defect_agent.runtime import configure_offline, set_threads

    configure_offline()
    set_threads(None)
    try:
        blocks = tuple(int(s) for s in stages.split(",") if s.strip())
    except ValueError as exc:
        raise typer.BadParameter(f"expected block numbers like 2,4, got {stages!r}", param_hint="--stages") from exc
    card = create_line(
        name,
        normal,
        examples=examples,
        title=title,
        mm_per_px=mm_per_px,
        max_false_alarm=max_false_alarm,
        image_size=image_size,
        stages=blocks,
        kb_dir=kb,
        force=force,
        margin=margin,
    )
    typer.echo(
        f"line {name}: fitted on {card.fit_images} normal images in {card.fit_seconds:.1f} s, threshold "
        f"{card.threshold:.4f} at {card.max_false_alarm:.1%} target; held-back false alarms "
        f"{card.false_alarm_held_back:.1%} ({card.held_back_images} images), {card.ms_per_image:.0f} ms per image"
    )
    for cls, ex in card.examples.items():
        typer.echo(
            f"  examples {cls}: {ex.images} images, {ex.flagged} above the threshold, {ex.added_to_kb} new cases"
        )
    typer.echo(f"config {config_path(name)}; model and card in {line_dir(name)}")
    typer.echo(f'try: defect-agent inspect "find every anomaly" {normal} --line {name}')


@line_app.command("anomaly")
def line_anomaly(
    name: str = typer.Argument(..., help="a line with a detector, e.g. battery_tab"),
    normal: Path = typer.Option(..., "--normal", help="folder of normal (defect-free) images of the part"),
    out: Path | None = typer.Option(None, "--out", help="folder for the model and card (default var/lines/LINE)"),
    max_false_alarm: float = typer.Option(0.01, "--max-false-alarm", help="target share of normal parts flagged"),
    image_size: int = typer.Option(256, "--image-size", help="side the anomaly model resizes images to, px"),
) -> None:
    """Fit an anomaly model beside a line's detector: regions no detected defect explains (a defect the detector
    was never trained on) then send the part to review. Adds `anomaly:` to the line's config."""
    from agent.lines import add_anomaly
    from defect_agent.runtime import configure_offline, set_threads

    configure_offline()
    set_threads(None)
    card = add_anomaly(name, normal, out=out, max_false_alarm=max_false_alarm, image_size=image_size)
    typer.echo(
        f"line {name}: anomaly model {card.model} fitted on {card.fit_images} normal images in {card.fit_seconds:.1f} s; "
        f"held-back false alarms {card.false_alarm_held_back:.1%} ({card.held_back_images} images)"
    )


@line_app.command("list")
def line_list(as_json: bool = typer.Option(False, "--json", help="one JSON object per line")) -> None:
    """Every configured line: detector, anomaly model, defect classes."""
    from agent.lines import list_lines

    for row in list_lines():
        if as_json:
            typer.echo(row.model_dump_json())
            continue
        models = "+".join(m for m, on in (("detector", row.detector), ("anomaly", row.anomaly)) if on) or "-"
        origin = "line new" if row.created_by_line_new else "shipped"
        typer.echo(f"{row.name:<16} {models:<17} {origin:<9} {row.error or ', '.join(row.classes)}")


@line_app.command("show")
def line_show(name: str = typer.Argument(..., help="line name")) -> None:
    """The line's config and, for lines made by `line new`, its model card figures (JSON)."""
    from agent.lines import show_line

    typer.echo(json.dumps(show_line(name), indent=1, ensure_ascii=False))


@line_app.command("rm")
def line_rm(
    name: str = typer.Argument(..., help="a line created by `line new`"),
    yes: bool = typer.Option(False, "--yes", "-y", help="do not ask"),
) -> None:
    """Remove a line made by `line new` (config, model, card). Its knowledge-base cases stay."""
    from agent.lines import remove_line

    if not yes and not typer.confirm(f"remove line {name} (config and anomaly model)?"):
        raise typer.Exit(1)
    for path in remove_line(name):
        typer.echo(f"removed {path}")


@line_app.command("add-examples")
def line_add_examples(
    name: str = typer.Argument(..., help="a line created by `line new`"),
    examples: Path = typer.Option(..., "--examples", help="folder with one sub-folder of defect images per class"),
    kb: Path | None = KB_OPTION,
) -> None:
    """More defect examples: new classes join the line, every image joins the knowledge base (no refit)."""
    from agent.lines import add_examples
    from defect_agent.runtime import configure_offline

    configure_offline()
    for cls, n in add_examples(name, examples, kb_dir=kb).items():
        typer.echo(f"{cls}: {n} new cases")


@line_app.command("mark-normal")
def line_mark_normal(
    name: str = typer.Argument(..., help="a line created by `line new`"),
    images: list[str] = typer.Argument(..., help="images the anomaly model flagged that are normal (false alarms)"),
    kb: Path | None = KB_OPTION,
    no_case: bool = typer.Option(False, "--no-case", help="only teach the model; file no knowledge-base case"),
) -> None:
    """Mark false alarms as normal: the images join the line's normal model at once (no refit) and the knowledge
    base as normal examples; the next inspection uses both."""
    from agent.lines import mark_normal
    from defect_agent.runtime import configure_offline

    configure_offline()
    added = mark_normal(name, images, kb_dir=kb, file_case=not no_case)
    typer.echo(f"line {name}: {len(images)} image(s) marked normal, {added} patch features joined the normal model")


def register(app: typer.Typer, train: typer.Typer, eval: typer.Typer, data: typer.Typer) -> None:
    app.add_typer(line_app, name="line")
