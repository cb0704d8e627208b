"""`defect-agent eval queries`: the instruction's returned image set against the set implied by ground truth."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from agent.demo import SEED_INSTRUCTION_EN, SEED_INSTRUCTION_ZH


def eval_queries(
    line: str = typer.Option("battery_tab", help="product line"),
    instruction: Optional[list[str]] = typer.Option(None, "--instruction", "-i", help="instructions to evaluate (default: the seed's, zh + en)"),
    n: int = typer.Option(200, help="battery_tab: images to generate for the test set"),
    seed: int = typer.Option(4242, help="battery_tab: test-set seed (training used other seeds)"),
    out: Path = typer.Option(Path("var/eval/queries"), help="where the test set and verdicts go"),
    as_json: Optional[Path] = typer.Option(None, "--json", help="write the figures as JSON here"),
    no_kb: bool = typer.Option(False, help="skip retrieval"),
) -> None:
    """Precision / recall of the returned image set per instruction, against ground truth."""
    from agent.evaluation import evaluate_battery_tab

    if line != "battery_tab":
        raise typer.BadParameter("query evaluation on generated ground truth is for battery_tab; pcb: see README")
    instructions = instruction or [SEED_INSTRUCTION_ZH, SEED_INSTRUCTION_EN]
    report = evaluate_battery_tab(instructions, n=n, seed=seed, out=out, use_kb=not no_kb)
    for row in report.rows:
        typer.echo(f"{row.precision:6.3f} P  {row.recall:6.3f} R  returned {row.returned:4d}  expected {row.expected:4d}"
                   f"  review {row.review:3d}  {row.instruction}")
    if as_json:
        as_json.parent.mkdir(parents=True, exist_ok=True)
        as_json.write_text(report.model_dump_json(indent=2), encoding="utf-8")
        typer.echo(f"written {as_json}")
    typer.echo(json.dumps({"images": report.images, "seed": report.seed}))


def register(app: typer.Typer, train: typer.Typer, eval: typer.Typer, data: typer.Typer) -> None:
    eval.command("queries")(eval_queries)
