"""Small, dependency-free metrics for the embedder: AUROC (rank form, ties averaged) and top-1 accuracy."""

from __future__ import annotations

import numpy as np


def auroc(scores: np.ndarray | list[float], positive: np.ndarray | list[bool]) -> float:
    """Area under the ROC curve = P(score of a random positive > score of a random negative), ties count 1/2."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUROC needs both positives and negatives")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    i = 0
    while i < len(s):  # average ranks over ties
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def top1(similarity: np.ndarray, truth: np.ndarray) -> float:
    """Share of rows whose argmax column equals `truth`."""
    if len(truth) == 0:
        return float("nan")
    return float((np.asarray(similarity).argmax(1) == np.asarray(truth)).mean())
