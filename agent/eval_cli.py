"""`defect-agent eval queries`: the instruction's returned image set against the set implied by ground truth."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from agent.demo import SEED_INSTRUCTION_EN, SEED_INSTRUCTION_ZH

if TYPE_CHECKING:
    from agent.evaluation import PooledFigures


def eval_queries(
    line: str = typer.Option("battery_tab", help="product line"),
    instruction: list[str] | None = typer.Option(
        None, "--instruction", "-i", help="instructions to evaluate (default: the seed's, zh + en)"
    ),
    n: int = typer.Option(200, help="battery_tab: images to generate for the test set"),
    seed: int = typer.Option(4242, help="battery_tab: test-set seed (training used other seeds)"),
    out: Path = typer.Option(Path("var/eval/queries"), help="where the test set and verdicts go"),
    as_json: Path | None = typer.Option(None, "--json", help="write the figures as JSON here"),
    no_kb: bool = typer.Option(False, "--no-kb", help="skip retrieval"),
    deeppcb: Path | None = typer.Option(None, help="pcb: DeepPCB folder (default ../shared/datasets/deeppcb)"),
    max_boards: int | None = typer.Option(None, help="pcb: only the first N validation boards (quick checks)"),
    skip_boards: int = typer.Option(
        0, help="pcb: leave out the first N validation boards (e.g. those a measurement calibration used)"
    ),
) -> None:
    """Precision / recall of the returned image set per instruction, against ground truth.

    battery_tab: a freshly generated test set and the seed's instruction (or --instruction). pcb: the DeepPCB
    validation boards plus their defect-free templates, and every pcb query of tests/data/queries.yaml (or
    --instruction), with figures per query family, pooled twice from the same analysis: with the findings'
    measurement uncertainty (the answer) and with the fixed margin only, each also with review images excluded and
    counted as returned. Every image is analysed once for all the instructions (one
    pass); the last lines give the share of instructions whose returned set is exactly right and the pass's time."""
    from agent.evaluation import (
        PcbQueryEvalReport,
        QueryEvalReport,
        evaluate_battery_tab,
        evaluate_pcb,
        pcb_queries,
    )
    from defect_agent.errors import EmptyInput
    from defect_agent.paths import shared_dataset

    report: PcbQueryEvalReport | QueryEvalReport
    t0 = time.perf_counter()
    if line == "pcb":
        root = deeppcb or shared_dataset("deeppcb")
        if root is None or not Path(root).is_dir():
            raise EmptyInput("DeepPCB not found: pass --deeppcb (the folder holding PCBData)")
        queries = [("given", q) for q in instruction] if instruction else pcb_queries()
        report = evaluate_pcb(Path(root), queries, use_kb=not no_kb, max_boards=max_boards, skip_boards=skip_boards)
        for fam in report.families:
            typer.echo(
                f"{fam.family:<11} {fam.queries:3d} queries  P mean {fam.precision_mean:.3f} min "
                f"{fam.precision_min:.3f} pooled {fam.precision_pooled:.3f}   R mean {fam.recall_mean:.3f} min "
                f"{fam.recall_min:.3f} pooled {fam.recall_pooled:.3f}   exact {_share(fam.exact_share)}"
            )
            for name, pooled in (("fixed margin", fam.fixed_margin), ("± measured", fam.with_uncertainty)):
                if pooled is not None:
                    typer.echo(f"{'':<11} {name:<12} {_pooled(pooled)}")
    elif line == "battery_tab":
        instructions = instruction or [SEED_INSTRUCTION_ZH, SEED_INSTRUCTION_EN]
        report = evaluate_battery_tab(instructions, n=n, seed=seed, out=out, use_kb=not no_kb)
    else:
        raise typer.BadParameter(f"no ground truth for line {line!r}: battery_tab (generated) or pcb (DeepPCB)")
    report.wall_s = round(time.perf_counter() - t0, 1)
    for row in report.rows:
        typer.echo(
            f"{row.precision:6.3f} P  {row.recall:6.3f} R  returned {row.returned:4d}  expected {row.expected:4d}"
            f"  review {row.review:3d}  {'exact' if row.exact else '     '}  {row.family:<9} {row.instruction}"
        )
    exact = sum(bool(r.exact) for r in report.rows)
    typer.echo(
        f"exact returned set: {exact} / {len(report.rows)} instructions ({_share(report.exact_share)}); one pass: "
        f"{report.images or 0} images analysed once in {report.analyse_s or 0.0:.1f} s, {len(report.rows)} "
        f"instructions decided in {report.decide_s or 0.0:.1f} s; wall {report.wall_s:.1f} s with model loading"
    )
    if as_json:
        as_json.parent.mkdir(parents=True, exist_ok=True)
        as_json.write_text(report.model_dump_json(indent=2), encoding="utf-8")
        typer.echo(f"written {as_json}")
    typer.echo(json.dumps(report.model_dump(exclude={"rows", "families"})))


def _pooled(f: PooledFigures) -> str:
    return (
        f"pooled P {f.precision:.3f} R {f.recall:.3f}  review {f.review:4d}  review excluded P "
        f"{f.precision_decided:.3f} R {f.recall_decided:.3f}  review as returned P {f.precision_flagged:.3f} "
        f"R {f.recall_flagged:.3f}"
    )


def _share(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


def register(app: typer.Typer, train: typer.Typer, eval: typer.Typer, data: typer.Typer) -> None:
    eval.command("queries")(eval_queries)
