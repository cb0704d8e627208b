"""Writing verdicts: JSONL (one object per line, flushed per image so an interrupted run keeps what it did),
optional overlays, and the operator's summary table."""

from __future__ import annotations

import io
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import numpy as np
from rich.console import Console
from rich.table import Table
from rich.text import Text

from agent.images import read_image
from agent.messages import class_label, measurements_text, pick_lang, say
from agent.overlay import write_overlay
from agent.verdict import Verdict
from defect_agent.errors import DefectAgentError


class VerdictWriter:
    """Writes verdicts as JSONL (flushed per image) and, optionally, an overlay image per verdict."""

    def __init__(
        self,
        out: Path | None,
        overlays: Path | None = None,
        lang: str | None = None,
        instructions: Sequence[str] = (),
    ) -> None:
        """`instructions`: the run's instructions when there are several, so that each (image, instruction) gets
        its own overlay, `<stem>_q<n>_overlay.png` (n: the instruction's place, from 1)."""
        self.out = out
        self.overlays = overlays
        self.lang = lang
        self.verdicts: list[Verdict] = []
        self._fh: IO[str] | None = None
        self._tags = {text: f"q{i}" for i, text in enumerate(instructions, 1)} if len(instructions) > 1 else {}
        self._image: tuple[str, np.ndarray] | None = None  # the last image read: a group's overlays read it once

    @property
    def errors(self) -> list[Verdict]:
        return [v for v in self.verdicts if v.error]

    def __enter__(self) -> VerdictWriter:
        if self.out is not None:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self._fh = self.out.open("w", encoding="utf-8")
        else:
            self._fh = sys.stdout
        return self

    def write(self, verdict: Verdict) -> None:
        assert self._fh is not None
        self._fh.write(verdict.model_dump_json() + "\n")
        self._fh.flush()
        self.verdicts.append(verdict)
        if self.overlays is not None and not verdict.error:
            if self._image is None or self._image[0] != verdict.image:
                self._image = (verdict.image, read_image(verdict.image))
            tag = self._tags.get(verdict.query.instruction) if verdict.query is not None else None
            write_overlay(self._image[1], verdict, self.overlays, lang=self.lang, tag=tag)

    def __exit__(self, *exc: object) -> None:
        if self._fh is not None and self._fh is not sys.stdout:
            self._fh.close()


def _lang_of(verdicts: list[Verdict], lang: str | None) -> str:
    if lang:
        return pick_lang(lang)
    query = next((v.query for v in verdicts if v.query is not None), None)
    return pick_lang(query.language if query else None)


def deciding_clause(verdict: Verdict, lang: str) -> str:
    """The clause that decided `matches_query`, as the operator wrote it, with the measurement of the finding
    that met it (e.g. `c1 极耳焊接偏移超0.3mm: 偏移 0.37 mm`)."""
    query = verdict.query
    if query is None or not verdict.clauses:
        return ""
    truth = {c.id: c.satisfied for c in verdict.clauses}
    cid = query.logic.deciding(truth)
    clause = next((c for c in verdict.clauses if c.id == cid), None)
    if clause is None:
        return ""
    found = [d for d in verdict.defects if cid in d.matched_clauses]
    shown = ""
    if found:
        best = max(found, key=lambda d: d.probability)
        shown = measurements_text(best.measurements, best.uncertainty, lang)
    state = say("met" if clause.satisfied else "not_met", lang)
    return f"{clause.id} {clause.text} ({state})" + (f": {shown}" if shown else "")


def defect_names(verdict: Verdict, lang: str) -> str:
    """Classes of the findings that count (real, and asked for or detected), in the line's words."""
    from defect_agent.config import load_line

    try:
        line = load_line(verdict.line)
    except DefectAgentError:
        line = None
    names = {
        class_label(d.defect_class, line, lang)
        for d in verdict.defects
        if d.probability >= 0.5 and (d.matched_clauses or d.source == "detector" or d.verdict != "pass")
    }
    return ", ".join(sorted(names)) or "-"


