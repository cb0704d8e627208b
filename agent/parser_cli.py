"""`defect-agent parse`: show how an instruction is read, without running any model."""

from __future__ import annotations

import typer

_HELP = """Parse an instruction (Chinese or English) into the structured query; no model runs.

\b
Phrasing (the words come from configs/lexicon.yaml and the line's class synonyms):
  defects      "weld spatter", "cracks", 焊渣飞溅, 裂纹; "defects" / 缺陷 = any class
  counts       "at least two cracks", "3 or more spatter", 两处以上裂纹, 超过3处焊渣
  sizes        "a short longer than 2 mm", "offset more than 0.3 mm", "area ≥ 1 mm²", 长度超过50像素,
               偏移超0.3mm, "between 0.3 and 0.5 mm"; units mm, µm, px, mm², % (px use the line's calibration)
  confidence   "cracks with confidence above 0.9"; on its own (", confidence at least 0.8") it filters all findings
  logic        and / or / not / "but no" / without; 且 / 或 / 没有 / 但没有; AND binds tighter than OR
  scope        today's / 今天的, "in folder line2", "lot L123" / 批次L123, "show the 5 most similar cases"
A number after a bare list ("cracks or burns longer than 1 mm") is ambiguous and rejected: repeat it, or write
"cracks or a burn longer than 1 mm". A number without unit where a size or a count could be meant is rejected too."""


def register(app: typer.Typer, train: typer.Typer, eval: typer.Typer, data: typer.Typer) -> None:  # noqa: A002
    @app.command("parse", help=_HELP)
    def parse(
        instruction: str = typer.Argument(..., help='e.g. "找出所有极耳焊接偏移超0.3mm且伴随焊渣飞溅的电芯"'),
        line: str | None = typer.Option(
            None, help="product line (default: from the instruction's words, else the config's default_line)"
        ),
        as_json: bool = typer.Option(False, "--json", help="print the InspectionQuery as JSON"),
    ) -> None:
        from agent.clauses import clause_label
        from agent.parser import describe_query, format_logic, parse_instruction

        query = parse_instruction(instruction, line=line)
        if as_json:
            typer.echo(query.model_dump_json(indent=2))
            return
        typer.echo(f"line: {query.line}   language: {query.language}")
        for cond in query.conditions:
            typer.echo(
                f"  {cond.id}: {clause_label(cond)}"
                + (f"   (region {cond.region})" if cond.region else "")
                + f'   <- "{cond.text}"'
            )
        typer.echo(f"logic: {format_logic(query.logic)}")
        extras = {
            k: v
            for k, v in {
                "min_confidence": query.min_confidence,
                **query.scope.model_dump(exclude_none=True),
                "similar_cases": query.want.similar_cases,
                "overlays": query.want.overlays or None,
            }.items()
            if v is not None
        }
        if extras:
            typer.echo(f"options: {extras}")
        typer.echo(describe_query(query))

    @eval.command("parser")
    def eval_parser(
        queries: str | None = typer.Option(None, help="query set YAML (default: tests/data/queries.yaml)"),
        as_json: bool = typer.Option(False, "--json", help="print the per-case results as JSON"),
    ) -> None:
        """Accuracy of the instruction parser on the hand-written query set (exact parse, or the expected error).
        Exit 1 when any case fails."""
        import json

        from agent.parser.queryset import evaluate_queryset

        report = evaluate_queryset(queries)
        if as_json:
            typer.echo(
                json.dumps(
                    {
                        "accuracy": report.accuracy,
                        "passed": report.passed,
                        "total": report.total,
                        "by_family": report.by_family(),
                        "failures": [{"q": f.text, "problems": f.problems} for f in report.failures()],
                    },
                    ensure_ascii=False,
                    indent=2,
                )
            )
        else:
            for f in report.failures():
                typer.echo(f"FAIL {f.text!r}: {'; '.join(f.problems)}")
            typer.echo(report.summary())
        raise typer.Exit(0 if not report.failures() else 1)
