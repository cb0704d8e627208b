"""An in-memory FAISS index of L2-normalised vectors keyed by case id: inner product = cosine similarity.

Layouts (see retrieval/policy.py for which one a base gets):
- flat: `IndexIDMap2(IndexFlatIP)`: exact; add and remove in place.
- ivf: `IndexIVFFlat` carrying the case ids itself. It is deliberately NOT wrapped in IndexIDMap2: IVF does not
  renumber its internal ids on `remove_ids` while IndexIDMap compacts its id table, so after a removal every later
  id maps to the wrong case (observed with faiss 1.15). IVF stores external ids in its inverted lists natively.
- hnsw: `IndexIDMap2(IndexHNSWFlat)`: fast queries but no removal; callers rebuild it instead (`supports_remove`).

Filtering uses FAISS selectors (an id bitmap), so Flat results are exact under any filter; approximate indexes can
return fewer than k hits under a very selective filter, which the knowledge base tops up with an exact scan of the
allowed ids (see KnowledgeBase._search_vector)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import cast

import numpy as np

from retrieval.policy import IndexSpec

log = logging.getLogger(__name__)

ADD_CHUNK = 65_536  # vectors per add call: bounds temporary memory and gives the progress bar steps
# A single query gains nothing from a second OpenMP thread, but on a busy machine (inference and training beside the
# search) the parallel region waits for a core: measured here, a 10k Flat query took 330 ms p50 with 2 threads and
# 1.7 ms with 1 (benchmarks/bench_retrieval.py reports both). Batches keep the process-wide setting.
SINGLE_QUERY_THREADS = 1


def normalize(vectors: np.ndarray, dim: int | None = None) -> np.ndarray:
    """float32, C-contiguous, rows L2-normalised. Rejects wrong widths, NaN/inf and all-zero rows."""
    x = np.array(vectors, dtype=np.float32, copy=True, order="C")
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2:
        raise ValueError(f"expected vectors of shape (n, dim), got {x.shape}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"vector width {x.shape[1]} does not match the index dimension {dim}")
    if not np.isfinite(x).all():
        raise ValueError("vectors contain NaN or inf")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if (norms == 0).any():
        raise ValueError("a vector is all zeros and cannot be normalised")
    x /= norms
    return x


@dataclass
class IdFilter:
    """The case ids a search may return, as a FAISS bitmap selector (one bit per id up to the largest id)."""

    ids: np.ndarray
    _bitmap: np.ndarray | None = field(default=None, repr=False)
    _selector: object | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.ids = np.unique(np.asarray(self.ids, dtype=np.int64))
        if self.ids.size and self.ids[0] < 0:
            raise ValueError("case ids are non-negative")

    def __len__(self) -> int:
        return int(self.ids.size)

    def selector(self):
        import faiss

        if self._selector is None:
            size = int(self.ids[-1]) + 1 if self.ids.size else 1
            flags = np.zeros(size, dtype=bool)
            flags[self.ids] = True
            # faiss reads bit (i & 7) of byte (i >> 3): little bit order; the array must outlive the selector
            self._bitmap = np.packbits(flags, bitorder="little")
            self._selector = faiss.IDSelectorBitmap(size, faiss.swig_ptr(self._bitmap))
        return self._selector


class VectorIndex:
    """A FAISS index plus the spec it was built with. Not thread-safe: the knowledge base serialises access."""

    def __init__(self, index, spec: IndexSpec, dim: int) -> None:
        self.index = index
        self.spec = spec
        self.dim = dim

    # construction ---------------------------------------------------------------------------------------------
    @classmethod
    def empty(cls, spec: IndexSpec, dim: int, train: np.ndarray | None = None) -> VectorIndex:
        """An empty index; IVF needs `train` (normalised vectors) for its quantizer."""
        import faiss

        index: faiss.Index
        if spec.kind == "flat":
            index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        elif spec.kind == "hnsw":
            hnsw = faiss.IndexHNSWFlat(dim, spec.hnsw_m or 32, faiss.METRIC_INNER_PRODUCT)
            hnsw.hnsw.efConstruction = spec.ef_construction or 80
            hnsw.hnsw.efSearch = spec.ef_search or 128
            index = faiss.IndexIDMap2(hnsw)
        elif spec.kind == "ivf":
            if train is None or len(train) < (spec.nlist or 1):
                raise ValueError(f"an IVF index with {spec.nlist} lists needs at least that many training vectors")
            quantizer = faiss.IndexFlatIP(dim)
            # the cast only informs the type checker: a spec without nlist still fails in int() as before
            index = faiss.IndexIVFFlat(quantizer, dim, int(cast(int, spec.nlist)), faiss.METRIC_INNER_PRODUCT)
            index.cp.spherical = True  # centroids on the unit sphere: the right k-means for cosine similarity
            index.cp.niter = 12  # beyond ~10 iterations recall barely moves while training time grows linearly
            index.cp.max_points_per_centroid = (
                40  # faiss subsamples training vectors to this many per list (k-means wants >= 39)
            )
            index.cp.seed = 1234
            index.train(np.ascontiguousarray(train, dtype=np.float32))
            index.nprobe = int(spec.nprobe or 1)
        else:  # pragma: no cover - IndexSpec validates kind
            raise ValueError(f"unknown index kind {spec.kind}")
        return cls(index, spec, dim)

    @classmethod
    def build(cls, spec: IndexSpec, vectors: np.ndarray, ids: np.ndarray, progress: bool = False) -> VectorIndex:
        """Train (IVF) and fill an index with already-normalised vectors."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        dim = vectors.shape[1]
        if spec.kind == "ivf":
            spec = spec.model_copy(update={"trained_for": len(vectors)})
        out = cls.empty(spec, dim, train=vectors if spec.kind == "ivf" else None)
        out.add(vectors, ids, progress=progress)
        return out

    # updates --------------------------------------------------------------------------------------------------
    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def supports_remove(self) -> bool:
        return self.spec.kind != "hnsw"

    def add(self, vectors: np.ndarray, ids: np.ndarray, progress: bool = False) -> None:
        if len(ids) == 0:
            return
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if vectors.shape != (len(ids), self.dim):
            raise ValueError(f"expected vectors of shape ({len(ids)}, {self.dim}), got {vectors.shape}")
        starts = range(0, len(ids), ADD_CHUNK)
        if progress and len(ids) > ADD_CHUNK:
            from tqdm import tqdm

            starts = tqdm(starts, desc=f"index {self.spec.describe()}", unit="chunk")
        for start in starts:
            self.index.add_with_ids(vectors[start : start + ADD_CHUNK], ids[start : start + ADD_CHUNK])

    def remove(self, ids: np.ndarray) -> int:
        """Remove ids (absent ones are ignored); returns how many were removed."""
        if not self.supports_remove:
            raise NotImplementedError("HNSW cannot remove vectors: rebuild the index")
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if ids.size == 0 or self.ntotal == 0:
            return 0
        return int(self.index.remove_ids(ids))

    # queries --------------------------------------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int, allowed: IdFilter | None = None) -> list[list[tuple[int, float]]]:
        """Top-k (id, inner product) per query, best first; fewer than k when the index (or filter) has fewer."""
        import faiss

        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim == 1:
            queries = queries[None, :]
        if self.ntotal == 0 or k <= 0:
            return [[] for _ in range(len(queries))]
        k = min(k, self.ntotal)
        params: faiss.SearchParameters | None = None
        if allowed is not None:
            sel = allowed.selector()
            if self.spec.kind == "ivf":
                # faiss' bundled stubs declare SearchParameters* without the keyword constructor its Python layer adds
                params = faiss.SearchParametersIVF(sel=sel, nprobe=int(self.index.nprobe))  # type: ignore[call-arg]
            elif self.spec.kind == "hnsw":
                # missing from faiss' stubs, present in the compiled module
                params = faiss.SearchParametersHNSW(  # type: ignore[attr-defined]
                    sel=sel, efSearch=max(int(self.spec.ef_search or 128), k)
                )
            else:
                params = faiss.SearchParameters(sel=sel)  # type: ignore[call-arg]
        if len(queries) == 1 and SINGLE_QUERY_THREADS:
            # omp_set_num_threads changes the calling thread's setting only: restore it for later batch work
            previous = faiss.omp_get_max_threads()
            faiss.omp_set_num_threads(SINGLE_QUERY_THREADS)
            try:
                distances, labels = self.index.search(queries, k, params=params)
            finally:
                faiss.omp_set_num_threads(previous)
        else:
            distances, labels = self.index.search(queries, k, params=params)
        out: list[list[tuple[int, float]]] = []
        for drow, lrow in zip(distances, labels):
            out.append([(int(i), float(d)) for d, i in zip(drow, lrow) if i >= 0])
        return out

    def ids(self) -> np.ndarray:
        """All case ids in the index, sorted."""
        import faiss

        if self.spec.kind == "ivf":
            inv = self.index.invlists
            parts = [
                faiss.rev_swig_ptr(inv.get_ids(li), inv.list_size(li)).copy()
                for li in range(self.index.nlist)
                if inv.list_size(li)
            ]
            found = np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)
        else:
            found = faiss.vector_to_array(self.index.id_map).astype(np.int64)
        return np.sort(found)

    def set_nprobe(self, nprobe: int) -> None:
        if self.spec.kind == "ivf":
            self.index.nprobe = int(nprobe)
            self.spec = self.spec.model_copy(update={"nprobe": int(nprobe)})

    def set_ef_search(self, ef: int) -> None:
        import faiss

        if self.spec.kind == "hnsw":
            hnsw = cast("faiss.IndexHNSW", faiss.downcast_index(self.index.index))  # stubs: downcast returns Index
            hnsw.hnsw.efSearch = int(ef)
            self.spec = self.spec.model_copy(update={"ef_search": int(ef)})

    # persistence ----------------------------------------------------------------------------------------------
    def to_bytes(self) -> np.ndarray:
        import faiss

        return faiss.serialize_index(self.index)

    @classmethod
    def from_bytes(cls, data: np.ndarray | bytes, spec: IndexSpec, dim: int) -> VectorIndex:
        """Raises RuntimeError (from faiss) or ValueError when the bytes are not an index of this spec."""
        import faiss

        buf = np.frombuffer(data, dtype=np.uint8) if isinstance(data, (bytes, bytearray, memoryview)) else data
        index = faiss.deserialize_index(buf)
        if int(index.d) != dim:
            raise ValueError(f"index dimension {index.d} != {dim}")
        # deserialize_index already returns the concrete class; do not downcast_index() again here: that makes a
        # second, non-owning proxy while the owning one is garbage-collected (use-after-free, seen as a segfault)
        if spec.kind == "ivf":
            if not isinstance(index, faiss.IndexIVFFlat):
                raise ValueError(f"expected an IVF index, found {type(index).__name__}")
            index.nprobe = int(spec.nprobe or index.nprobe)
        elif not isinstance(index, faiss.IndexIDMap2):
            raise ValueError(f"expected an id-mapped {spec.kind} index, found {type(index).__name__}")
        out = cls(index, spec, dim)
        if spec.kind == "hnsw" and spec.ef_search:
            out.set_ef_search(spec.ef_search)
        return out

    def nbytes(self) -> int:
        """Approximate memory: vectors plus ids (plus graph links for HNSW)."""
        base = self.ntotal * (self.dim * 4 + 8)
        if self.spec.kind == "hnsw":
            base += self.ntotal * (self.spec.hnsw_m or 32) * 2 * 4
        if self.spec.kind == "ivf":
            base += int(self.spec.nlist or 0) * self.dim * 4
        return base
