"""The batch's engines and knobs give the same results: batches of images through the models vs one image at a
time, `threads: auto`'s tuner, and the Ray engine (a real local Ray, `ray.init(num_cpus=2)`) vs the local one, with
resume across engines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_batch import PROFILE as NIGHTLY

from agent.batch import BatchProfile, run_batch
from agent.batch.ledger import comparable
from agent.batch.threads import ThreadTuner

PROFILE = {**NIGHTLY, "name": "engines"}  # the same two standing instructions as the batch tests


@pytest.fixture(scope="module")
def cells(tmp_path_factory) -> Path:
    from vision.datasets.synth.battery_tab import generate_batch

    folder = tmp_path_factory.mktemp("cells")
    generate_batch(folder / "images", n=8, seed=8080)
    (folder / "images" / "broken.png").write_bytes(b"not a png")
    return folder / "images"


@pytest.fixture(scope="module")
def inspector():
    from agent.pipeline import Inspector

    return Inspector.from_config(line="battery_tab", use_kb=False)


def _records(out: Path) -> list[dict]:
    return [comparable(json.loads(line)) for line in (out / "verdicts.jsonl").read_text(encoding="utf-8").splitlines()]


def test_batches_give_the_one_by_one_verdicts(cells, inspector, tmp_path):
    profile = BatchProfile.model_validate(PROFILE)
    one = run_batch(profile, [cells], tmp_path / "one", inspector=inspector, batch_size=1, report=False)
    four = run_batch(profile, [cells], tmp_path / "four", inspector=inspector, batch_size=4, report=False)
    assert (one.inspected, one.unreadable) == (four.inspected, four.unreadable) == (8, 1)
    assert one.verdicts == four.verdicts
    a, b = _records(tmp_path / "one"), _records(tmp_path / "four")
    assert len(a) == len(b) == 9 * 2
    assert a == b
    # a batch's stage times are shared out over its images, and the verdict says how many were batched
    timings = [json.loads(line)["verdict"]["timings_ms"] for line in (tmp_path / "four" / "verdicts.jsonl").open()]
    assert any(t.get("batch") == 4.0 for t in timings)


def test_thread_tuner_measures_each_count_then_keeps_the_faster():
    tuner = ThreadTuner(candidates=(1, 2), trials=2, recheck=6)
    tried = []
    for _ in range(6):
        n = tuner.next_threads()
        tried.append(n)
        tuner.record(100.0 if n == 1 else 300.0)  # 2 threads slower, as on a busy machine
    assert tried[:4].count(1) == 2 and tried[:4].count(2) == 2  # alternated while measuring
    assert tried[4:] == [1, 1]
    assert tuner.figures() == {"1": 100.0, "2": 300.0}
    # after `recheck` batches it measures again: the load changed, now 2 threads win
    tried = []
    for _ in range(6):
        n = tuner.next_threads()
        tried.append(n)
        tuner.record(300.0 if n == 1 else 100.0)
    assert tried[-1] == 2
    assert ThreadTuner(fixed=1).next_threads() == 1


@pytest.mark.enable_socket
def test_ray_engine_writes_the_local_engine_results_and_resumes(cells, inspector, tmp_path):
    pytest.importorskip("ray.data", reason="the ray engine needs ray[data] (pip install 'ray[data]==2.60.0')")

    import ray

    profile = BatchProfile.model_validate(PROFILE)
    local = run_batch(profile, [cells], tmp_path / "local", inspector=inspector, report=False)
    try:
        _check_ray(profile, cells, inspector, local, tmp_path)
    finally:
        ray.shutdown()


def _check_ray(profile, cells, inspector, local, tmp_path) -> None:
    from agent.batch.ray_engine import run_batch_ray

    ray_run = run_batch_ray(profile, [cells], tmp_path / "ray", use_kb=False, workers=2, batch_size=2)
    assert (ray_run.inspected, ray_run.unreadable, ray_run.skipped) == (8, 1, 0)
    assert ray_run.verdicts == local.verdicts
    assert _records(tmp_path / "ray") == _records(tmp_path / "local")
    assert (tmp_path / "ray" / "report.html").is_file() and (tmp_path / "ray" / "verdicts.csv").is_file()
    # resumable: a rerun on Ray skips everything; the local engine then finds nothing left either
    again = run_batch_ray(profile, [cells], tmp_path / "ray", use_kb=False, workers=2, batch_size=2, report=False)
    assert (again.inspected, again.skipped) == (0, 9)
    local_after = run_batch(profile, [cells], tmp_path / "ray", inspector=inspector, report=False)
    assert (local_after.inspected, local_after.skipped) == (0, 9)
    assert len(_records(tmp_path / "ray")) == 9 * 2


def test_thread_settings_resolve_by_load_with_the_environment_as_override(monkeypatch):
    import os

    from defect_agent import runtime
    from defect_agent.config import load_app_config

    assert load_app_config().threads == "auto"  # the shipped default
    monkeypatch.delenv("DEFECT_AGENT_THREADS", raising=False)
    cores = os.cpu_count() or 1
    assert runtime.resolve_threads(3) == 3
    assert runtime.resolve_threads(None) == cores
    monkeypatch.setattr(os, "getloadavg", lambda: (0.1 * cores, 0.0, 0.0))
    assert runtime.resolve_threads("auto") == cores  # idle: every core
    monkeypatch.setattr(os, "getloadavg", lambda: (1.5 * cores, 0.0, 0.0))
    assert runtime.resolve_threads("auto") == 1  # others keep the cores busy: one thread
    assert runtime.resolve_threads("auto", "onnx") == cores  # onnxruntime's non-spinning pools: every core
    monkeypatch.setenv("DEFECT_AGENT_THREADS", "2")
    assert runtime.resolve_threads("auto") == 2 and runtime.resolve_threads(None) == 2
    assert runtime.resolve_threads(4) == 4  # a count in the config is explicit
    with pytest.raises(ValueError, match="threads"):
        runtime.resolve_threads("many")
