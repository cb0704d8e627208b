"""Two processes adding cases to one knowledge base at the same time: SQLite's busy timeout and the index file lock
must make both succeed, lose nothing, and leave an index that agrees with the database."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import numpy as np
from test_kb_support import case_input, make_image, unit

from knowledge_base import KnowledgeBase

PER_WORKER = 50


def _writer(kb_dir: str, worker: int, image: str, start_evt) -> list[int]:
    start_evt.wait(30)
    ids = []
    with KnowledgeBase.open(Path(kb_dir)) as kb:
        for i in range(PER_WORKER):
            seed = worker * 1000 + i
            case = kb.add(
                case_input(Path(image), report=f"worker {worker} case {i}"), vector=unit(seed), model_version="m1"
            )
            ids.append(case.id)
            if i % 10 == 0:  # interleave reads with the other process's writes
                kb.search_by_vector(unit(seed), k=3)
    return ids


def test_two_processes_add_concurrently(tmp_path: Path) -> None:
    kb_dir = tmp_path / "kb"
    images = [make_image(tmp_path / f"w{w}.png", "red" if w else "blue", seed=w) for w in range(2)]
    with KnowledgeBase.open(kb_dir):
        pass  # schema created up front so both workers start on equal terms
    ctx = mp.get_context("spawn")  # fork would copy faiss' OpenMP state
    with ctx.Manager() as manager:
        start = manager.Event()
        with ctx.Pool(2) as pool:
            futures = [pool.apply_async(_writer, (str(kb_dir), w, str(images[w]), start)) for w in range(2)]
            start.set()
            results = [f.get(timeout=240) for f in futures]

    all_ids = sorted(results[0] + results[1])
    assert _interleaved(results[0], results[1])  # the writes really overlapped in time
    assert len(set(all_ids)) == 2 * PER_WORKER
    with KnowledgeBase.open(kb_dir) as kb:
        assert kb.count() == 2 * PER_WORKER
        report = kb.verify()
        assert report.ok, report.problems
        assert report.index_count == 2 * PER_WORKER and report.pending_ops == 0
        # every case is findable through the index by its own vector
        for worker, ids in enumerate(results):
            for i in (0, PER_WORKER // 2, PER_WORKER - 1):
                assert kb.search_by_vector(unit(worker * 1000 + i), k=1)[0].case_id == ids[i]
        assert {h.op for h in kb.history(all_ids[0])} == {"add"}
        assert np.array_equal(kb.index.ready().ids(), np.array(all_ids))


def _interleaved(a: list[int], b: list[int]) -> bool:
    return any(min(a) < x < max(a) for x in b)
