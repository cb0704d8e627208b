"""`defect-agent data battery-tab`: generate the built-in line's images with exact truth, or a YOLO dataset."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer, train: typer.Typer, eval: typer.Typer, data: typer.Typer) -> None:  # noqa: A002
    data.command("battery-tab")(battery_tab)


def battery_tab(
    out: Path = typer.Argument(..., help="Output folder (created)."),
    n: int = typer.Option(200, "--n", min=1, help="Images to generate (the train split with --yolo)."),
    seed: int = typer.Option(7, "--seed", help="Batch seed: the same seed gives the same images and truth."),
    yolo: bool = typer.Option(False, "--yolo", help="Write an ultralytics dataset (images/, labels/, data.yaml)."),
    val: int = typer.Option(50, "--val", min=0, help="Validation images with --yolo."),
) -> None:
    """Procedural battery-tab weld images with exact ground truth (truth.jsonl), or a YOLO dataset."""
    if yolo:
        from vision.datasets.synth.dataset import write_yolo_dataset

        data_yaml = write_yolo_dataset(out, n_train=n, n_val=val, seed=seed)
        typer.echo(f"YOLO dataset: {n} train + {val} val images -> {data_yaml}")
        return
    from vision.datasets.synth.battery_tab import generate_batch, read_truth

    paths = generate_batch(out, n, seed)
    truths = read_truth(Path(out) / "truth.jsonl")
    n_match = sum(t.seed_query_match for t in truths)
    n_offset = sum(t.offset_mm is not None and t.offset_mm > 0.3 for t in truths)
    n_spatter = sum(t.has("spatter") for t in truths)
    typer.echo(
        f"{len(paths)} images + truth.jsonl -> {out} (offset > 0.3 mm: {n_offset}, spatter: {n_spatter}, "
        f"both: {n_match})"
    )
