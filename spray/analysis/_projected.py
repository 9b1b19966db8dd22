"""The projected kNN search: exact in the leading principal components, re-ranked in full dimension.

Used by :func:`spray.analysis.neighbors.nearest_neighbors` (``method="projected"``), which measures the
recall of each setting before the whole search runs (:func:`projected_recall`) and uses it only if it is
high enough. The compiled inner loops are in :mod:`spray.analysis._knn_kernels`.
"""

from __future__ import annotations

import gc
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.cluster import KMeans
from threadpoolctl import threadpool_limits  # a scikit-learn dependency

from spray.analysis._exact import KNN_BLOCK_BYTES, true_kth_sq_distances
from spray.analysis._lazy import IMPORT_LOCK

# The principal axes come from a randomized range finder on this many rows, with these power iterations.
PROJECTION_SAMPLE = 5000
PROJECTION_POWER_ITERATIONS = 2
# Query rows per block: 512 x 256 float32 distances stay in a core's cache while they are scanned.
_PROJECTED_QUERY_ROWS = 256


def _knn_kernels() -> Any:
    """:mod:`spray.analysis._knn_kernels`, its compiled code loaded (from numba's cache, or compiled on first use).

    The garbage collector is off meanwhile: numba's first use creates some 10^5 objects, and in a process
    holding torch's and scikit-learn's millions each triggered full collection cost more than the work."""
    with IMPORT_LOCK:
        if "spray.analysis._knn_kernels" in sys.modules:
            return sys.modules["spray.analysis._knn_kernels"]
        collecting = gc.isenabled()
        gc.disable()
        try:
            from spray.analysis import _knn_kernels

            _knn_kernels.load()
        finally:
            if collecting:
                gc.enable()
        return _knn_kernels


def worker_threads() -> int:
    """CPUs this process may use (what OpenBLAS and OpenMP default to)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def principal_coordinates(maps: np.ndarray, n_dims: int, seed: int) -> np.ndarray:
    """Coordinates of the rows of ``maps`` on their ``n_dims`` leading principal axes, ``(maps - m) @ V``
    with V (D, n_dims) orthonormal and m the mean of the rows that gave V; float32, C order.

    Randomized range finder (Halko, Martinsson & Tropp 2011) with ``PROJECTION_POWER_ITERATIONS`` power
    iterations, on a seeded sample of ``PROJECTION_SAMPLE`` rows: axes from a sample serve as well as those
    from all rows (the same recall) at a fraction of the cost. The axes need not be exact: V is
    orthonormal whatever it spans, which is all that :func:`projected_recall` relies on, and candidates
    are re-ranked in full dimension. With ``n_dims >= D`` the coordinates are the centred maps.
    """
    n, n_features = maps.shape
    rng = np.random.default_rng(seed)
    rows = maps if n <= PROJECTION_SAMPLE else maps[np.sort(rng.choice(n, PROJECTION_SAMPLE, replace=False))]
    mean = rows.mean(axis=0, dtype=np.float64).astype(np.float32)
    if n_dims >= n_features:
        return maps - mean
    rows = rows - mean
    width = min(n_features, n_dims + 10)  # oversampling makes the leading axes accurate
    # one BLAS thread: these are small products and factorisations, and with 2 threads on 2 shared cores
    # the threads spent most of the time waiting on each other
    with threadpool_limits(1, user_api="blas"):
        subspace = rows.T @ (rows @ rng.standard_normal((n_features, width), dtype=np.float32))
        for _ in range(PROJECTION_POWER_ITERATIONS - 1):
            subspace = rows.T @ (rows @ np.linalg.qr(subspace)[0])
        basis = np.linalg.qr(subspace)[0]  # (D, width), orthonormal columns
        projected = rows @ basis
        gram = projected.T.astype(np.float64) @ projected
        _, rotation = np.linalg.eigh(gram)  # ascending: the last columns are the leading axes
        axes = (basis.astype(np.float64) @ rotation[:, ::-1][:, :n_dims]).astype(np.float32)
        # centred block by block (not maps @ axes - mean @ axes, which cancels digits when the maps share a
        # large offset), without a centred copy of all maps
        coordinates = np.empty((n, n_dims), dtype=np.float32)
        step = max(1, KNN_BLOCK_BYTES // (8 * 4 * n_features))
        for start in range(0, n, step):
            np.matmul(maps[start : start + step] - mean, axes, out=coordinates[start : start + step])
    return coordinates


def _expanded_sq_distance_factors(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(left, right)``, float32 (N, d + 2) and (d + 2, N), such that ``left[i] @ right[:, j]`` is
    ``|z_i|^2 - 2 z_i.z_j + |z_j|^2``: a block of squared distances is one GEMM, with no passes after it.
    ``left[:, -2]`` holds the squared norms."""
    sq = np.einsum("ij,ij->i", points, points)
    ones = np.ones((len(points), 1), dtype=np.float32)
    left = np.hstack([points, sq[:, None], ones])
    right = np.ascontiguousarray(np.hstack([-2.0 * points, ones, sq[:, None]]).T)
    return left, right


