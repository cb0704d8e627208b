"""Which FAISS index a knowledge base of a given size uses.

The figures behind the defaults come from `benchmarks/bench_retrieval.py` on the 2-core target machine
(benchmarks/results/retrieval.json): exact search (Flat) costs ~0.25 ms per 1k 512-d vectors per query, so it stays
under 5 ms up to a few tens of thousands of vectors; above `exact_below`, IVF with nlist ~ 4*sqrt(n) and nprobe set
to scan ~`scan_target` vectors keeps recall@10 >= 0.95 with single-query p99 well under 5 ms at 1M.
HNSW is faster per query but cannot delete (every `kb rm` or re-embedding edit rebuilds it, minutes at 1M) and
builds ~10x slower, so it is an explicit choice, never the automatic one."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

IndexKind = Literal["flat", "ivf", "hnsw"]


class IndexSpec(BaseModel):
    """A concrete index configuration, recorded in the index manifest."""

    model_config = ConfigDict(frozen=True)

    kind: IndexKind
    nlist: int | None = None  # ivf: number of inverted lists (k-means centroids)
    nprobe: int | None = None  # ivf: lists scanned per query
    hnsw_m: int | None = None  # hnsw: graph degree
    ef_construction: int | None = None
    ef_search: int | None = None
    trained_for: int = 0  # ivf: how many vectors the quantizer was trained on (retrain when the base outgrows it)

    def describe(self) -> str:
        if self.kind == "ivf":
            return f"IVF{self.nlist},nprobe={self.nprobe}"
        if self.kind == "hnsw":
            return f"HNSW{self.hnsw_m},efSearch={self.ef_search}"
        return "Flat"


class IndexPolicy(BaseModel):
    """Size-based choice of index. `kind="auto"`: Flat below `exact_below` vectors, IVF at and above it."""

    kind: Literal["auto", "flat", "ivf", "hnsw"] = "auto"
    exact_below: int = Field(50_000, ge=0)
    nlist_per_sqrt_n: float = Field(4.0, gt=0)  # nlist = this * sqrt(n)
    min_points_per_list: int = Field(39, ge=1)  # k-means needs ~39 points per centroid (faiss' own warning level)
    # vectors scanned per query: nprobe = scan_target / (n / nlist). Recall at a fixed nprobe rises with the base
    # size (denser lists), so a fixed number of scanned candidates, not a fixed share of lists, holds recall@10
    # steady across sizes; see benchmarks/results/retrieval.json for the measured curve
    scan_target: int = Field(4000, ge=1)
    min_nprobe: int = Field(8, ge=1)
    hnsw_m: int = Field(32, ge=4)
    hnsw_ef_construction: int = Field(80, ge=8)
    hnsw_ef_search: int = Field(128, ge=1)
    regrow_factor: float = Field(4.0, gt=1)  # retrain an IVF index once the base is this many times its training size

    @classmethod
    def from_config(cls, retrieval_config: object | None = None) -> IndexPolicy:
        """Read the fields this policy knows from `AppConfig.retrieval` (others keep their defaults)."""
        if retrieval_config is None:
            from defect_agent.config import load_app_config

            retrieval_config = load_app_config().retrieval
        values = {name: getattr(retrieval_config, name) for name in cls.model_fields if hasattr(retrieval_config, name)}
        # the app config may name the index choice `index`
        if hasattr(retrieval_config, "index") and "kind" not in values:
            values["kind"] = retrieval_config.index
        return cls.model_validate(values)

    def nlist_for(self, n: int) -> int:
        nlist = int(round(self.nlist_per_sqrt_n * math.sqrt(max(n, 1))))
        return max(1, min(nlist, n // self.min_points_per_list))

    def nprobe_for(self, nlist: int, n: int) -> int:
        list_size = max(n, 1) / max(nlist, 1)
        return max(1, min(nlist, max(self.min_nprobe, int(math.ceil(self.scan_target / list_size)))))

    def kind_for(self, n: int) -> IndexKind:
        if self.kind != "auto":
            return self.kind
        return "flat" if n < self.exact_below else "ivf"

    def spec_for(self, n: int) -> IndexSpec:
        """The index to build for a base of `n` vectors."""
        kind = self.kind_for(n)
        if kind == "ivf":
            if n < self.min_points_per_list:  # too few vectors to train a quantizer: exact is exact and fast here
                return IndexSpec(kind="flat")
            nlist = self.nlist_for(n)
            return IndexSpec(kind="ivf", nlist=nlist, nprobe=self.nprobe_for(nlist, n), trained_for=n)
        if kind == "hnsw":
            return IndexSpec(
                kind="hnsw",
                hnsw_m=self.hnsw_m,
                ef_construction=self.hnsw_ef_construction,
                ef_search=self.hnsw_ef_search,
            )
        return IndexSpec(kind="flat")

    def needs_rebuild(self, current: IndexSpec, n: int) -> bool:
        """True when the base has grown out of its index: Flat past the threshold, IVF far past its training size."""
        wanted = self.kind_for(n)
        if current.kind == "flat" and wanted == "ivf":
            return n >= self.min_points_per_list
        if current.kind == "ivf" and wanted == "ivf" and current.trained_for > 0:
            return n >= self.regrow_factor * current.trained_for
        return current.kind != wanted and wanted != "flat"