def summary_table(verdicts: list[Verdict], lang: str | None = None) -> str:
    """The operator's table: per image the part's verdict with its first reason, the instruction's answer with the
    clause that decided it, and the defects in the line's words; counts below. Plain text, never markup. Verdicts of
    several instructions (`inspect --also`) get one row per (image, instruction), grouped per image, and a legend
    of the instructions."""
    lang = _lang_of(verdicts, lang)
    tags = _instruction_tags(verdicts)
    if len(tags) > 1:
        return _summary_table_many(verdicts, tags, lang)
    table = Table(title=say("table_title", lang, n=len(verdicts)))
    for key in ("col_image", "col_verdict", "col_why", "col_match", "col_clause", "col_defects"):
        table.add_column(say(key, lang), overflow="fold")
    for v in verdicts:
        table.add_row(Text(Path(v.image).name), *_part_cells(v, lang), *_answer_cells(v, lang))
    counts = {k: sum(v.verdict == k for v in verdicts) for k in ("fail", "review", "pass")}
    return _render(
        table,
        say(
            "table_counts",
            lang,
            fail=counts["fail"],
            review=counts["review"],
            ok=counts["pass"],
            matching=sum(v.matches_query for v in verdicts),
            unreadable=sum(bool(v.error) for v in verdicts),
        ),
    )


def _instruction_tags(verdicts: list[Verdict]) -> dict[str, str]:
    """`q1`, `q2`, ... for the distinct instructions, in the order they first appear."""
    texts = dict.fromkeys(v.query.instruction for v in verdicts if v.query is not None)
    return {text: f"q{i}" for i, text in enumerate(texts, 1)}


def _part_cells(v: Verdict, lang: str) -> list[Text]:
    why = v.error or (v.verdict_reasons[0] if v.verdict_reasons else "")
    return [Text(say(f"verdict_{v.verdict}", lang)), Text(why[:120])]


def _answer_cells(v: Verdict, lang: str) -> list[Text]:
    match = say("match_yes" if v.matches_query else "match_no", lang) + ("?" if v.match_uncertain else "")
    return [Text(f"{match} {v.score:.2f}"), Text(deciding_clause(v, lang)[:120]), Text(defect_names(v, lang))]


def _summary_table_many(verdicts: list[Verdict], tags: dict[str, str], lang: str) -> str:
    # consecutive verdicts of one image form its group; the part's verdict does not depend on the instruction,
    # so it is shown once per group
    groups: list[list[Verdict]] = []
    for v in verdicts:
        if groups and groups[-1][0].image == v.image:
            groups[-1].append(v)
        else:
            groups.append([v])
    table = Table(title=say("table_title_many", lang, n=len(groups), m=len(tags)))
    for key in ("col_image", "col_verdict", "col_why", "col_query", "col_match", "col_clause", "col_defects"):
        table.add_column(say(key, lang), overflow="fold")
    for group in groups:
        for i, v in enumerate(group):
            first = i == 0
            table.add_row(
                Text(Path(v.image).name if first else ""),
                *(_part_cells(v, lang) if first else [Text(""), Text("")]),
                Text(tags.get(v.query.instruction, "") if v.query is not None else ""),
                *_answer_cells(v, lang),
                end_section=i == len(group) - 1,
            )
    firsts = [g[0] for g in groups]
    counts = {k: sum(v.verdict == k for v in firsts) for k in ("fail", "review", "pass")}
    matching = {tag: 0 for tag in tags.values()}
    for v in verdicts:
        if v.query is not None and v.matches_query:
            matching[tags[v.query.instruction]] += 1
    counts_line = say(
        "table_counts_many",
        lang,
        fail=counts["fail"],
        review=counts["review"],
        ok=counts["pass"],
        unreadable=sum(bool(v.error) for v in firsts),
        matching=", ".join(f"{tag} {n}" for tag, n in matching.items()),
    )
    legend = "\n".join(f"{tag}  {text}" for text, tag in tags.items())
    return _render(table, counts_line, legend)


def _render(table: Table, *lines: str) -> str:
    buf = io.StringIO()
    console = Console(file=buf, width=160, force_terminal=False)
    console.print(table)
    for line in lines:
        console.print(Text(line))
    return buf.getvalue()
