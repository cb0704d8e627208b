"""Running a profile over images: each image is read and hashed ahead of inference (a prefetch thread: decoding
releases the GIL), analysed once, decided per standing instruction, and appended to the results file; what is
already there under the same key is skipped. Progress is a bar on a terminal and log lines otherwise."""

from __future__ import annotations

import hashlib
import logging
import signal
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from agent.batch.inputs import expand_inputs
from agent.batch.ledger import BatchRecord, ResultLog, result_key
from agent.batch.profile import BatchProfile
from agent.batch.threads import ThreadTuner, tuner_for
from defect_agent.errors import ConfigError, DefectAgentError

log = logging.getLogger(__name__)
PREFETCH = 8  # images read and decoded ahead of the batch being analysed
BATCH_SIZE = 4  # images per model call


class BatchSummary(BaseModel):
    """What one run did (also written to `runs/<run_id>.json` in the output folder for the report's trend)."""

    run_id: str
    profile: str
    line: str
    started: datetime
    seconds: float
    images: int = Field(description="Images the inputs named.")
    inspected: int = Field(description="Images analysed in this run.")
    skipped: int = Field(description="Images whose every result was already in the results file.")
    unreadable: int = Field(description="Images that could not be read (their lines carry `error`).")
    verdicts: dict[str, int] = Field(description="Part verdicts of the images analysed in this run.")
    stopped_early: bool = Field(False, description="A SIGTERM / SIGINT ended the run before all images were done.")
    threads: dict[str, float] = Field(
        default_factory=dict, description="Under threads: auto, the measured ms per image per thread count."
    )

    @property
    def exit_code(self) -> int:
        """0 every part passed or went to review, 1 a part failed, 3 some images could not be read."""
        if self.verdicts.get("fail", 0):
            return 1
        return 3 if self.unreadable else 0


def models_key(versions: Any) -> str:
    """Identity of the models behind a verdict (the knowledge base's snapshot excluded: cases change daily)."""
    data = versions.model_dump(exclude={"kb_snapshot"})
    return hashlib.sha256(repr(sorted(data.items())).encode()).hexdigest()[:16]


def load_item(path: str, expected_size: tuple[int, int] | None) -> tuple[str | None, np.ndarray | None, str | None]:
    """(content sha256, decoded image, error) for one path; never raises on a bad item."""
    from agent.images import read_image

    digest: str | None = None
    try:
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest() if Path(path).is_file() else None
        return digest, read_image(path, expected_size), None
    except (DefectAgentError, OSError) as exc:
        return digest, None, str(exc)


