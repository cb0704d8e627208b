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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agent.batch.ledger import ResultLog
from agent.batch.profile import BatchProfile
from agent.batch.runner import (
    BatchItem,
    BatchSummary,
    Progress,
    RunClock,
    RunTally,
    StopOnSignal,
    analyse_items,
    batch_paths,
    finish_run,
    item_records,
    load_item,
    make_item,
    models_key,
    profile_queries,
)
from defect_agent.config import ENV_OVERRIDES, load_line
from defect_agent.errors import ConfigError

log = logging.getLogger(__name__)
# what a worker process needs to see the same project as the driver (a scratch home in tests, a plant's data dir)
FORWARDED_ENV = ("DEFECT_AGENT_HOME", "DEFECT_AGENT_DATA", "DEFECT_AGENT_THREADS", *ENV_OVERRIDES, "PYTHONPATH")


class InspectActor:
    """One Ray actor: the line's models loaded once, then `analyse_items` on every batch of paths it is given."""

    def __init__(
        self, profile_json: str, kb_dir: str | None, use_kb: bool, done: Any, threads: int | str | None, run_id: str
    ) -> None:
        from agent.pipeline import Inspector
        from defect_agent.config import load_app_config

        self.profile = BatchProfile.model_validate_json(profile_json)
        self.queries = profile_queries(self.profile)
        # one intra-op thread per actor unless told otherwise: the pool's parallelism is its actors. Given to the
        # models as they load (an onnxruntime session keeps the count it was built with)
        app = load_app_config().model_copy(update={"threads": threads if threads is not None else 1})
        self.inspector = Inspector.from_config(
            line=self.profile.line, kb_dir=Path(kb_dir) if kb_dir else None, use_kb=use_kb, app=app, single_line=True
        )
        self.versions = self.inspector.versions()
        self.mkey = models_key(self.versions)
        if not isinstance(done, set):  # a reference to the driver's set (shared, not copied per actor)
            import ray

            done = ray.get(done)
        self.done: set[str] = done
        self.run_id = run_id

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        paths = [str(p) for p in batch["path"]]
        items: list[BatchItem] = []
        status: dict[str, str] = {}
        for path in paths:
            item = make_item(
                path, load_item(path, self.inspector.line.image_size), self.queries, self.mkey, self.profile, self.done
            )
            if item is None:
                status[path] = "skipped"
                continue
            items.append(item)
            status[path] = "unreadable" if item.error is not None else "inspected"
        lines: dict[str, list[str]] = {}
        part: dict[str, str] = {}
        for item, verdicts in zip(
            items, analyse_items(self.inspector, self.queries, items, self.versions, self.profile.lang)
        ):
            part[item.path] = verdicts[0].verdict
            lines[item.path] = [r.model_dump_json() for r in item_records(item, verdicts, self.run_id, self.profile)]
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
    clock = RunClock.start()
    profile_queries(profile)  # a bad instruction fails here, before Ray starts
    paths = batch_paths(inputs, load_line(profile.line))
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
            "run_id": clock.run_id,
        },
    )
    tally = RunTally()
    progress = Progress(len(paths), profile.name)
    with StopOnSignal() as stop, results:
        for row in analysed.iter_rows():
            if stop.requested:
                break
            tally.add(row["status"], row["verdict"])
            for record in filter(None, row["records"].split("\n")):
                results.append_json(record)
            progress.update(tally.verdicts)
        stopped = stop.requested
    progress.close()
    return finish_run(profile, out_dir, clock, len(paths), tally, stopped, report)
