"""Exact Euclidean kNN by brute force (BLAS), and the recall of an approximate graph measured against it."""

from __future__ import annotations

import numpy as np

# Memory the float32 distance block of the brute-force kNN may take (rows x N x 4 bytes); selecting
# from it takes twice that again (int64 indices). Blocks of this size keep BLAS at full speed.
KNN_BLOCK_BYTES = 128 * 2**20


def exact_knn(maps: np.ndarray, n_neighbors: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact Euclidean k nearest neighbours of every row among the other rows.

    Returns ``(indices (N, k) int64, distances (N, k) float64)``, each row sorted by (distance, index).

    Brute force by BLAS: ``|x|^2 - 2 x.y + |y|^2`` in float32 on mean-centred data (centring removes the
    common offset that makes this formula lose precision), in row blocks so that memory stays at
    ``KNN_BLOCK_BYTES`` whatever N. float32 round-off could swap neighbours whose distances agree to ~1e-6,
    so a few extra candidates are re-ranked by directly computed distances: the result is the exact kNN of
    the float32 input. A sample is excluded from its own neighbours by index, not by distance,
    so duplicated heatmaps are each other's neighbours at distance 0.
    """
    n = maps.shape[0]
    centred = maps - maps.mean(axis=0, dtype=np.float64).astype(np.float32)
    # |x_i - x_j|^2 = |x_i|^2 - 2 x_i.x_j + |x_j|^2; the first term is constant per row, so the ranking
    # needs only |x_j|^2 - 2 x_i.x_j
    sq_norms = np.einsum("ij,ij->i", centred, centred)
    candidates = min(n - 1, n_neighbors + max(5, n_neighbors // 2))
    block = int(max(1, min(n, KNN_BLOCK_BYTES // (4 * n))))
    indices = np.empty((n, n_neighbors), dtype=np.int64)
    distances = np.empty((n, n_neighbors), dtype=np.float64)
    for start in range(0, n, block):
        stop = min(n, start + block)
        rows = np.arange(stop - start)
        scores = centred[start:stop] @ centred.T
        scores *= -2.0
        scores += sq_norms
        scores[rows, rows + start] = np.inf
        # numpy's selection, not torch.topk: torch's OpenMP threads keep spinning after it and slow the
        # next LAPACK call on few cores
        # (the copy lets the full int64 index array go: it is twice the size of the scores block)
        cand = np.argpartition(scores, candidates - 1, axis=1)[:, :candidates].copy()
        del scores
        # re-rank by exact distances: float32 differences are exact to one rounding, squares are summed
        # in float64 (relative error ~1e-8, against ~1e-4 of the expanded float32 formula)
        diff = centred[cand]
        diff -= centred[start:stop, None, :]
        exact = np.sqrt(np.square(diff, out=diff).sum(axis=2, dtype=np.float64))
        del diff
        order = np.lexsort((cand, exact), axis=1)[:, :n_neighbors]
        indices[start:stop] = np.take_along_axis(cand, order, axis=1)
        distances[start:stop] = np.take_along_axis(exact, order, axis=1)
    return indices, distances



def recall_sample(n: int, seed: int, sample: int) -> np.ndarray:
    """The seeded, sorted rows on which recall is measured."""
    return np.sort(np.random.default_rng(seed).choice(n, size=min(sample, n), replace=False))


def true_kth_sq_distances(maps: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(kth, tolerance)``: the squared distance from each of ``rows`` to its true k-th nearest other row,
    by brute force against all N rows in blocks (memory stays at ``KNN_BLOCK_BYTES`` whatever N; no copy
    of ``maps``), in the expanded float32 formula on centred maps: a directly computed squared distance
    ``d`` is within the true k nearest if ``d <= kth + tolerance`` (so ties count)."""
    n = maps.shape[0]
    centre = maps.mean(axis=0, dtype=np.float64).astype(np.float32)
    queries = maps[rows] - centre
    query_norms = np.einsum("ij,ij->i", queries, queries)
    nearest = np.full((len(rows), k), np.inf, dtype=np.float32)  # k smallest squared distances so far
    block = int(max(k, KNN_BLOCK_BYTES // (4 * len(rows))))
    for start in range(0, n, block):
        reference = maps[start : start + block] - centre
        d2 = queries @ reference.T
        d2 *= -2.0
        d2 += np.einsum("ij,ij->i", reference, reference)
        d2 += query_norms[:, None]
        own = np.flatnonzero((rows >= start) & (rows < start + len(reference)))
        d2[own, rows[own] - start] = np.inf
        if d2.shape[1] > k:
            d2 = np.partition(d2, k - 1, axis=1)[:, :k]
        nearest = np.partition(np.hstack([nearest, d2]), k - 1, axis=1)[:, :k]
    # the float32 round-off of the expanded formula
    return nearest.max(axis=1).astype(np.float64), 1e-5 * (query_norms + query_norms.mean())


def recall_of(
    maps: np.ndarray, rows: np.ndarray, found: np.ndarray, truth: tuple[np.ndarray, np.ndarray]
) -> float:
    """Share of the true k nearest neighbours of ``rows`` that ``found`` (len(rows), k) holds, with
    ``truth`` = (kth, tolerance) from :func:`true_kth_sq_distances`."""
    kth, tolerance = truth
    # distances to the neighbours found, computed directly; a found neighbour at most as far as the true
    # k-th is a true one (so ties count)
    diff = maps[found] - maps[rows][:, None, :]
    distances = np.square(diff).sum(axis=2, dtype=np.float64)
    return float((distances <= (kth + tolerance)[:, None]).sum()) / found.size


def estimate_recall(maps: np.ndarray, indices: np.ndarray, seed: int, sample: int) -> float:
    """Share of the true k nearest neighbours that ``indices`` (N, k) contains, on a seeded sample of
    ``sample`` rows whose exact neighbours are found by brute force (:func:`true_kth_sq_distances`)."""
    rows = recall_sample(len(indices), seed, sample)
    return recall_of(maps, rows, indices[rows], true_kth_sq_distances(maps, rows, indices.shape[1]))
