"""CLI of the embedder: `defect-agent train embedder` and `defect-agent eval fewshot` (DeepPCB few-shot naming).
Line calibration (texture threshold, fusion weights) runs the whole pipeline and lives in `agent.calibration_cli`."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import typer

from defect_agent.errors import EmptyInput

log = logging.getLogger(__name__)


def register(app: typer.Typer, train: typer.Typer, eval: typer.Typer, data: typer.Typer) -> None:  # noqa: A002
    @train.command("embedder")
    def train_embedder_cmd(
        out: Path | None = typer.Option(
            None, help="checkpoint to write (default models/embedder/defect-lite-minilm.pt)"
        ),
        seed: int = typer.Option(0, help="seed of data sampling, initialisation and batches"),
        steps: int = typer.Option(1500, help="projection training steps"),
        batch: int = typer.Option(256, help="crops per contrastive batch"),
        zh_steps: int = typer.Option(150, help="steps fitting the added Chinese characters"),
        battery_images: int = typer.Option(480, help="generated battery_tab training images"),
        pcb_per_class: int = typer.Option(200, help="DeepPCB train-part crops per defect class"),
        deeppcb: Path | None = typer.Option(None, help="DeepPCB folder (default ../shared/datasets/deeppcb)"),
        lines: str = typer.Option("battery_tab,pcb", help="comma-separated lines to train on"),
        unlock_image_stage: bool = typer.Option(False, help="also train EfficientNet's last stage (slower)"),
        threads: int | None = typer.Option(None, help="CPU threads (default: all)"),
    ) -> None:
        """Train the default embedder's projections LiT-style on battery_tab and DeepPCB (train part) crops."""
        import os

        from vision.embedder.train import TrainSettings, train_embedder

        if threads:
            os.environ["DEFECT_AGENT_THREADS"] = str(threads)
        st = TrainSettings(
            seed=seed,
            steps=steps,
            batch=batch,
            zh_steps=zh_steps,
            battery_train_images=battery_images,
            pcb_train_per_class=pcb_per_class,
            deeppcb=deeppcb,
            lines=[s.strip() for s in lines.split(",") if s.strip()],
            unlock_image_stage=unlock_image_stage,
            **({"out": out} if out else {}),
        )
        report = train_embedder(st)
        typer.echo(
            f"wrote {report.out} ({report.size_bytes / 1e6:.2f} MB, sha256 {report.sha256[:12]}), "
            f"{report.trainable_params} trained parameters, {report.added_tokens} added characters, "
            f"logit scale {report.logit_scale}"
        )
        typer.echo(f"time: {report.seconds}")
        for split, by_line in report.metrics.items():
            for line, m in by_line.items():
                typer.echo(
                    f"{split:<5} {line:<12} n={m.n:<5} top1 en {m.top1_en:.3f}  zh {m.top1_zh:.3f}  "
                    f"both {m.top1_both:.3f}  defect AUROC {m.defect_auroc}"
                )

    @eval.command("fewshot")
    def eval_fewshot(
        deeppcb: Path | None = typer.Option(None, help="DeepPCB folder (default ../shared/datasets/deeppcb)"),
        seeds: int = typer.Option(5, help="support draws averaged per k"),
        ks: str = typer.Option("1,5,20", help="support examples per class"),
        out: Path = typer.Option(Path("benchmarks/results/fewshot.json"), help="JSON result (markdown beside it)"),
    ) -> None:
        """Few-shot defect naming on the DeepPCB validation boards: zero-shot prompts vs k-shot prototypes."""
        from defect_agent.config import load_app_config
        from defect_agent.paths import shared_dataset
        from vision.embedder import load_embedder
        from vision.embedder.fewshot import run_fewshot

        root = deeppcb or shared_dataset("deeppcb")
        if root is None or not Path(root).is_dir():
            raise EmptyInput("DeepPCB not found: pass --deeppcb (the folder holding PCBData)")
        result = run_fewshot(
            load_embedder(load_app_config().embedder),
            root,
            ks=tuple(int(k) for k in ks.split(",")),
            seeds=tuple(range(seeds)),
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result.model_dump(), indent=1, ensure_ascii=False), encoding="utf-8")
        md = out.with_suffix(".md")
        md.write_text(result.markdown() + "\n", encoding="utf-8")
        typer.echo(result.markdown())
        typer.echo(f"tuned on train: {result.tuned}; wrote {out} and {md}")
