"""`defect-agent calibrate`: a line's texture threshold from known-normal images (`--normal`) and its fusion weights
from labelled detections (`--fusion`). Both run the agent's own pipeline, so the command lives here, not in vision."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import typer
import yaml

from defect_agent.errors import ConfigError, EmptyInput

log = logging.getLogger(__name__)

_TOP_LEVEL_KEY = re.compile(r"^[A-Za-z_][\w-]*\s*:")


def texture_block(threshold: float, max_false_alarm: float, n_images: int, embedder_version: str) -> str:
    return (
        f"texture:                   # set by `defect-agent calibrate` on {n_images} normal images "
        f"({embedder_version})\n"
        f"  threshold: {threshold:.6f}\n"
        f"  max_false_alarm: {max_false_alarm:g}\n"
    )


def rewrite_texture_block(text: str, block: str) -> str:
    """Replace the top-level `texture:` block of a line config (the key line and its indented / blank / comment
    lines up to the next top-level key) with `block`, or append it; everything else, comments included, stays
    byte for byte."""
    lines = text.splitlines(keepends=True)
    start = next((i for i, ln in enumerate(lines) if re.match(r"^texture\s*:", ln)), None)
    if start is None:
        sep = "" if not text or text.endswith("\n") else "\n"
        return text + sep + block
    end = start + 1
    while end < len(lines) and not _TOP_LEVEL_KEY.match(lines[end]):
        end += 1
    # comment lines right before the next key belong to that key: give them back
    while end - 1 > start and lines[end - 1].lstrip().startswith("#") and not lines[end - 1].startswith(" "):
        end -= 1
    return "".join(lines[:start]) + block + "".join(lines[end:])


def write_texture_calibration(
    line_name: str, threshold: float, max_false_alarm: float, n_images: int, embedder_version: str
) -> Path:
    """Store the threshold in configs/lines/<line>.yaml (texture block only), validated before it replaces the file."""
    from defect_agent.config import LineConfig, load_line
    from defect_agent.paths import configs_dir

    path = configs_dir() / "lines" / f"{line_name}.yaml"
    if not path.is_file():
        raise ConfigError(f"no line config {path}")
    new = rewrite_texture_block(
        path.read_text(encoding="utf-8"), texture_block(threshold, max_false_alarm, n_images, embedder_version)
    )
    cfg = LineConfig.model_validate(yaml.safe_load(new))
    if cfg.texture.threshold is None or abs(cfg.texture.threshold - threshold) > 1e-6:
        raise ConfigError(f"rewriting {path} did not yield the texture threshold; file left unchanged")
    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text(new, encoding="utf-8")
    tmp.replace(path)
    load_line.cache_clear()
    return path


def _calibrate_fusion(line: str, n: int, seed: int, split: str, deeppcb: Path | None, dry_run: bool) -> None:
    from tqdm import tqdm

    from agent.calibration import battery_tab_samples, deeppcb_samples, fit_on
    from agent.fusion import save_fusion
    from agent.pipeline import Inspector
    from defect_agent.paths import data_dir, shared_dataset

    inspector = Inspector.from_config(line=line)
    if line == "battery_tab":
        samples = battery_tab_samples(inspector, data_dir() / "calibration" / f"battery_tab-s{seed}-n{n}", n, seed)
        source, total = f"battery_tab generated n={n} seed={seed}", n
    elif line == "pcb":
        root = deeppcb or shared_dataset("deeppcb")
        if root is None or not Path(root).is_dir():
            raise EmptyInput("DeepPCB not found: pass --deeppcb (the folder holding PCBData)")
        samples = deeppcb_samples(inspector, Path(root), split)
        source, total = f"DeepPCB {split} groups", None
    else:
        raise ConfigError(f"no labelled data for line {line!r}: fusion calibration knows battery_tab and pcb")
    fit = fit_on(
        tqdm(samples, total=total, desc="labelled images", unit="img"),
        fitted_on=f"{source}; locator {inspector.locator.version}; embedder {inspector.embedder.version}"
        + (f"; verifier {inspector.verifier.version}" if inspector.verifier is not None else ""),
    )
    w = fit.weights
    typer.echo(
        f"{fit.images} images, {fit.after.findings} detections ({fit.after.positives} true): "
        f"bias {w.bias:.3f} detector {w.detector:.3f} texture {w.texture:.3f} cases {w.cases:.3f} "
        f"verifier {w.verifier:.3f}; boxes {w.box_margin_px:+.2f} px wider / taller than the annotations"
    )
    for name, q in (("identity", fit.before), ("fitted", fit.after)):
        typer.echo(f"  {name:<9} log-loss {q.log_loss:.4f}  Brier {q.brier:.4f}  ECE {q.ece:.4f}")
    if not dry_run:
        typer.echo(f"stored {save_fusion(line, w)}")


def _calibrate_measurement(
    line: str, n: int, seed: int, split: str, deeppcb: Path | None, max_boards: int | None, dry_run: bool
) -> None:
    from tqdm import tqdm

    from agent.measure_calibration import battery_tab_errors, deeppcb_errors
    from agent.pipeline import Inspector
    from agent.uncertainty import estimate_uncertainty, save_measurement_uncertainty
    from defect_agent.paths import data_dir, shared_dataset

    # no embedder, no KB: sizes come from the locator's boxes alone
    inspector = Inspector.from_config(line=line, use_embedder=False, use_kb=False)
    total: int | None
    if line == "battery_tab":
        batches = battery_tab_errors(inspector, data_dir() / "calibration" / f"battery_tab-s{seed}-n{n}", n, seed)
        source, total = f"battery_tab generated n={n} seed={seed}", n
    elif line == "pcb":
        root = deeppcb or shared_dataset("deeppcb")
        if root is None or not Path(root).is_dir():
            raise EmptyInput("DeepPCB not found: pass --deeppcb (the folder holding PCBData)")
        batches = deeppcb_errors(inspector, Path(root), split, max_boards)
        source = f"DeepPCB {split} groups" + (f", first {max_boards} boards" if max_boards else "")
        total = max_boards
    else:
        raise ConfigError(f"no labelled data for line {line!r}: measurement calibration knows battery_tab and pcb")
    samples = [e for batch in tqdm(batches, total=total, desc="labelled images", unit="img") for e in batch]
    try:
        estimate = estimate_uncertainty(
            samples,
            line=line,
            fitted_on=f"{source}; locator {inspector.locator.version}; box margin {inspector.fusion.box_margin_px} px",
        )
    except ValueError as exc:
        raise EmptyInput(str(exc)) from exc
    for key, k in estimate.keys.items():
        typer.echo(
            f"{key:<10} ± {k.spread:.4f} (p{100 * estimate.quantile:.0f} |error|)  bias {k.bias:+.4f}  n={k.samples}"
        )
    for cls, keys in estimate.per_class.items():
        typer.echo(f"  {cls:<12} " + "  ".join(f"{key} ± {k.spread:.4f} (n={k.samples})" for key, k in keys.items()))
    if not dry_run:
        typer.echo(f"stored {save_measurement_uncertainty(estimate)}")


def register(app: typer.Typer, train: typer.Typer, eval: typer.Typer, data: typer.Typer) -> None:  # noqa: A002
    @app.command("calibrate")
    def calibrate_texture(
        line: str = typer.Option(..., help="product line whose configs/lines/<line>.yaml gets the threshold"),
        normal: list[Path] | None = typer.Option(
            None, help="folder(s) or files of known-normal (defect-free) images: sets the texture threshold"
        ),
        max_false_alarm: float = typer.Option(0.01, help="largest share of normal images allowed above the threshold"),
        fusion: bool = typer.Option(
            False,
            "--fusion",
            help="fit the line's fusion weights on labelled images "
            "instead (battery_tab: generated; pcb: DeepPCB annotations)",
        ),
        measurement: bool = typer.Option(
            False,
            "--measurement",
            help="estimate the line's measurement uncertainty (± per size) from findings matched to ground truth "
            "instead, stored in models/measure/<line>.json",
        ),
        max_boards: int | None = typer.Option(None, help="--measurement, pcb: only the first N boards of --split"),
        n: int = typer.Option(200, help="--fusion, battery_tab: images generated for the fit"),
        seed: int = typer.Option(777, help="--fusion, battery_tab: generator seed (training 1, tests 1234 / 4242)"),
        split: str = typer.Option("train", help="--fusion, pcb: DeepPCB part to fit on (val is kept for eval)"),
        deeppcb: Path | None = typer.Option(None, help="--fusion, pcb: DeepPCB folder"),
        dry_run: bool = typer.Option(False, help="print the result, leave the config / fusion file unchanged"),
    ) -> None:
        """Calibrate a line. `--normal DIR`: texture threshold = the (1 - max_false_alarm) quantile of the texture
        scores of known-normal images, stored as texture.threshold in the line config. `--fusion`: logistic fusion
        of detector confidence, texture score and case evidence fitted on detections matched to ground truth,
        stored in models/fusion/<line>.json. `--measurement`: the 90th percentile of |measured - annotated| per size
        (and per class with enough samples) of findings matched to ground truth, stored in
        models/measure/<line>.json (pcb: give `--split val`). Exit codes: 0 done, 2 no data / bad line."""
        if measurement:
            _calibrate_measurement(line, n, seed, split, deeppcb, max_boards, dry_run)
            return
        if fusion:
            _calibrate_fusion(line, n=n, seed=seed, split=split, deeppcb=deeppcb, dry_run=dry_run)
            return
        if not normal:
            raise typer.BadParameter("give --normal DIR (texture threshold) or --fusion")
        import numpy as np
        from tqdm import tqdm

        from agent.images import collect_images, read_image
        from defect_agent.config import load_app_config, load_line
        from vision.embedder import load_embedder
        from vision.embedder.texture import TextureScorer, calibrate_threshold

        if not 0.0 <= max_false_alarm < 1.0:
            raise typer.BadParameter("--max-false-alarm must lie in [0, 1)")
        line_cfg = load_line(line)
        paths = collect_images([str(p) for p in normal])
        embedder = load_embedder(load_app_config().embedder)
        scorer = TextureScorer.from_line(line_cfg, embedder)
        scores = []
        for p in tqdm(paths, desc="scoring normal images", unit="img"):
            scores.append(scorer.score_image(read_image(p)).defect_score)
        if not scores:
            raise EmptyInput("no normal images could be scored")
        threshold = calibrate_threshold(scores, max_false_alarm)
        rate = float(np.mean(np.asarray(scores) > threshold))
        typer.echo(
            f"{len(scores)} normal images: score min {min(scores):.4f} median {float(np.median(scores)):.4f} "
            f"max {max(scores):.4f}; threshold {threshold:.6f} -> false alarms {100 * rate:.2f}% "
            f"(target <= {100 * max_false_alarm:g}%)"
        )
        if dry_run:
            return
        path = write_texture_calibration(line, threshold, max_false_alarm, len(scores), embedder.version)
        typer.echo(f"stored texture.threshold in {path}")
