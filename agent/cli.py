"""`defect-agent` command line. Each area registers its own commands (see REGISTRARS); this module holds the
operator-facing ones: inspect, explain, schema, demo, eval queries."""

from __future__ import annotations

import importlib
import json
import logging
import sys
from pathlib import Path

import typer

from defect_agent.errors import DefectAgentError, EmptyInput

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Multimodal defect-inspection agent: instruction + images -> JSON verdicts.",
)
train_app = typer.Typer(no_args_is_help=True, help="Train models (locator, adapter, embedder).")
eval_app = typer.Typer(no_args_is_help=True, help="Measure models and the agent on held-out data.")
data_app = typer.Typer(no_args_is_help=True, help="Generate or convert datasets.")
schema_app = typer.Typer(no_args_is_help=True, help="Print the JSON Schema of a data contract.")
app.add_typer(train_app, name="train")
app.add_typer(eval_app, name="eval")
app.add_typer(data_app, name="data")
app.add_typer(schema_app, name="schema")

# modules exposing register(app, train, eval, data)
REGISTRARS = [
    "agent.parser_cli",
    "vision.datasets.synth.cli",
    "vision.locator.cli",
    "vision.locator.adapter_cli",
    "vision.verifier.cli",
    "vision.embedder.cli",
    "agent.calibration_cli",
    "agent.export_cli",
    "agent.line_cli",
    "knowledge_base.cli",
]

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_PARTIAL = 0, 1, 2, 3


