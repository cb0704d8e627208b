"""CLI for the class verifier of template lines: `defect-agent train verifier`, `defect-agent eval verifier`."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import typer

from defect_agent.errors import ConfigError

log = logging.getLogger(__name__)


def _deeppcb_src(src: Path | None) -> Path:
    from defect_agent.paths import shared_dataset

    path = src or shared_dataset("deeppcb") or Path("../shared/datasets/deeppcb")
    if not path.exists():
        raise ConfigError(f"DeepPCB not found at {path}: pass --src (see ../shared/datasets/README.md)")
    return path


def register(app: typer.Typer, train: typer.Typer, eval: typer.Typer, data: typer.Typer) -> None:  # noqa: A002
    @train.command("verifier")
    def train_verifier_cmd(
        line: str = typer.Option("pcb", help="a line with golden templates (locator.reference: template)"),
        src: Path | None = typer.Option(None, help="DeepPCB folder (default ../shared/datasets/deeppcb)"),
        epochs: int = typer.Option(30),
        batch: int = typer.Option(128),
        lr: float = typer.Option(2e-3, help="AdamW peak learning rate (one-cycle schedule)"),
        background: int = typer.Option(2, help="background crops per board"),
        seed: int = typer.Option(0),
        max_boards: int | None = typer.Option(None, help="use only the first N boards of each split (smoke runs)"),
        out: Path | None = typer.Option(None, help="weights file (default: the line's locator.verifier)"),
        proposals: bool = typer.Option(
            True,
            help="also train on the line's locator's own detections on the train "
            "boards (hard negatives, real box errors)",
        ),
        proposal_conf: float = typer.Option(0.05, help="confidence floor of those detections"),
        positive_iou: float = typer.Option(
            0.3,
            help="a detection overlapping an annotation this much is a sample of its class (and a box to refine to it)",
        ),
        box_head: bool = typer.Option(True, help="learn to refine each box to the annotation"),
        crop: int = typer.Option(48, help="side in pixels the crops are resized to"),
        partial: float = typer.Option(
            0.0,
            help="share of the defect samples shown as a piece of their annotation "
            "(long defects the detector cuts in two), to be refined to the whole",
        ),
    ) -> None:
        """Train the line's class verifier on the annotated boxes of the DeepPCB train groups; reports its crop
        accuracy on the validation groups."""
        from defect_agent.config import load_line
        from defect_agent.paths import resolve
        from vision.verifier.data import deeppcb_verifier_samples
        from vision.verifier.train import train_verifier

        cfg = load_line(line)
        if cfg.detector.reference != "template":
            raise ConfigError(
                f"line {line!r} has no golden templates (locator.reference is "
                f"{cfg.detector.reference!r}): the verifier reads (test, template) crops"
            )
        target = resolve(out or cfg.detector.verifier or f"models/locator/{line}_verifier.safetensors")
        root = _deeppcb_src(src)
        locator = None
        if proposals:
            from defect_agent.runtime import configure_offline
            from vision.locator.model import shared_pool

            configure_offline()
            locator = shared_pool().locator(cfg)
        channels, samples, _ = deeppcb_verifier_samples(
            root,
            "train",
            background,
            seed,
            max_boards,
            locator=locator,
            proposal_conf=proposal_conf,
            proposal_on_defect=positive_iou,
        )
        val = deeppcb_verifier_samples(root, "val", background, seed + 1, max_boards)[:2]
        source = (
            f", with {getattr(locator, 'version', '?')} proposals at conf {proposal_conf}, positives from IoU "
            f"{positive_iou}"
            if locator
            else ""
        )
        verifier = train_verifier(
            channels,
            samples,
            cfg.class_names,
            epochs=epochs,
            batch=batch,
            lr=lr,
            seed=seed,
            val=val,
            box_regression=box_head,
            crop=crop,
            partial_share=partial,
            trained_on=f"DeepPCB train groups ({len(channels)} boards, {len(samples)} crops"
            f"{source}), {epochs} epochs, seed {seed}" + (f", partial boxes {partial}" if partial else ""),
        )
        verifier.save(target)
        typer.echo(
            f"wrote {target} ({target.stat().st_size / 1e3:.0f} kB): validation crop accuracy "
            f"{verifier.meta.val_accuracy:.4f}, {verifier.meta.train_seconds:.0f} s"
        )
        if verifier.meta.val_box_iou is not None:
            typer.echo(
                f"box head: validation jittered-box IoU {verifier.meta.val_box_iou_before:.4f} -> "
                f"{verifier.meta.val_box_iou:.4f}"
            )
        names = verifier.outputs
        typer.echo(
            "validation confusion (rows: annotated, columns: verifier)\n"
            + " " * 11
            + "".join(f"{n[:9]:>10}" for n in names)
        )
        for name, row in zip(names, verifier.meta.val_confusion or []):
            typer.echo(f"{name[:10]:<11}" + "".join(f"{v:>10}" for v in row))

    @eval.command("verifier")
    def eval_verifier_cmd(
        line: str = typer.Option("pcb"),
        src: Path | None = typer.Option(None, help="DeepPCB folder (default ../shared/datasets/deeppcb)"),
        split: str = typer.Option("val"),
        max_boards: int | None = typer.Option(None),
        json_out: Path | None = typer.Option(None, "--json", help="write the report here"),
    ) -> None:
        """The line's detections scored as the detector gives them and after the verifier relabels them."""
        from defect_agent.config import load_line
        from defect_agent.runtime import configure_offline
        from vision.locator.model import shared_pool
        from vision.verifier.eval import evaluate_verifier
        from vision.verifier.model import DefectVerifier

        configure_offline()
        cfg = load_line(line)
        verifier = DefectVerifier.for_line(cfg)
        report = evaluate_verifier(
            shared_pool().locator(cfg),
            verifier,
            _deeppcb_src(src),
            split,
            conf_operating=cfg.detector.conf,
            max_boards=max_boards,
        )
        rows = [("detector", report.detector), ("verified", report.verified)]
        if report.verified_multilabel is not None:
            rows.append(("+alternatives", report.verified_multilabel))
        for name, score in rows:
            typer.echo(
                f"{name:13s} mAP50 {score.map50:.4f}  mAP50-95 {score.map50_95:.4f}  mAP@0.33 (DeepPCB's "
                f"protocol) {score.map33:.4f}  miss {score.miss_rate:.4f}"
                f"  class accuracy {score.class_accuracy:.4f} ({score.located} boxes)  "
                + "  ".join(f"{c.name} {c.ap50:.3f}/{c.precision:.2f}/{c.recall:.2f}" for c in score.per_class)
            )
        if json_out:
            json_out.parent.mkdir(parents=True, exist_ok=True)
            json_out.write_text(json.dumps(report.model_dump(), indent=1), encoding="utf-8")
