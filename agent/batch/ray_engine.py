"""`defect-agent batch --engine ray`: the same batch on Ray Data, for more images than one machine inspects in a night.

Images stream through `map_batches` over an actor pool; each actor loads the line's models once (an `Inspector`) and
runs exactly the local engine's batch step (`analyse_items`) on its share. The driver keeps the one results file: it
appends each actor's records as they arrive, so the ledger, the resume rule (keys of image content + model versions
+ instruction), the CSV and the report are the local engine's. Locally `ray.init(num_cpus=workers)`; with
`RAY_ADDRESS` set (e.g. `ray://head:10001`) the driver joins that cluster, whose workers must see the same image
paths (a shared capture mount) and have the project installed with the same `models/` and `configs/`."""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from agent.batch.inputs import expand_inputs
from agent.batch.ledger import BatchRecord, ResultLog, result_key
from agent.batch.profile import BatchProfile
from agent.batch.runner import (
    BatchItem,
    BatchSummary,
    Progress,
    StopOnSignal,
    analyse_items,
    finish_run,
    load_item,
    models_key,
    profile_queries,
)
from defect_agent.config import load_line
from defect_agent.errors import ConfigError

log = logging.getLogger(__name__)
# what a worker process needs to see the same project as the driver (a scratch home in tests, a plant's data dir)
FORWARDED_ENV = ("DEFECT_AGENT_HOME", "DEFECT_AGENT_DATA", "DEFECT_AGENT_THREADS", "PYTHONPATH")


class InspectActor:
    """One Ray actor: the line's models loaded once, then `analyse_items` on every batch of paths it is given."""

    def __init__(
        self, profile_json: str, kb_dir: str | None, use_kb: bool, done: Any, threads: int | str | None, run_id: str
    ) -> None:
        from agent.pipeline import Inspector
        from defect_agent.runtime import set_threads

        self.profile = BatchProfile.model_validate_json(profile_json)
        self.queries = profile_queries(self.profile)
        self.inspector = Inspector.from_config(
            line=self.profile.line, kb_dir=Path(kb_dir) if kb_dir else None, use_kb=use_kb, single_line=True
        )
        # one intra-op thread per actor unless told otherwise: the pool's parallelism is its actors
        set_threads(threads if threads is not None else 1)
        self.versions = self.inspector.versions()
        self.mkey = models_key(self.versions)
        if not isinstance(done, set):  # a reference to the driver's set (shared, not copied per actor)
            import ray

            done = ray.get(done)
        self.done: set[str] = done
        self.run_id = run_id

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        profile, line = self.profile, self.inspector.line
        items: list[BatchItem] = []
        status: dict[str, str] = {}
        for path in (str(p) for p in batch["path"]):
            digest, image, error = load_item(path, line.image_size)
            keys = [
                result_key(digest, path, self.mkey, q.instruction, profile.line, profile.lang) for q in self.queries
            ]
            todo = [i for i, key in enumerate(keys) if key not in self.done]
            if not todo:
                status[path] = "skipped"
                continue
            items.append(BatchItem(path=path, digest=digest, image=image, error=error, keys=keys, todo=todo))
            status[path] = "unreadable" if error is not None else "inspected"
        lines: dict[str, list[str]] = {}
        part: dict[str, str] = {}
        for item, verdicts in zip(
            items, analyse_items(self.inspector, self.queries, items, self.versions, profile.lang)
        ):
            part[item.path] = verdicts[0].verdict
            lines[item.path] = [
                BatchRecord(
                    key=item.keys[i],
                    run_id=self.run_id,
                    instruction_id=profile.instructions[i].id,
                    image_sha256=item.digest,
                    verdict=verdict,
                ).model_dump_json()
                for i, verdict in zip(item.todo, verdicts)
            ]
        paths = [str(p) for p in batch["path"]]
        return {
            "path": np.array(paths, dtype=object),
            "status": np.array([status[p] for p in paths], dtype=object),
            "verdict": np.array([part.get(p, "") for p in paths], dtype=object),
            "records": np.array(["\n".join(lines.get(p, [])) for p in paths], dtype=object),
        }


def init_ray(workers: int) -> None:
    """Join the cluster RAY_ADDRESS names, else start a local Ray with `workers` CPUs (no dashboard)."""
    try:
        import ray
    except ModuleNotFoundError as exc:
        raise ConfigError(f"--engine ray needs Ray Data ({exc}): pip install 'ray[data]==2.60.0'") from exc
    if ray.is_initialized():
        return
    env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    if os.environ.get("RAY_ADDRESS"):
        ray.init(runtime_env={"env_vars": env}, log_to_driver=False)
    else:
        ray.init(
            num_cpus=workers,
            include_dashboard=False,
            runtime_env={"env_vars": env},
            object_store_memory=256 * 1024 * 1024,
            log_to_driver=False,
        )


def run_batch_ray(
    profile: BatchProfile,
    inputs: Sequence[str | Path],
    out_dir: Path,
    *,
    kb_dir: Path | None = None,
    use_kb: bool = True,
    batch_size: int = 4,
    workers: int = 2,
    threads: int | str | None = None,
    report: bool = True,
) -> BatchSummary:
    """`run_batch` on Ray Data with `workers` actors; writes the same files (verdicts.jsonl in input order)."""
    started = datetime.now(UTC)
    t0 = time.monotonic()
    run_id = started.strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]
    profile_queries(profile)  # a bad instruction fails here, before Ray starts
    line = load_line(profile.line)
    paths = expand_inputs(inputs)
    if line.locator is not None and line.locator.reference == "template" and line.reference is not None:
        from vision.reference import drop_references

        paths = drop_references(paths, line.reference)
    results = ResultLog(out_dir / "verdicts.jsonl")
    done = results.recover()
    init_ray(workers)
    import ray.data

    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # the results file in input order, as the local engine writes it
    context.enable_progress_bars = False
    dataset = ray.data.from_items([{"path": p} for p in paths], override_num_blocks=max(1, min(len(paths), 64)))
    analysed = dataset.map_batches(
        InspectActor,
        batch_size=batch_size,
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_cpus=1,
        fn_constructor_kwargs={
            "profile_json": profile.model_dump_json(),
            "kb_dir": str(kb_dir) if kb_dir else None,
            "use_kb": use_kb,
            "done": ray.put(done),
            "threads": threads,
            "run_id": run_id,
        },
    )
    counts = {"fail": 0, "review": 0, "pass": 0}
    seen = {"inspected": 0, "skipped": 0, "unreadable": 0}
    progress = Progress(len(paths), profile.name)
    with StopOnSignal() as stop, results:
        for row in analysed.iter_rows():
            if stop.requested:
                break
            seen[row["status"]] += 1
            if row["verdict"]:
                counts[row["verdict"]] += 1
            for record in filter(None, row["records"].split("\n")):
                results.append(BatchRecord.model_validate_json(record))
            progress.update(counts)
        stopped = stop.requested
    progress.close()
    summary = BatchSummary(
        run_id=run_id,
        profile=profile.name,
        line=profile.line,
        started=started,
        seconds=round(time.monotonic() - t0, 2),
        images=len(paths),
        inspected=seen["inspected"],
        skipped=seen["skipped"],
        unreadable=seen["unreadable"],
        verdicts=counts,
        stopped_early=stopped,
    )
    return finish_run(summary, out_dir, profile, report)