@app.callback()
def _root(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress to stderr.")) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


@schema_app.command("verdict")
def schema_verdict() -> None:
    """JSON Schema of the per-image verdict (one JSONL line each)."""
    from agent.verdict import verdict_json_schema

    typer.echo(json.dumps(verdict_json_schema(), indent=2, ensure_ascii=False))


@schema_app.command("query")
def schema_query() -> None:
    """JSON Schema of the parsed instruction (InspectionQuery)."""
    from agent.query import InspectionQuery

    typer.echo(json.dumps(InspectionQuery.model_json_schema(), indent=2, ensure_ascii=False))


@schema_app.command("case")
def schema_case() -> None:
    """JSON Schema of a knowledge-base case."""
    from knowledge_base.case import Case

    typer.echo(json.dumps(Case.model_json_schema(), indent=2, ensure_ascii=False))


@app.command()
def inspect(
    instruction: str = typer.Argument(
        ..., help='e.g. "find all cells whose tab weld is offset more than 0.3 mm and shows weld spatter"'
    ),
    images: list[str] = typer.Argument(..., help="image files, folders or glob patterns"),
    also: list[str] | None = typer.Option(
        None,
        "--also",
        help="another instruction over the same images, in the same pass (repeatable; same product line)",
        show_default=False,
    ),
    line: str | None = typer.Option(
        None, help="product line (default: from the instruction's words, else the config default)"
    ),
    out: Path | None = typer.Option(None, help="write verdicts as JSONL here (default: stdout)"),
    overlays: Path | None = typer.Option(None, help="write annotated images into this folder"),
    kb: Path | None = typer.Option(None, help="knowledge base folder (default: configs/default.yaml kb_dir)"),
    k: int | None = typer.Option(None, help="similar past cases per defect"),
    no_kb: bool = typer.Option(False, "--no-kb", help="skip retrieval of similar cases"),
    lang: str | None = typer.Option(
        None, help="language of reasons, table and overlays: zh | en (default: the instruction's)"
    ),
) -> None:
    """Run an instruction over images; one JSON verdict per image. With --also, every instruction over the same
    images in one pass: each image is analysed once and decided under each instruction, one verdict line per
    (image, instruction), grouped per image (each line carries its `query`).

    Exit codes: 0 every image inspected; 2 a bad instruction, option, config or missing model (instructions about
    different product lines included); 3 some images could not be read (their lines carry `error`)."""
    from agent.images import collect_images
    from agent.many import inspect_many, parse_instructions
    from agent.pipeline import Inspector
    from agent.report import VerdictWriter, summary_table

    queries = parse_instructions(list(dict.fromkeys([instruction, *(also or [])])), line=line)  # each once
    paths = collect_images(images, keep_missing=True)  # a missing path gets its own verdict line, not an abort
    inspector = Inspector.from_config(line=queries[0].line, kb_dir=kb, use_kb=not no_kb, single_line=True)
    instructions = [q.instruction for q in queries]
    with VerdictWriter(out, overlays=overlays, lang=lang, instructions=instructions) as writer:
        for verdict in inspect_many(inspector, queries, paths, k=k, lang=lang):
            writer.write(verdict)
    typer.echo(summary_table(writer.verdicts, lang=lang), err=out is None)
    raise typer.Exit(EXIT_PARTIAL if writer.errors else EXIT_OK)


@app.command()
def explain(
    instruction: str = typer.Argument(...),
    line: str | None = typer.Option(None),
    as_json: bool = typer.Option(False, "--json", help="print the plan as JSON"),
) -> None:
    """Show the parsed query and the tool plan without running any model."""
    from agent.plan import build_plan

    plan = build_plan(instruction, line=line)
    typer.echo(plan.model_dump_json(indent=2) if as_json else plan.render())


@app.command()
def demo(
    n: int = typer.Option(24, help="images to generate"),
    seed: int = typer.Option(2026, help="generator seed of the demo batch"),
    out: Path = typer.Option(Path("var/demo"), help="output folder"),
    kb: Path | None = typer.Option(
        None, help="knowledge base to fill with the sample cases when empty (default: kb_dir)"
    ),
) -> None:
    """Generate a battery_tab batch, build the sample knowledge base, run the seed instruction, write JSONL + overlays."""
    from agent.demo import run_demo

    result = run_demo(n=n, seed=seed, out=out, kb_dir=kb)
    typer.echo(result.table)
    typer.echo(f"\nverdicts: {result.verdicts_path}\noverlays: {result.overlays_dir}\n{result.accuracy_line}")


@app.command()
def shell(
    images: list[str] | None = typer.Argument(None, help="images to start with"),
    line: str | None = typer.Option(None),
    kb: Path | None = typer.Option(None, help="knowledge base folder (default: kb_dir in configs/default.yaml)"),
) -> None:
    """Interactive shell: instructions, follow-up questions, tab completion of defect terms, history."""
    from agent.images import collect_images
    from agent.shell import InspectionShell

    InspectionShell(line=line, images=collect_images(images) if images else None, kb_dir=kb).cmdloop()


@app.command()
def batch(
    inputs: list[str] = typer.Argument(..., help="image folders, glob patterns or manifests (.txt / .csv / .jsonl)"),
    profile: Path = typer.Option(
        ..., help="the line's standing instructions, e.g. configs/profiles/battery_tab_nightly.yaml"
    ),
    out: Path = typer.Option(..., help="output folder: verdicts.jsonl, verdicts.csv, report.html, runs/"),
    line: str | None = typer.Option(None, help="must match the profile's line when given"),
    kb: Path | None = typer.Option(None, help="knowledge base folder (default: kb_dir)"),
    no_kb: bool = typer.Option(False, "--no-kb", help="skip retrieval of similar cases"),
    watch: bool = typer.Option(False, help="keep following the inputs for new images (stop with Ctrl-C / SIGTERM)"),
    interval: float = typer.Option(10.0, min=0.5, help="--watch: seconds between looks at the inputs"),
    batch_size: int = typer.Option(4, min=1, max=64, help="images per model call"),
    threads: str | None = typer.Option(
        None, help="intra-op threads: N, or auto (measure 1 vs every core while running); default: config's threads"
    ),
    engine: str = typer.Option(
        "local", help="local (this process) or ray (Ray Data over an actor pool; RAY_ADDRESS names a cluster)"
    ),
    workers: int = typer.Option(2, min=1, help="--engine ray: actors, each with its own copy of the models"),
) -> None:
    """Scheduled batch inspection: every standing instruction of a profile over every image, resumable (rerun with
    the same arguments and it skips what is done, keyed by image content + model versions + instruction).

    Exit codes: 0 no part failed; 1 a part failed the line's rules; 2 error (bad profile, instruction, option,
    missing model); 3 some images could not be read (and none failed)."""
    import signal
    import time

    from agent.batch import load_profile, run_batch
    from agent.batch.report import write_reports
    from agent.batch.threads import tuner_for
    from agent.pipeline import Inspector
    from defect_agent.config import load_app_config

    logging.getLogger("agent.batch").setLevel(logging.INFO)  # progress lines under cron, without --verbose
    prof = load_profile(profile)
    if line is not None and line != prof.line:
        raise typer.BadParameter(f"--line {line} differs from the profile's line {prof.line}")
    if engine not in {"local", "ray"}:
        raise typer.BadParameter(f"--engine must be local or ray, got {engine!r}")
    setting = _threads_setting(threads) if threads is not None else None
    app = load_app_config()
    if setting is not None:
        app = app.model_copy(update={"threads": setting})
    if engine == "ray":
        from agent.batch.ray_engine import run_batch_ray

        if watch:
            raise typer.BadParameter("--watch runs on the local engine only")
        summary = run_batch_ray(
            prof, inputs, out, kb_dir=kb, use_kb=not no_kb, batch_size=batch_size, workers=workers, threads=setting
        )
        inspector = tuner = None
    else:
        inspector = Inspector.from_config(line=prof.line, kb_dir=kb, use_kb=not no_kb, app=app, single_line=True)
        tuner = tuner_for(app.threads, app.engine) if threads is not None else None
        summary = run_batch(prof, inputs, out, inspector=inspector, batch_size=batch_size, threads=tuner)
    stop = {"now": summary.stopped_early}
    if watch and not stop["now"]:
        signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
        try:
            while not stop["now"]:
                time.sleep(interval)
                try:
                    summary = run_batch(prof, inputs, out, inspector=inspector, batch_size=batch_size, threads=tuner)
                except EmptyInput:
                    continue
                stop["now"] = stop["now"] or summary.stopped_early
        except KeyboardInterrupt:
            pass
    totals = write_reports(out, prof)
    v = totals.verdicts
    typer.echo(
        f"{totals.images} images: fail {v['fail']}  review {v['review']}  pass {v['pass']}  unreadable "
        f"{totals.unreadable}; this run inspected {summary.inspected}, skipped {summary.skipped} already done "
        f"({summary.seconds:.1f} s); report: {out / 'report.html'}",
        err=True,
    )
    raise typer.Exit(totals.exit_code)


def _threads_setting(value: str) -> int | str:
    if value == "auto":
        return value
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise typer.BadParameter(f"--threads must be a positive integer or auto, got {value!r}")
    return n


@app.command()
def serve(
    host: str | None = typer.Option(None, help="address to listen on (default: server.host, 127.0.0.1)"),
    port: int | None = typer.Option(None, help="port (default: server.port, 8000)"),
    capture_root: Path | None = typer.Option(None, help="folder POST /inspect may read `paths` from"),
    kb: Path | None = typer.Option(None, help="knowledge base folder (default: kb_dir)"),
    token: str | None = typer.Option(
        None, help="API token (default: $DEFECT_AGENT_TOKEN); required beyond 127.0.0.1", show_default=False
    ),
) -> None:
    """The station's web page and HTTP API (FastAPI). Localhost by default; any other address needs a token."""
    import os

    import uvicorn

    from agent.server import check_bind, create_app
    from defect_agent.config import load_app_config

    cfg = load_app_config()
    host = host or cfg.server.host
    token = token or os.environ.get(cfg.server.token_env) or None
    check_bind(host, token)
    api = create_app(cfg, kb_dir=kb, capture_root=capture_root, token=token)
    typer.echo(f"defect-agent station on http://{host}:{port or cfg.server.port}/ (API docs at /docs)", err=True)
    uvicorn.run(api, host=host, port=port or cfg.server.port, log_level="warning")


def _register_all() -> None:
    for name in REGISTRARS:
        module = importlib.import_module(name)
        module.register(app, train_app, eval_app, data_app)


_register_all()
importlib.import_module("agent.eval_cli").register(app, train_app, eval_app, data_app)


def main() -> None:
    """The console entry point: a user's problem is one line on stderr and exit 2, never a traceback without -v."""
    verbose = any(arg in ("-v", "--verbose") for arg in sys.argv[1:])
    try:
        app()
    except DefectAgentError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:  # a fault of ours, or of the environment: say it in one line unless -v asks for more
        if verbose:
            raise
        typer.echo(
            f"error: {type(exc).__name__}: {exc} (run `defect-agent -v ...` for the traceback, and report it)", err=True
        )
        sys.exit(EXIT_USAGE)
