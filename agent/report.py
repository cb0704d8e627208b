"""Writing verdicts: JSONL (one object per line, flushed per image so an interrupted run keeps what it did),
optional overlays, and the operator's summary table."""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import IO

from rich.console import Console
from rich.table import Table

from agent.images import read_image
from agent.overlay import write_overlay
from agent.verdict import Verdict


class VerdictWriter:
    def __init__(self, out: Path | None, overlays: Path | None = None) -> None:
        self.out = out
        self.overlays = overlays
        self.verdicts: list[Verdict] = []
        self._fh: IO[str] | None = None

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
            write_overlay(read_image(verdict.image), verdict, self.overlays)

    def __exit__(self, *exc: object) -> None:
        if self._fh is not None and self._fh is not sys.stdout:
            self._fh.close()


def summary_table(verdicts: list[Verdict]) -> str:
    table = Table(title=f"{len(verdicts)} images")
    for col in ("image", "verdict", "match", "score", "defects", "first reason"):
        table.add_column(col, overflow="fold")
    for v in verdicts:
        defects = (
            ", ".join(
                sorted(
                    {
                        d.defect_class
                        for d in v.defects
                        if d.probability >= 0.5 and (d.matched_clauses or d.source == "detector")
                    }
                )
            )
            or "-"
        )
        table.add_row(
            Path(v.image).name,
            v.verdict,
            "yes" if v.matches_query else "no",
            f"{v.score:.2f}",
            defects,
            (v.error or v.reasons[0])[:90] if (v.error or v.reasons) else "",
        )
    counts = {k: sum(v.verdict == k for v in verdicts) for k in ("fail", "review", "pass")}
    buf = io.StringIO()
    console = Console(file=buf, width=140, force_terminal=False)
    console.print(table)
    console.print(
        f"fail {counts['fail']}  review {counts['review']}  pass {counts['pass']}  "
        f"matching the instruction: {sum(v.matches_query for v in verdicts)}  unreadable: "
        f"{sum(bool(v.error) for v in verdicts)}"
    )
    return buf.getvalue()
