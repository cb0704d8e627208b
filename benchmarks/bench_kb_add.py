"""One `kb add` against the size of the knowledge base: the old policy (the whole FAISS file rewritten after every
write, up to 64 MB) against the current one (small indexes only; larger ones every PERSIST_EVERY_OPS entries and
the history replayed on open), in the same process on the same bases.

    .venv/bin/python benchmarks/bench_kb_add.py [--sizes 1200,10000,50000] [--adds 40] [--out PATH]

Each base is filled with random unit vectors (the embedder's dimension, 512 by default; vectors are given, so no
model runs), closed, then opened once per policy: `--adds` single adds, each a full `KnowledgeBase.add` (image into
the content store, SQLite transaction, index replay, persist when due) timed alone, then `close()` (what a CLI
`kb add` pays once more). Writes benchmarks/results/kb_add.json and prints the table."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _image(path: Path, i: int) -> Path:
    import cv2
    import numpy as np

    image = np.full((32, 32, 3), i % 251, np.uint8)
    image[0, 0] = (i // 251) % 251
    cv2.imwrite(str(path), image)
    return path


def _fill(kb_dir: Path, n: int, dim: int, images: Path) -> None:
    import numpy as np

    from knowledge_base import KnowledgeBase
    from knowledge_base.case import CaseInput, Disposition

    rng = np.random.default_rng(0)
    with KnowledgeBase.open(kb_dir, create=True) as kb:
        batch = []
        for i in range(n):
            v = rng.normal(size=dim).astype("float32")
            v /= np.linalg.norm(v)
            case = CaseInput(
                line="battery_tab",
                defect_class="spatter",
                image_path=str(_image(images / f"f{i}.png", i)),
                disposition=Disposition.rework,
                report=f"filler {i}",
            )
            batch.append(kb.prepare_case(case, v, model_version="bench"))
            if len(batch) == 500 or i == n - 1:
                kb.commit_prepared(batch)
                batch = []


def _time_adds(kb_dir: Path, adds: int, dim: int, images: Path, offset: int) -> dict[str, float]:
    import numpy as np

    from knowledge_base import KnowledgeBase
    from knowledge_base.case import CaseInput, Disposition

    rng = np.random.default_rng(offset)
    kb = KnowledgeBase.open(kb_dir)
    times = []
    for i in range(adds):
        v = rng.normal(size=dim).astype("float32")
        v /= np.linalg.norm(v)
        case = CaseInput(
            line="battery_tab",
            defect_class="crack",
            image_path=str(_image(images / f"a{offset + i}.png", offset + i + 7)),
            disposition=Disposition.scrap,
        )
        t0 = time.perf_counter()
        kb.add(case, v, model_version="bench")
        times.append((time.perf_counter() - t0) * 1000)
    t0 = time.perf_counter()
    kb.close()
    close_ms = (time.perf_counter() - t0) * 1000
    times.sort()
    return {
        "add_ms_p50": round(statistics.median(times), 2),
        "add_ms_p95": round(times[int(0.95 * (len(times) - 1))], 2),
        "add_ms_max": round(times[-1], 2),
        "close_ms": round(close_ms, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1200,10000,50000")
    parser.add_argument("--adds", type=int, default=40)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "kb_add.json")
    args = parser.parse_args()
    import knowledge_base.index_sync as sync

    current = (sync.PERSIST_EVERY_BYTES, sync.PERSIST_EVERY_OPS)
    old = (64 * 2**20, 1000)
    rows: list[dict[str, Any]] = []
    work = Path(tempfile.mkdtemp(prefix="bench-kb-add-"))
    try:
        for n in (int(s) for s in args.sizes.split(",")):
            images = work / f"img{n}"
            images.mkdir()
            kb_dir = work / f"kb{n}"
            _fill(kb_dir, n, args.dim, images)
            row: dict[str, Any] = {"cases": n}
            for name, (persist_bytes, persist_ops) in (("rewrite_every_add", old), ("current", current)):
                sync.PERSIST_EVERY_BYTES, sync.PERSIST_EVERY_OPS = persist_bytes, persist_ops
                row[name] = _time_adds(kb_dir, args.adds, args.dim, images, offset=len(rows) * 1000 + len(row))
            sync.PERSIST_EVERY_BYTES, sync.PERSIST_EVERY_OPS = current
            t0 = time.perf_counter()
            from knowledge_base import KnowledgeBase

            with KnowledgeBase.open(kb_dir) as kb:
                report = kb.verify()
            row["open_verify_ms"] = round((time.perf_counter() - t0) * 1000, 1)
            row["verify_ok"] = report.ok
            row["ratio_p50"] = round(row["rewrite_every_add"]["add_ms_p50"] / row["current"]["add_ms_p50"], 2)
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "command": " ".join(sys.argv),
        "machine": f"{os.cpu_count()} CPU cores",
        "load_average": os.getloadavg(),
        "dim": args.dim,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print("| cases | add p50, rewrite every add | add p50, current | ratio | close, old / current |")
    print("|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['cases']} | {r['rewrite_every_add']['add_ms_p50']} ms | {r['current']['add_ms_p50']} ms | "
            f"{r['ratio_p50']}x | {r['rewrite_every_add']['close_ms']} / {r['current']['close_ms']} ms |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
