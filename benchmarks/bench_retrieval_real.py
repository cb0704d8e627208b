"""Retrieval quality on real embeddings (the scale benchmark, bench_retrieval.py, uses synthetic vectors).

Case base: DeepPCB train-group crops (defects of the six classes + defect-free template crops) embedded with the
configured embedder; queries: the validation-group crops (other boards). For the exact index and for IVF at the
knowledge base's own size policy (retrieval/policy.py) and a few nprobe values: class agreement of the k nearest
cases (precision@1, @5, @10: share of retrieved cases of the query's kind), recall@10 against exact search, and
query latency in the same process. Writes benchmarks/results/retrieval_real.json.

    .venv/bin/python benchmarks/bench_retrieval_real.py [--deeppcb DIR] [--per-class 200] [--normal 300]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def class_precision(ids: np.ndarray, base_kinds: np.ndarray, query_kinds: np.ndarray, k: int) -> float:
    return float((base_kinds[ids[:, :k]] == query_kinds[:, None]).mean())


def timed_search(index, queries: np.ndarray, k: int) -> tuple[np.ndarray, float, float]:
    lat = []
    out = np.empty((len(queries), k), dtype=np.int64)
    for i, q in enumerate(queries):
        t = time.perf_counter()
        _, ids = index.search(q[None, :], k)
        lat.append((time.perf_counter() - t) * 1000.0)
        out[i] = ids[0]
    return out, float(np.percentile(lat, 50)), float(np.percentile(lat, 99))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--deeppcb", type=Path, default=None)
    ap.add_argument("--per-class", type=int, default=200)
    ap.add_argument("--normal", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "retrieval_real.json")
    args = ap.parse_args()

    from defect_agent.runtime import configure_offline, set_threads

    configure_offline()
    import faiss

    from defect_agent.config import load_app_config
    from defect_agent.paths import shared_dataset
    from vision.embedder import load_embedder
    from vision.embedder.samples import deeppcb_crops

    root = args.deeppcb or shared_dataset("deeppcb")
    if root is None or not Path(root).is_dir():
        print("DeepPCB not found: pass --deeppcb", file=sys.stderr)
        return 2
    threads = set_threads(2)
    embedder = load_embedder(load_app_config().embedder)
    started = time.perf_counter()
    base_set = deeppcb_crops(root, "train", args.per_class, args.normal, args.seed)
    query_set = deeppcb_crops(root, "val", args.per_class, args.normal, args.seed)
    t = time.perf_counter()
    base = embedder.embed_images(base_set.crops)
    queries = embedder.embed_images(query_set.crops)
    embed_s = time.perf_counter() - t
    base_kinds, query_kinds = np.array(base_set.kinds), np.array(query_set.kinds)
    dim = base.shape[1]
    faiss.omp_set_num_threads(1)  # single queries, as the knowledge base runs them

    flat = faiss.IndexFlatIP(dim)
    flat.add(base)
    exact, p50, p99 = timed_search(flat, queries, 10)
    rows = [
        {
            "index": "Flat (exact)",
            "p50_ms": round(p50, 3),
            "p99_ms": round(p99, 3),
            "recall_at_10": 1.0,
            **{
                f"class_precision_at_{k}": round(class_precision(exact, base_kinds, query_kinds, k), 4)
                for k in (1, 5, 10)
            },
        }
    ]
    nlist = max(1, int(4 * np.sqrt(len(base))))
    quantizer = faiss.IndexFlatIP(dim)
    ivf = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    ivf.train(base)
    ivf.add(base)
    for nprobe in (1, 4, 8, 16):
        ivf.nprobe = nprobe
        ids, p50, p99 = timed_search(ivf, queries, 10)
        recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, exact)]))
        rows.append(
            {
                "index": f"IVF{nlist},nprobe={nprobe}",
                "p50_ms": round(p50, 3),
                "p99_ms": round(p99, 3),
                "recall_at_10": round(recall, 4),
                **{
                    f"class_precision_at_{k}": round(class_precision(ids, base_kinds, query_kinds, k), 4)
                    for k in (1, 5, 10)
                },
            }
        )
    result = {
        "benchmark": "retrieval quality on real embeddings (DeepPCB crops)",
        "command": " ".join(["benchmarks/bench_retrieval_real.py", *sys.argv[1:]]),
        "machine": {"platform": platform.platform(), "threads": threads},
        "embedder": embedder.version,
        "dim": dim,
        "base": {"n": len(base), "kinds": base_set.counts()},
        "queries": {"n": len(queries), "kinds": query_set.counts()},
        "embed_seconds": round(embed_s, 1),
        "total_seconds": round(time.perf_counter() - started, 1),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1), encoding="utf-8")
    print(f"{len(base)} train crops as cases, {len(queries)} validation crops as queries, {dim}-d, {embedder.version}")
    print(f"{'index':<22}{'p50 ms':>8}{'p99 ms':>8}{'R@10':>7}{'P@1':>7}{'P@5':>7}{'P@10':>7}")
    for r in rows:
        print(
            f"{r['index']:<22}{r['p50_ms']:>8.3f}{r['p99_ms']:>8.3f}{r['recall_at_10']:>7.3f}"
            f"{r['class_precision_at_1']:>7.3f}{r['class_precision_at_5']:>7.3f}{r['class_precision_at_10']:>7.3f}"
        )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
