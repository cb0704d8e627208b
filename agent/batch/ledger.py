"""The batch's results file is its own ledger: one JSON line per (image, instruction), appended and flushed as each
is decided, keyed by image content + model versions + instruction. A rerun reads the keys back, cuts a line torn by
a kill, and skips what is done: killed at any point, nothing is lost and nothing is written twice."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from pydantic import BaseModel, Field

from agent.verdict import Verdict

log = logging.getLogger(__name__)


class BatchRecord(BaseModel):
    """One line of a batch's `verdicts.jsonl`: the verdict of one image under one standing instruction."""

    key: str = Field(description="sha256 of image content + model versions + instruction + line + language.")
    run_id: str = Field(description="The run that wrote this line.")
    instruction_id: str = Field(description="The profile's id of the instruction.")
    image_sha256: str | None = Field(description="Content hash of the image; null when it could not be read.")
    verdict: Verdict = Field(description="The verdict (schema 2.0).")


def result_key(
    image_sha256: str | None, image: str, models_key: str, instruction: str, line: str, lang: str | None
) -> str:
    """The identity of a result: the same bytes judged by the same models under the same instruction."""
    content = image_sha256 or f"unreadable:{image}"
    return hashlib.sha256("\x1f".join([content, models_key, line, lang or "", instruction]).encode()).hexdigest()


class ResultLog:
    """Append-only JSONL of BatchRecords that doubles as the record of what is done."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh: IO[str] | None = None

    def recover(self) -> set[str]:
        """The keys already written; a last line torn by a kill is cut off first."""
        if not self.path.exists():
            return set()
        with self.path.open("rb+") as fh:
            data = fh.read()
            end = data.rfind(b"\n") + 1
            if end < len(data):
                log.warning("%s: cutting a line torn by an interrupted run (%d bytes)", self.path, len(data) - end)
                fh.truncate(end)
        keys: set[str] = set()
        for n, line in enumerate(data[:end].splitlines(), 1):
            try:
                keys.add(json.loads(line)["key"])
            except (json.JSONDecodeError, KeyError, TypeError):
                log.warning("%s:%d: unreadable line skipped (its image will be inspected again)", self.path, n)
        return keys

    def __enter__(self) -> ResultLog:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = self.path.open("a", encoding="utf-8")
        return self

    def append(self, record: BatchRecord) -> None:
        self.append_json(record.model_dump_json())

    def append_json(self, line: str) -> None:
        """A record already serialised by `BatchRecord.model_dump_json` (e.g. by a Ray actor)."""
        assert self._fh is not None
        # one write per line, flushed: a SIGKILL leaves whole lines plus at most one torn tail
        self._fh.write(line + "\n")
        self._fh.flush()

    def __exit__(self, *exc: object) -> None:
        if self._fh is not None:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            self._fh = None


def read_records(path: Path) -> Iterator[BatchRecord]:
    """Stream the records of a results file (whole lines only)."""
    if not path.exists():
        return
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if line.endswith("\n"):
                try:
                    yield BatchRecord.model_validate_json(line)
                except ValueError:
                    continue


RUN_FIELDS = frozenset({"run_id", "timings_ms"})  # differ between two runs over the same images by design


def comparable(record: Any, digits: int | None = 3) -> Any:
    """A record (parsed JSON) as two runs over the same images must agree on it: without the run's own fields, floats
    rounded to `digits` (None: kept), since thread counts and batch compositions move float sums in their last bits
    (an anomaly score 36.50031 vs 36.5003). For comparing engines, thread settings or a rerun."""
    if isinstance(record, dict):
        return {k: comparable(v, digits) for k, v in record.items() if k not in RUN_FIELDS}
    if isinstance(record, list):
        return [comparable(v, digits) for v in record]
    return round(record, digits) if isinstance(record, float) and digits is not None else record