def _expanded_slack(left: np.ndarray) -> np.ndarray:
    """Per point, the float32 round-off a squared distance from the expanded formula may carry (a few ulps
    of ``|z_i|^2 + |z_j|^2``), generously: bounds are compared with this much to spare."""
    sq = left[:, -2]
    return 1e-5 * (sq + sq.max())


def _distances_to(points: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """(len(points), len(centres)) float64 Euclidean distances."""
    points = points.astype(np.float64)
    sq = np.einsum("ij,ij->i", points, points)[:, None] - 2.0 * points @ centres.T
    sq += np.einsum("ij,ij->i", centres, centres)
    return np.sqrt(np.maximum(sq, 0.0))


@dataclass
class _Partition:
    """Points (principal coordinates) in groups around k-means centres, each group a contiguous range of
    positions: every block of distances between two groups is one GEMM of slices, no copies.
    ``|z - centre_g| - radius_g`` bounds the distance from z to every member of group g from below."""

    order: np.ndarray  # (N,) the point at each position
    bounds: np.ndarray  # (G + 1,): group g holds positions bounds[g]:bounds[g + 1]
    centres: np.ndarray  # (G, d) float64
    radius: np.ndarray  # (G,) largest distance of a member to its centre
    left: np.ndarray  # expanded factors of the points in position order (_expanded_sq_distance_factors)
    right: np.ndarray
    slack: np.ndarray  # (N,) by position, see _expanded_slack

    @classmethod
    def build(cls, points: np.ndarray, seed: int, group_size: int) -> _Partition:
        """Groups of about ``group_size`` points (the blocks of the search's GEMMs) by k-means."""
        n = len(points)
        n_groups = max(1, n // group_size)
        if n_groups > 1:
            # centres by k-means on a seeded sample (32 points per centre: the groups only have to be
            # compact, not optimal), every point in the group of its nearest centre
            rng = np.random.default_rng(seed)
            sample = points[rng.choice(n, min(n, 32 * n_groups), replace=False)].astype(np.float64)
            kmeans = KMeans(n_clusters=n_groups, n_init=1, max_iter=20, random_state=seed)
            centres = kmeans.fit(sample).cluster_centers_
        else:
            centres = points.mean(axis=0, dtype=np.float64)[None, :]
        group = np.empty(n, dtype=np.int64)
        own = np.empty(n)  # distance to the own centre
        step = max(1, 2**22 // len(centres))
        for start in range(0, n, step):
            distances = _distances_to(points[start : start + step], centres)
            group[start : start + step] = np.argmin(distances, axis=1)
            own[start : start + step] = distances[np.arange(len(distances)), group[start : start + step]]
        order = np.argsort(group, kind="stable")
        radius = np.zeros(len(centres))
        np.maximum.at(radius, group, own)
        left, right = _expanded_sq_distance_factors(points[order])
        return cls(
            order=order,
            bounds=np.concatenate([[0], np.cumsum(np.bincount(group, minlength=len(centres)))]),
            centres=centres,
            radius=radius * (1.0 + 1e-6) + 1e-12,
            left=left,
            right=right,
            slack=_expanded_slack(left),
        )

    def gaps(self, start: int, stop: int) -> np.ndarray:
        """(stop - start, G) lower bounds on the distance from the points at positions start:stop to any
        member of each group (negative: the point may be inside)."""
        return _distances_to(self.left[start:stop, :-2], self.centres) - self.radius

    def columns(self, g: int) -> slice:
        return slice(int(self.bounds[g]), int(self.bounds[g + 1]))


def _projected_candidates(partition: _Partition, n_candidates: int) -> np.ndarray:
    """The ``n_candidates`` nearest other points of every point of the partition (in principal
    coordinates), exactly up to float32 round-off: (N, c) int64 positions, row p (in no particular order)
    for the point at position p.

    For each query group, its points in chunks of ``_PROJECTED_QUERY_ROWS``: the groups are visited from
    the nearest centre outwards, a group is skipped for every query whose lower bound on the distance to it
    already exceeds its current c-th distance (plus the round-off slack), and the rest of the block of
    squared distances (one GEMM) goes through the compiled selection (:func:`spray.analysis._knn_kernels.scan_block`).
    On clustered maps most pairs of groups are never computed (20,000 synthetic heatmaps: 14 % of all pairs
    of points); on structureless ones this is a blocked brute force. Query groups are spread over the CPUs
    (each thread owns the buffers of its groups; BLAS runs single-threaded inside).
    """
    kernels = _knn_kernels()
    n = len(partition.order)
    values = np.empty((n, 2 * n_candidates), dtype=np.float32)
    indices = np.empty((n, 2 * n_candidates), dtype=np.int64)
    counts = np.zeros(n, dtype=np.int64)
    tops = np.full(n, np.finfo(np.float32).max, dtype=np.float32)
    positions = np.arange(n)
    nonempty = np.flatnonzero(np.diff(partition.bounds) > 0)
    centre_distances = _distances_to(partition.centres, partition.centres)

    def search(query_group: int) -> None:
        visit = nonempty[np.argsort(centre_distances[query_group, nonempty], kind="stable")]
        own = partition.columns(query_group)
        for start in range(own.start, own.stop, _PROJECTED_QUERY_ROWS):
            stop = min(own.stop, start + _PROJECTED_QUERY_ROWS)
            gap = partition.gaps(start, stop)
            for g in visit:
                if g == query_group:
                    rows = positions[start:stop]
                else:
                    bound = gap[:, g]
                    needed = (bound <= 0) | (bound * bound <= tops[start:stop] + partition.slack[start:stop])
                    if not needed.any():
                        continue
                    rows = start + np.flatnonzero(needed)
                columns = partition.columns(g)
                block = partition.left[rows] @ partition.right[:, columns]
                kernels.scan_block(block, rows, rows, positions[columns], values, indices, counts, tops)
            kernels.keep_smallest_rows(values, indices, counts, start, stop, n_candidates)

    largest_first = nonempty[np.argsort(-np.diff(partition.bounds)[nonempty], kind="stable")]
    threads = worker_threads()
    if threads == 1:
        for g in largest_first:
            search(g)
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(search, largest_first))
    return indices[:, :n_candidates]


def _in_threads(function: Any, n_items: int, step: int) -> None:
    """``function(start, stop)`` for consecutive ranges of at most ``step`` (>= 1) of ``n_items``, spread
    over the CPUs (:func:`worker_threads`)."""
    step = int(max(1, min(step, -(-n_items // worker_threads()))))
    ranges = [(start, min(n_items, start + step)) for start in range(0, n_items, step)]
    if worker_threads() == 1 or len(ranges) == 1:
        for start, stop in ranges:
            function(start, stop)
        return
    with ThreadPoolExecutor(worker_threads()) as pool:
        list(pool.map(lambda bounds: function(*bounds), ranges))


def _sq_distances(maps: np.ndarray, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """``|maps[first] - maps[second]|^2`` (float64) for index arrays of equal shape (or broadcastable to
    ``second``'s), without copying rows, in parallel chunks."""
    kernels = _knn_kernels()
    shape = np.shape(second)
    first = np.ascontiguousarray(np.broadcast_to(first, shape), dtype=np.int64).ravel()
    second = np.ascontiguousarray(second, dtype=np.int64).ravel()
    out = np.empty(first.shape, dtype=np.float64)

    def run(start: int, stop: int) -> None:
        kernels.pair_sq_distances(maps, first[start:stop], second[start:stop], out[start:stop])

    _in_threads(run, len(first), len(first))
    return out.reshape(shape)


def projected_knn(
    maps: np.ndarray, coordinates: np.ndarray, n_neighbors: int, n_candidates: int, seed: int, group_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Approximate kNN: the ``n_candidates`` nearest in the principal ``coordinates``
    (:func:`_projected_candidates`), re-ranked by their distance in full dimension
    (:func:`spray.analysis._knn_kernels.pair_sq_distances`); the k nearest are kept. Same shapes and order as
    :func:`spray.analysis._exact.exact_knn`."""
    n = maps.shape[0]
    partition = _Partition.build(coordinates, seed, group_size)
    candidates = partition.order[_projected_candidates(partition, min(n - 1, n_candidates))]
    # by position: nearby points share candidates, which then are still in cache
    exact = np.sqrt(_sq_distances(maps, partition.order[:, None], candidates))
    best = np.lexsort((candidates, exact), axis=1)[:, :n_neighbors]
    indices = np.empty((n, best.shape[1]), dtype=np.int64)
    distances = np.empty((n, best.shape[1]), dtype=np.float64)
    indices[partition.order] = np.take_along_axis(candidates, best, axis=1)
    distances[partition.order] = np.take_along_axis(exact, best, axis=1)
    return indices, distances


def projected_recall(
    maps: np.ndarray,
    coordinates: np.ndarray,
    rows: np.ndarray,
    n_neighbors: int,
    n_candidates: int,
    truth: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[float, tuple[np.ndarray, np.ndarray]]:
    """Recall@k that :func:`projected_knn` reaches with these coordinates and candidates, measured before
    it runs: ``(recall, truth)``.

    The search is exact in principal coordinates (up to float32 round-off), so what it finds for a row
    does not depend on the other rows searched: the sampled ``rows`` alone are searched here, against all
    N (one GEMM and scan per block of them), re-ranked, and compared with their true k nearest (as
    :func:`spray.analysis._exact.estimate_recall` does). ``truth`` (``(kth, tolerance)`` per sampled row) is computed on the first
    call and can be passed to later ones, for other coordinates or more candidates.

    The true neighbours: the coordinates are an orthogonal projection, so no distance between them exceeds
    the distance between the maps. A row's true k nearest are no farther than the k found for it, so they
    are among the rows within that distance in principal coordinates, and only these (120 per row on
    20,000 synthetic heatmaps) need their full distance. Where the projection tells little, too many rows
    are that near (more than N / 32 per sampled row on average), and a brute force in full dimension
    (:func:`true_kth_sq_distances`) is cheaper.
    """
    kernels = _knn_kernels()
    n = maps.shape[0]
    k = n_neighbors
    c = min(n - 1, n_candidates)
    left, right = _expanded_sq_distance_factors(coordinates)
    slack = _expanded_slack(left)
    values = np.empty((len(rows), 2 * c), dtype=np.float32)
    indices = np.empty((len(rows), 2 * c), dtype=np.int64)
    counts = np.zeros(len(rows), dtype=np.int64)
    tops = np.full(len(rows), np.finfo(np.float32).max, dtype=np.float32)
    everyone = np.arange(n)

    def scan(start: int, stop: int) -> None:
        part = rows[start:stop]
        kernels.scan_block(left[part] @ right, np.arange(start, stop), part, everyone, values, indices, counts, tops)

    _in_threads(scan, len(rows), KNN_BLOCK_BYTES // (4 * 4 * n))
    kernels.keep_smallest_rows(values, indices, counts, 0, len(rows), c)
    found = np.sort(_sq_distances(maps, rows[:, None], indices[:, :c]), axis=1)[:, :k]
    if truth is None:
        truth = _true_kth_by_projection(maps, left, right, slack, rows, k, found[:, -1])
    kth, tolerance = truth
    recall = float((found <= (kth + tolerance)[:, None]).sum()) / (len(rows) * k)
    return recall, truth


def _true_kth_by_projection(
    maps: np.ndarray,
    left: np.ndarray,
    right: np.ndarray,
    slack: np.ndarray,
    rows: np.ndarray,
    k: int,
    found_kth: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """``(kth, tolerance)`` as :func:`true_kth_sq_distances` gives them, found with the projection bound
    (see :func:`projected_recall`); ``found_kth``: the squared distance to the k-th row found for each."""
    n = maps.shape[0]
    bound = found_kth * (1.0 + 1e-5) + slack[rows]
    budget = len(rows) * n // 32
    near: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    total = [0]
    lock = threading.Lock()

    def collect(start: int, stop: int) -> None:
        if total[0] > budget:  # given up
            return
        query, candidate = np.nonzero(left[rows[start:stop]] @ right <= bound[start:stop, None])
        with lock:
            total[0] += len(query)
            near[start] = (query + start, candidate)

    _in_threads(collect, len(rows), KNN_BLOCK_BYTES // (4 * 4 * n))
    if total[0] > budget:
        return true_kth_sq_distances(maps, rows, k)
    query = np.concatenate([near[start][0] for start in sorted(near)])
    candidate = np.concatenate([near[start][1] for start in sorted(near)])
    keep = candidate != rows[query]  # not its own neighbour
    query, candidate = query[keep], candidate[keep]
    full = _sq_distances(maps, rows[query], candidate)
    # the k-th smallest of each row: sort by (row, distance), count k into each
    ordered = np.lexsort((full, query))
    query, full = query[ordered], full[ordered]
    first = np.searchsorted(query, np.arange(len(rows)))
    if (np.diff(np.append(first, len(query))) < k).any():  # cannot happen unless round-off beat the slack
        return true_kth_sq_distances(maps, rows, k)
    kth = full[first + k - 1]
    return kth, 1e-12 * kth