class StopOnSignal:
    """SIGTERM / SIGINT end the run after the batch in progress; the results file stays whole."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        log.warning("signal %d: stopping after the batch in progress", signum)
        self.requested = True

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _prefetched(paths: Sequence[str], size: tuple[int, int] | None) -> Iterator[tuple[str, tuple[Any, ...]]]:
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch") as pool:
        pending: list[tuple[str, Future[Any]]] = []
        it = iter(paths)
        for path in it:
            pending.append((path, pool.submit(load_item, path, size)))
            if len(pending) >= PREFETCH:
                break
        while pending:
            path, fut = pending.pop(0)
            nxt = next(it, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(load_item, nxt, size)))
            yield path, fut.result()


class Progress:
    """A tqdm bar (images/s, ETA) on a terminal; a structured log line every 10 s otherwise."""

    def __init__(self, total: int, name: str) -> None:
        self.total, self.done, self.t0, self.last = total, 0, time.monotonic(), 0.0
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=name, unit="img")

    def update(self, verdicts: dict[str, int]) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
            return
        now = time.monotonic()
        if now - self.last >= 10 or self.done == self.total:
            self.last = now
            rate = self.done / max(now - self.t0, 1e-9)
            eta = (self.total - self.done) / rate if rate > 0 else float("inf")
            log.info(  # `defect-agent batch` shows agent.batch at INFO: progress is not a warning to a log watcher
                "batch progress done=%d total=%d rate=%.2f img/s eta=%.0f s fail=%d review=%d pass=%d",
                self.done,
                self.total,
                rate,
                eta,
                verdicts["fail"],
                verdicts["review"],
                verdicts["pass"],
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@dataclass
class BatchItem:
    """One image of a batch on its way through the run: what was read and which results it still lacks."""

    path: str
    digest: str | None
    image: np.ndarray | None
    error: str | None
    keys: list[str]
    todo: list[int]


def make_item(
    path: str,
    loaded: tuple[str | None, np.ndarray | None, str | None],
    queries: list[Any],
    models: str,
    profile: BatchProfile,
    done: set[str],
) -> BatchItem | None:
    """The item of one read image (`load_item`'s result), or None when every result it needs is already done."""
    digest, image, error = loaded
    keys = [result_key(digest, path, models, q.instruction, profile.line, profile.lang) for q in queries]
    todo = [i for i, key in enumerate(keys) if key not in done]
    if not todo:
        return None
    return BatchItem(path=path, digest=digest, image=image, error=error, keys=keys, todo=todo)


def item_records(item: BatchItem, verdicts: list[Any], run_id: str, profile: BatchProfile) -> list[BatchRecord]:
    """The results-file lines of one item: one per instruction it still lacked."""
    return [
        BatchRecord(
            key=item.keys[i],
            run_id=run_id,
            instruction_id=profile.instructions[i].id,
            image_sha256=item.digest,
            verdict=verdict,
        )
        for i, verdict in zip(item.todo, verdicts)
    ]


@dataclass
class RunTally:
    """What a run has done so far, by either engine: images per outcome and part verdicts."""

    inspected: int = 0
    skipped: int = 0
    unreadable: int = 0
    verdicts: dict[str, int] = field(default_factory=lambda: {"fail": 0, "review": 0, "pass": 0})

    def add(self, status: str, verdict: str | None = None) -> None:
        """`status`: inspected, unreadable or skipped; `verdict`: the part verdict of an analysed image."""
        setattr(self, status, getattr(self, status) + 1)
        if verdict:
            self.verdicts[verdict] += 1


@dataclass(frozen=True)
class RunClock:
    """A run's id and when it started."""

    run_id: str
    started: datetime
    t0: float

    @classmethod
    def start(cls) -> RunClock:
        started = datetime.now(UTC)
        return cls(started.strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6], started, time.monotonic())


def batch_paths(inputs: Sequence[str | Path], line: Any) -> list[str]:
    """The images the inputs name; on a template line without the reference images among them."""
    paths = expand_inputs(inputs)
    if line.locator is not None and line.locator.reference == "template" and line.reference is not None:
        from vision.reference import drop_references

        paths = drop_references(paths, line.reference)
    return paths


def _batches(items: Iterator[BatchItem], size: int, stop: StopOnSignal) -> Iterator[list[BatchItem]]:
    batch: list[BatchItem] = []
    for item in items:
        if stop.requested:
            break
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch and not stop.requested:
        yield batch


def analyse_items(
    inspector: Any, queries: list[Any], items: list[BatchItem], versions: Any, lang: str | None
) -> list[list[Any]]:
    """Verdicts (one per instruction still to do) for each item, every model called once for the batch's readable
    images (those with the same instructions to do share a call); unreadable items get `review` with `error`."""
    out: list[list[Any]] = [[] for _ in items]
    groups: dict[tuple[int, ...], list[int]] = {}
    for n, item in enumerate(items):
        if item.error is not None:
            verdicts = inspector.inspect_image_many([queries[i] for i in item.todo], item.path, versions, lang=lang)
            for v in verdicts:
                v.error = v.error or item.error
            out[n] = verdicts
        else:
            groups.setdefault(tuple(item.todo), []).append(n)
    for todo, members in groups.items():
        results = inspector.inspect_batch(
            [queries[i] for i in todo],
            [items[n].path for n in members],
            versions,
            lang=lang,
            images=[items[n].image for n in members],
        )
        for n, verdicts in zip(members, results):
            out[n] = verdicts
    return out


