"""`defect-agent kb ...`: manage the knowledge base of past cases (add, import, search, show, edit, rm, restore,
rebuild, verify, gc, backup, restore-backup, export, stats, list). Every command takes --kb DIR (default: `kb_dir` of
configs/default.yaml).

Exit codes: 0 done; 1 `verify` found an inconsistency; 2 an error (printed without a traceback by agent.cli);
3 `import` skipped bad rows (the good ones were imported)."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from defect_agent.errors import DefectAgentError

if TYPE_CHECKING:
    from knowledge_base.kb import KnowledgeBase
    from retrieval.embedding import Embeds
    from retrieval.hits import SimilarCase

EXIT_INCONSISTENT = 1
EXIT_PARTIAL = 3

kb_app = typer.Typer(no_args_is_help=True, help="Knowledge base of past defect cases (SQLite + FAISS).")

KB_OPTION = typer.Option(None, "--kb", help="knowledge base folder (default: kb_dir in configs/default.yaml)")


def make_embedder() -> Embeds:
    """The configured embedder (vision.embedder.load_embedder); loaded only by commands that embed."""
    from defect_agent.config import load_app_config
    from defect_agent.runtime import configure_offline, set_threads

    configure_offline()
    app = load_app_config()
    try:
        from vision.embedder import load_embedder
    except ImportError as exc:
        raise DefectAgentError(f"the embedder (vision.embedder) is not available: {exc}") from exc
    set_threads(app.threads)
    return load_embedder(app.embedder)


def kb_path(kb: Path | None) -> Path:
    from defect_agent.config import load_app_config
    from defect_agent.paths import resolve

    return Path(kb) if kb is not None else resolve(load_app_config().kb_dir)


def open_kb(kb: Path | None, create: bool = False, lazy_embedder: bool = True) -> KnowledgeBase:
    import faiss

    from defect_agent.config import load_app_config
    from defect_agent.runtime import resolve_threads
    from knowledge_base.kb import KnowledgeBase
    from retrieval.policy import IndexPolicy

    app = load_app_config()
    # faiss only (runtime.set_threads would import torch, seconds for commands that never embed)
    faiss.omp_set_num_threads(resolve_threads(app.threads))
    return KnowledgeBase.open(
        kb_path(kb),
        policy=IndexPolicy.from_config(app.retrieval),
        create=create,
        embedder_factory=make_embedder if lazy_embedder else None,
    )


def _box(text: str | None):
    if text is None:
        return None
    from knowledge_base.importer import parse_box

    try:
        return parse_box(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--box") from exc


def _measurements(items: list[str] | None) -> dict[str, float]:
    out: dict[str, float] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        try:
            if not sep or not name.strip():
                raise ValueError
            out[name.strip()] = float(value)
        except ValueError as exc:
            raise typer.BadParameter(f"expected NAME=NUMBER, got {item!r}", param_hint="--measurement") from exc
    return out


def _date(text: str | None, option: str) -> datetime | None:
    if text is None:
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError as exc:
        raise typer.BadParameter(
            f"expected a date like 2025-03-01 or 2025-03-01T08:00, got {text!r}", param_hint=option
        ) from exc


def _echo_hits(hits: list[SimilarCase], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps([h.model_dump(mode="json") for h in hits], indent=2, ensure_ascii=False))
        return
    if not hits:
        typer.echo("no similar cases")
        return
    typer.echo(
        f"{'id':>6}  {'sim':>6}  {'score':>6}  {'line':<12} {'class':<12} {'disposition':<11} root cause / action"
    )
    for h in hits:
        score = "" if h.score is None else f"{h.score:.3f}"
        typer.echo(
            f"{h.case_id:>6}  {h.similarity:>6.3f}  {score:>6}  {h.line:<12} {h.defect_class:<12} "
            f"{h.disposition:<11} {h.root_cause or '-'} / {h.corrective_action or '-'}"
        )


def _echo_case(case, as_json: bool) -> None:
    if as_json:
        typer.echo(case.model_dump_json(indent=2))
        return
    box = "whole image" if case.box is None else ",".join(f"{v:g}" for v in case.box.as_list())
    typer.echo(f"case {case.id}  [{case.line} / {case.defect_class}]  {case.disposition.value}")
    for label, value in [
        ("image", case.image_path),
        ("box", box),
        ("report", case.report),
        ("root cause", case.root_cause),
        ("action", case.corrective_action),
        ("author", case.author),
        ("measurements", json.dumps(case.measurements)),
        ("created", case.created_at.isoformat()),
        ("updated", case.updated_at.isoformat()),
    ]:
        typer.echo(f"  {label:<13} {value}")


@kb_app.command("add")
def add_cmd(
    image: Path = typer.Argument(..., help="image of the defect (copied into the knowledge base)"),
    line: str = typer.Option(..., help="product line, e.g. battery_tab"),
    defect_class: str = typer.Option(..., "--class", help="defect class, e.g. spatter"),
    disposition: str = typer.Option(..., help="scrap | rework | accept"),
    report: str = typer.Option("", help="the engineer's description"),
    root_cause: str = typer.Option("", help="root cause found"),
    action: str = typer.Option("", help="corrective action taken"),
    author: str = typer.Option("", help="who reported it"),
    box: str | None = typer.Option(None, help="defect region x1,y1,x2,y2 in pixels (default: whole image)"),
    measurement: list[str] | None = typer.Option(None, help="NAME=VALUE, repeatable (e.g. offset_mm=0.42)"),
    created_at: str | None = typer.Option(None, help="when the case happened (ISO date; default now)"),
    kb: Path | None = KB_OPTION,
) -> None:
    """Add one case; its box region is embedded with the configured embedder. The class may be given by any zh / en
    synonym of the line's config and is stored under its name. Adding a case that is already present (same image,
    box, line and class) adds nothing and names the existing case (exit 0)."""
    from pydantic import ValidationError

    from knowledge_base.case import CaseInput
    from knowledge_base.validate import UnknownName, canonical_names, known_line

    if known_line(line) is None:
        # the same rule as `kb import`: a case of a line the agent does not know could never be retrieved right
        from defect_agent.config import available_lines

        raise DefectAgentError(
            f"unknown product line {line!r}; known: {', '.join(available_lines())} "
            f"(a line needs configs/lines/{line}.yaml)"
        )
    try:
        line, defect_class = canonical_names(line, defect_class)
    except UnknownName as exc:
        raise DefectAgentError(str(exc)) from exc
    try:
        item = CaseInput(
            line=line,
            defect_class=defect_class,
            image_path=str(image),
            box=_box(box),
            report=report,
            disposition=disposition,
            root_cause=root_cause,
            corrective_action=action,
            author=author,
            measurements=_measurements(measurement),
        )
    except ValidationError as exc:
        raise DefectAgentError(f"invalid case: {exc.errors()[0]['loc'][0]}: {exc.errors()[0]['msg']}") from exc
    with open_kb(kb, create=True) as base:
        case, added = base.add_unique(item, created_at=_date(created_at, "--created-at"))
    if added:
        typer.echo(f"added case {case.id} ({case.line}/{case.defect_class}, {case.disposition.value})")
    else:
        typer.echo(
            f"already present as case {case.id} ({case.line}/{case.defect_class}: same image, box, line and class); "
            f"nothing added (`defect-agent kb edit {case.id}` changes it)"
        )


@kb_app.command("import")
def import_cmd(
    source: Path = typer.Argument(..., help="CSV, JSONL, or a folder with cases.csv / cases.jsonl beside its images"),
    kb: Path | None = KB_OPTION,
    as_json: bool = typer.Option(False, "--json", help="print the import report as JSON"),
) -> None:
    """Import many cases; bad rows are listed with their line numbers and skipped, good rows go in together. Each
    row's line must have a config and its class be one of the line's defect classes (or a zh / en synonym); rows
    whose case is already present add nothing, so importing a file twice is harmless."""
    from knowledge_base.importer import import_cases, read_source

    read_source(source, check_names=True)  # an unreadable file (encoding, no header) fails before a KB is created
    with open_kb(kb, create=True) as base:
        report = import_cases(base, source, check_names=True)
    if as_json:
        typer.echo(report.model_dump_json(indent=2))
    else:
        line = f"imported {len(report.imported)} of {report.rows} rows from {report.source}"
        if report.already_present:
            ids = sorted({p.case_id for p in report.already_present})
            shown = ", ".join(map(str, ids[:10])) + (", ..." if len(ids) > 10 else "")
            line += f"; {len(report.already_present)} already present (cases {shown})"
        typer.echo(line)
        for err in report.errors:
            typer.echo(f"  line {err.row}: {err.message}", err=True)
    if report.errors:
        raise typer.Exit(EXIT_PARTIAL)


@kb_app.command("search")
def search_cmd(
    image: Path | None = typer.Option(None, help="query image"),
    box: str | None = typer.Option(None, help="region of the query image x1,y1,x2,y2"),
    text: str | None = typer.Option(None, help="query in words (hybrid: embedding + keywords)"),
    case: int | None = typer.Option(None, help="cases similar to this stored case"),
    k: int = typer.Option(5, "--k", "-k", min=1, help="how many cases"),
    line: str | None = typer.Option(None),
    defect_class: str | None = typer.Option(None, "--class"),
    disposition: str | None = typer.Option(None),
    since: str | None = typer.Option(None, help="created on or after (ISO date)"),
    until: str | None = typer.Option(None, help="created before (ISO date)"),
    keyword_weight: float | None = typer.Option(None, min=0.0, max=1.0, help="text search: 0 vectors .. 1 keywords"),
    as_json: bool = typer.Option(False, "--json"),
    kb: Path | None = KB_OPTION,
) -> None:
    """Find similar past cases by image, by text or by case id."""
    if sum(x is not None for x in (image, text, case)) != 1:
        raise typer.BadParameter("give exactly one of --image, --text, --case")
    filters = {
        "line": line,
        "defect_class": defect_class,
        "disposition": disposition,
        "since": _date(since, "--since"),
        "until": _date(until, "--until"),
    }
    with open_kb(kb) as base:
        if image is not None:
            hits = base.search_by_image(image, _box(box), k=k, **filters)
        elif case is not None:
            hits = base.search_by_case(case, k=k, **filters)
        else:
            assert text is not None  # exactly one of image / text / case was given
            if keyword_weight is None or keyword_weight < 1.0:
                try:
                    _ = base.embedder
                except DefectAgentError as exc:
                    typer.echo(f"note: embedder unavailable ({exc}); ranking by keywords only", err=True)
                    keyword_weight = 1.0
            hits = base.search_by_text(text, k=k, keyword_weight=keyword_weight, **filters)
    _echo_hits(hits, as_json)


@kb_app.command("show")
def show_cmd(
    case_id: int = typer.Argument(...),
    history: bool = typer.Option(False, "--history", help="also list every recorded change (kept after rm)"),
    as_json: bool = typer.Option(False, "--json"),
    kb: Path | None = KB_OPTION,
) -> None:
    """Show a case (and its history)."""
    from knowledge_base.kb import CaseNotFound

    with open_kb(kb, lazy_embedder=False) as base:
        entries = base.history(case_id) if history else []
        try:
            case = base.get(case_id)
        except CaseNotFound:
            if not entries:
                raise
            case = None
    if as_json:
        out: dict[str, Any] = {"case": None if case is None else case.model_dump(mode="json")}
        if history:
            out["history"] = [e.model_dump(mode="json") for e in entries]
        typer.echo(json.dumps(out, indent=2, ensure_ascii=False))
        return
    if case is None:
        typer.echo(f"case {case_id} was removed (restore it with `defect-agent kb restore {case_id}`)")
    else:
        _echo_case(case, False)
    for e in entries:
        detail = ""
        if e.op == "edit" and e.before and e.after:
            changed = [
                f
                for f in (
                    "line",
                    "defect_class",
                    "disposition",
                    "report",
                    "root_cause",
                    "corrective_action",
                    "author",
                    "box",
                    "image_sha256",
                    "measurements",
                )
                if getattr(e.before, f) != getattr(e.after, f)
            ]
            detail = f" ({', '.join(changed) or 'no field'} changed)"
        typer.echo(f"  #{e.seq} {e.at.isoformat()} {e.op}{detail} by {e.actor or '?'}")


@kb_app.command("edit")
def edit_cmd(
    case_id: int = typer.Argument(...),
    line: str | None = typer.Option(None),
    defect_class: str | None = typer.Option(None, "--class"),
    disposition: str | None = typer.Option(None),
    report: str | None = typer.Option(None),
    root_cause: str | None = typer.Option(None),
    action: str | None = typer.Option(None),
    author: str | None = typer.Option(None),
    box: str | None = typer.Option(None, help="x1,y1,x2,y2, or 'full' for the whole image (re-embeds)"),
    image: Path | None = typer.Option(None, help="replace the image (re-embeds)"),
    measurement: list[str] | None = typer.Option(None, help="NAME=VALUE, repeatable; replaces all measurements"),
    kb: Path | None = KB_OPTION,
) -> None:
    """Change fields of a case; the previous version stays in its history."""
    changes: dict[str, Any] = {
        "line": line,
        "defect_class": defect_class,
        "disposition": disposition,
        "report": report,
        "root_cause": root_cause,
        "corrective_action": action,
        "author": author,
        "image_path": None if image is None else str(image),
    }
    changes = {k: v for k, v in changes.items() if v is not None}
    if box is not None:
        changes["box"] = _box(box)
    if measurement:
        changes["measurements"] = _measurements(measurement)
    if not changes:
        raise typer.BadParameter("nothing to change: give at least one --field value")
    with open_kb(kb) as base:
        case = base.edit(case_id, **changes)
    typer.echo(f"edited case {case.id}: {', '.join(sorted(changes))}")


@kb_app.command("rm")
def rm_cmd(case_id: int = typer.Argument(...), kb: Path | None = KB_OPTION) -> None:
    """Remove a case from the knowledge base and from search at once (its history keeps it; see `restore`)."""
    with open_kb(kb, lazy_embedder=False) as base:
        case = base.remove(case_id)
    typer.echo(
        f"removed case {case.id} ({case.line}/{case.defect_class}); `defect-agent kb restore {case.id}` undoes it"
    )


@kb_app.command("restore")
def restore_cmd(
    case_id: int | None = typer.Argument(None, help="id of a removed case to bring back"),
    from_backup: Path | None = typer.Option(
        None, "--from-backup", help="replace the whole knowledge base by this backup (as `kb restore-backup`)"
    ),
    kb: Path | None = KB_OPTION,
) -> None:
    """Bring back a removed case under its old id, or (--from-backup DIR) the whole knowledge base from a backup."""
    if (case_id is None) == (from_backup is None):
        raise typer.BadParameter("give a case id, or --from-backup DIR")
    if from_backup is not None:
        _restore_backup(from_backup, kb)
        return
    assert case_id is not None  # checked above
    with open_kb(kb) as base:
        case = base.restore(case_id)
    typer.echo(f"restored case {case.id}")


def _restore_backup(src: Path, kb: Path | None) -> None:
    import os

    from defect_agent.config import load_app_config
    from knowledge_base.backup import restore_backup
    from retrieval.policy import IndexPolicy

    app = load_app_config()
    target = kb_path(kb)
    backup, report = restore_backup(
        target,
        src,
        policy=IndexPolicy.from_config(app.retrieval),
        embedder_factory=make_embedder,
        progress=bool(os.isatty(2)),
    )
    taken = f" taken {backup.manifest.created_at:%Y-%m-%d %H:%M} UTC" if backup.manifest else ""
    typer.echo(f"restored {target} from {backup.folder}{taken}: {report.cases} cases; index rebuilt")
    typer.echo(report.render())
    if not report.ok:
        raise typer.Exit(EXIT_INCONSISTENT)


@kb_app.command("restore-backup")
def restore_backup_cmd(
    src: Path = typer.Argument(..., help="backup folder made by `kb backup`"),
    kb: Path | None = KB_OPTION,
) -> None:
    """Replace the knowledge base (sound, damaged or missing) by a backup, after checking the backup is whole and
    sound; the index is rebuilt. A damaged database file is moved aside (kb.sqlite3.damaged-TIME), never deleted.
    Exit 1 if the restored base does not verify."""
    _restore_backup(src, kb)


@kb_app.command("backup")
def backup_cmd(
    dest: Path = typer.Argument(..., help="new (or empty) folder to write the backup into"),
    kb: Path | None = KB_OPTION,
) -> None:
    """Back up the knowledge base while it is in use: a consistent copy of its database (SQLite online backup) and
    of every image its cases and their history cite. Restore it with `defect-agent kb restore-backup DEST`."""
    from knowledge_base.backup import make_backup

    with open_kb(kb, lazy_embedder=False) as base:
        manifest = make_backup(base, dest)
    typer.echo(
        f"backed up {manifest.cases} cases ({manifest.history_entries} history entries) and {manifest.images} "
        f"images ({manifest.image_bytes + manifest.db_bytes} bytes) to {dest}"
    )


@kb_app.command("gc")
def gc_cmd(
    dry_run: bool = typer.Option(False, "--dry-run", help="list what would be removed, remove nothing"),
    grace: float = typer.Option(
        3600.0, "--grace", min=0.0, help="seconds: keep temp files younger than this (copies perhaps in progress)"
    ),
    as_json: bool = typer.Option(False, "--json"),
    kb: Path | None = KB_OPTION,
) -> None:
    """Remove image files that no case and no history entry cites (left by adds that were interrupted). A file any
    case, live or removed, still cites is never removed."""
    with open_kb(kb, lazy_embedder=False) as base:
        report = base.gc(dry_run=dry_run, temp_grace_s=grace)
    if as_json:
        typer.echo(report.model_dump_json(indent=2))
        return
    typer.echo(report.render())
    for rel in report.removed[:20] if dry_run else []:
        typer.echo(f"  {rel}")


@kb_app.command("rebuild")
def rebuild_cmd(
    reembed: bool = typer.Option(False, "--reembed", help="re-embed every case (after changing the embedder)"),
    kb: Path | None = KB_OPTION,
) -> None:
    """Rebuild the FAISS and keyword indexes from SQLite (repairs a missing or corrupt index)."""
    with open_kb(kb) as base:
        report = base.rebuild(reembed=reembed)
    typer.echo(report.render())
    if not report.ok:
        raise typer.Exit(EXIT_INCONSISTENT)


@kb_app.command("verify")
def verify_cmd(as_json: bool = typer.Option(False, "--json"), kb: Path | None = KB_OPTION) -> None:
    """Check that the index agrees with the database and the database file is sound; report images cited but
    missing and orphan image files (`kb gc` removes those). Exit 1 when something is inconsistent."""
    with open_kb(kb, lazy_embedder=False) as base:
        report = base.verify()
    typer.echo(report.model_dump_json(indent=2) if as_json else report.render())
    if not report.ok:
        raise typer.Exit(EXIT_INCONSISTENT)


@kb_app.command("export")
def export_cmd(
    out: Path = typer.Argument(..., help="JSONL file to write"),
    with_vectors: bool = typer.Option(False, "--with-vectors", help="include vectors (import without re-embedding)"),
    kb: Path | None = KB_OPTION,
) -> None:
    """Write every case as one JSON object per line."""
    with open_kb(kb, lazy_embedder=False) as base:
        n = base.export(out, include_vectors=with_vectors)
    typer.echo(f"exported {n} cases to {out}")


@kb_app.command("stats")
def stats_cmd(as_json: bool = typer.Option(False, "--json"), kb: Path | None = KB_OPTION) -> None:
    """Counts by line, class and disposition; index and storage sizes."""
    with open_kb(kb, lazy_embedder=False) as base:
        stats = base.stats()
    if as_json:
        typer.echo(stats.model_dump_json(indent=2))
        return
    typer.echo(
        f"cases {stats.cases} (removed, in history: {stats.removed_cases}); history entries {stats.history_entries}"
    )
    for label, counts in (("line", stats.by_line), ("class", stats.by_class), ("disposition", stats.by_disposition)):
        typer.echo(f"  by {label:<12} " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    typer.echo(
        f"  index {stats.index_kind} with {stats.index_count} vectors ({stats.index_file_bytes} bytes); "
        f"embedder {stats.model_version} dim {stats.dim}"
    )
    typer.echo(
        f"  images {stats.images} ({stats.image_bytes} bytes); database {stats.db_bytes} bytes; "
        f"schema v{stats.schema_version}"
    )


@kb_app.command("list")
def list_cmd(
    line: str | None = typer.Option(None),
    defect_class: str | None = typer.Option(None, "--class"),
    disposition: str | None = typer.Option(None),
    since: str | None = typer.Option(None, help="created on or after (ISO date)"),
    until: str | None = typer.Option(None, help="created before (ISO date)"),
    limit: int | None = typer.Option(None, min=1),
    as_json: bool = typer.Option(False, "--json"),
    kb: Path | None = KB_OPTION,
) -> None:
    """List cases (oldest first)."""
    with open_kb(kb, lazy_embedder=False) as base:
        cases = base.list(
            line=line,
            defect_class=defect_class,
            disposition=disposition,
            since=_date(since, "--since"),
            until=_date(until, "--until"),
            limit=limit,
        )
    if as_json:
        typer.echo(json.dumps([c.model_dump(mode="json") for c in cases], indent=2, ensure_ascii=False))
        return
    for c in cases:
        typer.echo(
            f"{c.id:>6}  {c.created_at.date()}  {c.line:<12} {c.defect_class:<12} {c.disposition.value:<7} "
            f"{(c.report or '')[:60]}"
        )
    typer.echo(f"{len(cases)} case(s)")


def register(app: typer.Typer, train: typer.Typer, eval: typer.Typer, data: typer.Typer) -> None:  # noqa: A002
    """Add `defect-agent kb ...` to the main app."""
    app.add_typer(kb_app, name="kb")
