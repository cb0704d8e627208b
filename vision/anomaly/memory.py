"""PatchCore's memory bank: greedy k-centre coreset selection and nearest-neighbour distances (torch, CPU or GPU; the
onnx engine computes the distances in its exported graph from `scaled_bank_t`).

The coreset keeps the patch features that cover the normal set best (each new one is the feature farthest from
those kept), so a bank of a few percent of the patches gives nearly the distances of the full set at a fraction of
the scoring cost (Roth et al., "Towards Total Recall in Industrial Anomaly Detection", 2022). The selection runs
on a random projection of the features: distances are roughly preserved and each step reads less memory."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


def greedy_coreset(features: Any, k: int, proj_dim: int = 128, seed: int = 0) -> Any:
    """Indices (long tensor, k) of a greedy k-centre coreset of `features` (n, d); the first centre is drawn
    with `seed`."""
    import torch

    n, d = features.shape
    if k >= n:
        return torch.arange(n, device=features.device)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    x = features.float()
    if d > proj_dim:
        proj = torch.randn(d, proj_dim, generator=gen).to(x.device) / proj_dim**0.5
        x = x @ proj
    sq = (x * x).sum(dim=1)
    chosen = torch.empty(k, dtype=torch.long)
    last = int(torch.randint(n, (1,), generator=gen))
    min_d = torch.full((n,), float("inf"), device=x.device)
    dist = torch.empty(n, device=x.device)
    for i in range(k):
        chosen[i] = last
        # |x - c|^2 = |x|^2 - 2 x.c + |c|^2, one matrix-vector product per step
        torch.addmv(sq, x, x[last], beta=1.0, alpha=-2.0, out=dist)
        dist += sq[last]
        torch.minimum(min_d, dist, out=min_d)
        last = int(torch.argmax(min_d))
    return chosen.to(features.device)


def nearest_distance(queries: Any, bank: Any, bank_sq: Any | None = None, chunk: int = 8192) -> Any:
    """Euclidean distance from each query row (q, d) to its nearest bank row (m, d): tensor (q,)."""
    import torch

    if bank_sq is None:
        bank_sq = (bank * bank).sum(dim=1)
    q_sq = (queries * queries).sum(dim=1, keepdim=True)
    best = torch.full((queries.shape[0],), float("inf"), device=queries.device)
    for start in range(0, bank.shape[0], chunk):
        part = bank[start : start + chunk]
        d2 = torch.addmm(q_sq + bank_sq[start : start + chunk], queries, part.T, beta=1.0, alpha=-2.0)
        best = torch.minimum(best, d2.min(dim=1).values)
    # rounding can leave tiny negatives for a query that equals a bank row
    return best.clamp_min_(0.0).sqrt_()


def scaled_bank_t(bank: np.ndarray) -> np.ndarray:
    """-2 x the bank, transposed and contiguous: (d, m). The onnx engine's distances (vision.anomaly.onnx_features)
    take min_j |q - b_j|^2 as |q|^2 + min_j (|b_j|^2 + q.(-2 b_j)): one product, its (q, m) result read once."""
    return np.ascontiguousarray((-2.0 * bank).T, dtype=np.float32)