def run_batch(
    profile: BatchProfile,
    inputs: Sequence[str | Path],
    out_dir: Path,
    *,
    kb_dir: Path | None = None,
    use_kb: bool = True,
    inspector: Any = None,
    report: bool = True,
    batch_size: int = BATCH_SIZE,
    threads: ThreadTuner | None = None,
) -> BatchSummary:
    """Inspect every image the inputs name under every standing instruction; resume where an earlier run with
    the same output folder stopped. Writes verdicts.jsonl, verdicts.csv, report.html and runs/<run_id>.json.

    `batch_size` images go through the models together; `threads` (default: the app config's `threads`, 'auto'
    measuring 1 vs every core as the run goes) sets the intra-op threads per batch."""
    clock = RunClock.start()
    queries = profile_queries(profile)
    if inspector is None:
        from agent.pipeline import Inspector

        inspector = Inspector.from_config(line=profile.line, kb_dir=kb_dir, use_kb=use_kb, single_line=True)
    if threads is None:
        threads = tuner_for(inspector.app.threads, inspector.app.engine)
    paths = batch_paths(inputs, inspector.line)
    versions = inspector.versions()
    mkey = models_key(versions)
    results = ResultLog(out_dir / "verdicts.jsonl")
    done = results.recover()
    tally = RunTally()
    progress = Progress(len(paths), profile.name)

    def items() -> Iterator[BatchItem]:
        for path, loaded in _prefetched(paths, inspector.line.image_size):
            item = make_item(path, loaded, queries, mkey, profile, done)
            if item is not None:
                yield item
            else:
                tally.add("skipped")
                progress.update(tally.verdicts)

    with StopOnSignal() as stop, results:
        for batch in _batches(items(), batch_size, stop):
            threads.next_threads()
            t = time.perf_counter()
            analysed = analyse_items(inspector, queries, batch, versions, profile.lang)
            threads.record((time.perf_counter() - t) * 1000.0 / len(batch))
            for item, verdicts in zip(batch, analysed):
                tally.add("unreadable" if item.error is not None else "inspected", verdicts[0].verdict)
                for record in item_records(item, verdicts, clock.run_id, profile):
                    results.append(record)
                    done.add(record.key)
                progress.update(tally.verdicts)
        stopped = stop.requested
    progress.close()
    return finish_run(profile, out_dir, clock, len(paths), tally, stopped, report, threads=threads.figures())


def profile_queries(profile: BatchProfile) -> list[Any]:
    """The profile's instructions parsed; one about another line is a ConfigError."""
    from agent.parser import parse_instruction

    queries = [parse_instruction(i.text, line=profile.line) for i in profile.instructions]
    if any(q.line != profile.line for q in queries):
        raise ConfigError(f"profile {profile.name}: every instruction must be about line {profile.line}")
    return queries


def finish_run(
    profile: BatchProfile,
    out_dir: Path,
    clock: RunClock,
    images: int,
    tally: RunTally,
    stopped: bool,
    report: bool,
    threads: dict[str, float] | None = None,
) -> BatchSummary:
    """The run's summary, recorded under runs/ (the report's trend); the CSV and HTML report rewritten."""
    summary = BatchSummary(
        run_id=clock.run_id,
        profile=profile.name,
        line=profile.line,
        started=clock.started,
        seconds=round(time.monotonic() - clock.t0, 2),
        images=images,
        inspected=tally.inspected,
        skipped=tally.skipped,
        unreadable=tally.unreadable,
        verdicts=tally.verdicts,
        stopped_early=stopped,
        threads=threads or {},
    )
    runs = out_dir / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    (runs / f"{summary.run_id}.json").write_text(summary.model_dump_json(indent=1), encoding="utf-8")
    if report:
        from agent.batch.report import write_reports

        write_reports(out_dir, profile)
    return summary
