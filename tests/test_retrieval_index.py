"""FAISS index wrapper, size policy and on-disk format: exactness of Flat, IVF removal keeping ids right, filters
through selectors, HNSW's missing removal, atomic files with checksums."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from retrieval.index import IdFilter, VectorIndex, normalize
from retrieval.policy import IndexPolicy, IndexSpec
from retrieval.store import IndexFile, IndexUnavailable


def _data(n: int, dim: int = 24, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = normalize(rng.standard_normal((n, dim)))
    return x, np.arange(100, 100 + n, dtype=np.int64)  # ids that are not row numbers


def _exact(x: np.ndarray, ids: np.ndarray, q: np.ndarray, k: int) -> list[int]:
    return ids[np.argsort(-(x @ q))[:k]].tolist()


def test_normalize_rejects_bad_vectors() -> None:
    assert np.allclose(np.linalg.norm(normalize(np.array([[3.0, 4.0]])), axis=1), 1.0)
    with pytest.raises(ValueError, match="zeros"):
        normalize(np.zeros((1, 4)))
    with pytest.raises(ValueError, match="NaN"):
        normalize(np.array([[np.nan, 1.0]]))
    with pytest.raises(ValueError, match="dimension"):
        normalize(np.ones((1, 3)), dim=4)


@pytest.mark.parametrize("spec", [IndexSpec(kind="flat"), IndexSpec(kind="ivf", nlist=8, nprobe=8)])
def test_search_add_remove_keep_ids_right(spec: IndexSpec) -> None:
    x, ids = _data(600)
    vi = VectorIndex.build(spec, x, ids)
    q = x[10]
    assert [i for i, _ in vi.search(q, 5)[0]] == _exact(x, ids, q, 5)
    # remove a block of ids: the remaining ones must still map to the right vectors (IndexIDMap over IVF would not)
    gone = ids[:50]
    assert vi.remove(gone) == 50 and vi.ntotal == 550
    keep = np.arange(50, 600)
    for row in (60, 300, 599):
        hits = vi.search(x[row], 3)[0]
        assert hits[0][0] == ids[row] and abs(hits[0][1] - 1.0) < 1e-4
        assert [i for i, _ in hits] == _exact(x[keep], ids[keep], x[row], 3)
    assert np.array_equal(vi.ids(), ids[50:])
    assert vi.remove(gone) == 0  # absent ids are ignored


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_filter_returns_only_allowed_ids(kind: str) -> None:
    x, ids = _data(400, seed=1)
    spec = {
        "flat": IndexSpec(kind="flat"),
        "ivf": IndexSpec(kind="ivf", nlist=4, nprobe=4),
        "hnsw": IndexSpec(kind="hnsw", hnsw_m=8, ef_construction=40, ef_search=64),
    }[kind]
    vi = VectorIndex.build(spec, x, ids)
    allowed = IdFilter(ids[::7])
    hits = vi.search(x[3], 10, allowed)[0]
    assert hits and {i for i, _ in hits} <= set(ids[::7].tolist())
    if kind != "hnsw":  # exact over the allowed ids (IVF probes every list here)
        assert [i for i, _ in hits] == _exact(x[::7], ids[::7], x[3], 10)


def test_hnsw_cannot_remove() -> None:
    x, ids = _data(50)
    vi = VectorIndex.build(IndexSpec(kind="hnsw", hnsw_m=8, ef_construction=20, ef_search=16), x, ids)
    assert not vi.supports_remove
    with pytest.raises(NotImplementedError, match="rebuild"):
        vi.remove(ids[:1])


def test_policy_by_size() -> None:
    p = IndexPolicy(exact_below=50_000)
    assert p.spec_for(10_000).kind == "flat"
    big = p.spec_for(1_000_000)
    assert big.kind == "ivf" and big.nlist == 4000 and big.trained_for == 10**6
    assert big.nprobe == p.nprobe_for(4000, 10**6) == 16  # scans scan_target=4000 of 1M: 16 lists of 250
    assert p.nprobe_for(4000, 4 * 10**6) == 8  # fuller lists: fewer of them scan as many vectors
    assert p.nlist_for(100) == 2  # capped so k-means gets >= 39 points per list
    assert IndexPolicy(kind="ivf").spec_for(10).kind == "flat"  # too few vectors to train
    assert IndexPolicy(kind="hnsw").spec_for(10).kind == "hnsw"
    assert p.needs_rebuild(IndexSpec(kind="flat"), 60_000)
    assert not p.needs_rebuild(IndexSpec(kind="flat"), 40_000)
    assert p.needs_rebuild(IndexSpec(kind="ivf", nlist=894, nprobe=8, trained_for=50_000), 200_000)
    assert not p.needs_rebuild(IndexSpec(kind="ivf", nlist=894, nprobe=8, trained_for=50_000), 150_000)


def test_policy_reads_app_config() -> None:
    from defect_agent.config import RetrievalConfig

    assert IndexPolicy.from_config(RetrievalConfig(exact_below=123)).exact_below == 123


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_index_file_round_trip_and_corruption(tmp_path: Path, kind: str) -> None:
    x, ids = _data(300, seed=2)
    spec = {
        "flat": IndexSpec(kind="flat"),
        "ivf": IndexSpec(kind="ivf", nlist=4, nprobe=2),
        "hnsw": IndexSpec(kind="hnsw", hnsw_m=8, ef_construction=40, ef_search=32),
    }[kind]
    vi = VectorIndex.build(spec, x, ids)
    f = IndexFile(tmp_path)
    with f.lock(exclusive=True):
        manifest = f.write(vi, applied_seq=7, generation="g1", model_version="m")
    assert manifest.count == 300 and manifest.applied_seq == 7
    assert not list(f.dir.glob("*.tmp"))  # temp files were renamed into place
    back, m2 = f.read()
    assert m2 == manifest and back.spec == vi.spec and np.array_equal(back.ids(), vi.ids())
    assert back.search(x[5], 1)[0][0][0] == ids[5]
    data = bytearray(f.index_path.read_bytes())
    data[-20] ^= 0x01
    f.index_path.write_bytes(bytes(data))
    with pytest.raises(IndexUnavailable, match="checksum.*kb rebuild"):
        f.read()
    f.manifest_path.write_text(json.dumps({"format": 1}))
    with pytest.raises(IndexUnavailable, match="manifest"):
        f.read()


def test_single_query_runs_on_one_thread_and_restores_the_setting() -> None:
    import faiss

    import retrieval.index as index_mod

    x, ids = _data(200)
    vi = VectorIndex.build(IndexSpec(kind="flat"), x, ids)
    faiss.omp_set_num_threads(2)
    seen = []
    real_search = vi.index.search

    def spy(q, k, params=None):
        seen.append(faiss.omp_get_max_threads())
        return real_search(q, k, params=params)

    vi.index.search = spy
    vi.search(x[0], 3)
    vi.search(x[:4], 3)
    assert seen == [index_mod.SINGLE_QUERY_THREADS, 2]
    assert faiss.omp_get_max_threads() == 2
