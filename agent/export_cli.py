"""`defect-agent export`: a line's locator as one merged torch checkpoint, or the line's engines for onnxruntime
(locator, verifier, the embedder's image tower). It spans several models, so it lives above them, in agent."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from defect_agent.errors import ConfigError

if TYPE_CHECKING:
    from defect_agent.config import LineConfig

ONNX_PARTS = ("locator", "verifier", "anomaly", "embedder")


def export_onnx(line: str, parts: list[str] | None = None, out: Path | None = None) -> dict[str, Path]:
    """Write the line's ONNX engines: `locator.onnx` (base + adapter merged), `verifier.onnx` (template lines) and
    `anomaly_features.onnx` (lines with an anomaly model) into `out` or var/onnx/<line>, the embedder's image tower
    `<model>-image.onnx` into `out` or var/onnx/embedder. `parts`: a subset of locator, verifier, anomaly, embedder
    (default: every one the line has)."""
    from defect_agent.config import load_app_config, load_line
    from defect_agent.paths import resolve
    from vision.locator.onnx_engine import default_onnx_dir

    cfg = load_line(line)
    unknown = sorted(set(parts or []) - set(ONNX_PARTS))
    if unknown:
        raise ConfigError(f"--part {', '.join(unknown)}: choose from {', '.join(ONNX_PARTS)}")
    has = {
        "locator": cfg.locator is not None,
        "verifier": cfg.locator is not None and bool(cfg.detector.verifier),
        "anomaly": cfg.anomaly is not None,
        "embedder": True,
    }
    missing = [p for p in parts or [] if not has[p]]
    if missing:
        raise ConfigError(f"line {line!r} has no {', '.join(missing)} to export")
    chosen = parts or [p for p in ONNX_PARTS if has[p]]
    line_dir = resolve(out) if out else default_onnx_dir(cfg.name)
    written: dict[str, Path] = {}
    for part in ONNX_PARTS:
        if part not in chosen:
            continue
        if part == "locator":
            from vision.locator.export import export_locator

            written[part] = export_locator(cfg, line_dir)
        elif part == "verifier":
            from vision.verifier.model import export_line_verifier

            written[part] = export_line_verifier(cfg, line_dir)
        elif part == "anomaly":
            written[part] = _export_anomaly(cfg, line_dir)
        else:  # one embedder serves every line: its default folder is its own (var/onnx/embedder)
            from vision.embedder.model import export_embedder_onnx

            written[part] = export_embedder_onnx(load_app_config().embedder, resolve(out) if out else None)
            _cache_prompts(cfg)
    return written


def _export_anomaly(line: LineConfig, out_dir: Path) -> Path:
    """`<out_dir>/anomaly_features.onnx` for the line's `anomaly.model`, traced from the backbone it was fitted on."""
    from defect_agent.paths import resolve
    from vision.anomaly.model import AnomalyModel
    from vision.anomaly.onnx_features import FEATURES_FILE, export_features

    assert line.anomaly is not None  # export_onnx exports only the parts a line has
    model = AnomalyModel.load(resolve(line.anomaly.model))  # checks the files, and that the backbone is the fitted one
    assert model.backbone_sha256 is not None  # load sets it
    return export_features(model.config, model.backbone_sha256, out_dir / FEATURES_FILE)


def _cache_prompts(line: LineConfig) -> None:
    """Embed the line's prompt texts into the prompt cache (var/cache) now: the onnx engine's text tower is the torch
    model, and a line PC that runs without torch then never has to build it."""
    from defect_agent.config import load_app_config
    from vision.embedder import load_embedder
    from vision.embedder.texture import TextureScorer

    if any(c.role == "defect" for c in line.classes):
        TextureScorer.from_line(line, load_embedder(load_app_config().embedder))


def register(app: typer.Typer, train: typer.Typer, eval: typer.Typer, data: typer.Typer) -> None:  # noqa: A002
    @app.command("export")
    def export_cmd(
        line: str = typer.Option(..., help="product line"),
        merge: bool = typer.Option(False, "--merge", help="pt: fold the line's LoRA adapter into the base"),
        fmt: str = typer.Option(
            "pt",
            "--format",
            help="pt: a merged torch checkpoint (with --merge); onnx: the line's locator (adapter merged), "
            "verifier, anomaly features and the embedder's image tower for onnxruntime",
        ),
        part: list[str] | None = typer.Option(
            None, "--part", help="onnx: locator, verifier, anomaly or embedder, repeated (default: all the line has)"
        ),
        out: Path | None = typer.Option(
            None,
            help="pt: output .pt (default: the line's locator.weights); onnx: output folder (default: "
            "var/onnx/<line>, the embedder var/onnx/embedder; never models/)",
        ),
    ) -> None:
        """Write a standalone checkpoint of a line's locator (`--merge`: base + adapter folded together), or with
        `--format onnx` its ONNX engines (load them with engine="onnx"). Exit codes: 0 written; 2 a configuration
        error (no adapter to merge, a missing model file, an output inside models/, an unknown format or part)."""
        from defect_agent.config import load_line
        from defect_agent.paths import resolve
        from vision.locator.lora import merge_adapter

        if fmt == "onnx":
            for name, path in export_onnx(line, part, out).items():
                typer.echo(f"wrote {name} {path} ({path.stat().st_size / 1e6:.1f} MB)")
            return
        if fmt != "pt":
            raise ConfigError(f"--format {fmt!r}: choose pt (with --merge) or onnx")
        if part:
            raise ConfigError("--part applies to --format onnx")
        if not merge:
            raise ConfigError("pass --merge (a merged torch checkpoint) or --format onnx")
        cfg = load_line(line)
        if not cfg.detector.adapter:
            raise ConfigError(f"line {line!r} has no locator.adapter to merge")
        base = resolve(cfg.detector.base or cfg.detector.weights)
        target = resolve(out) if out else resolve(cfg.detector.weights)
        if target.resolve() == base.resolve():
            raise ConfigError(f"refusing to overwrite the shared base {base}; pass --out")
        path = merge_adapter(base, resolve(cfg.detector.adapter), target)
        typer.echo(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
