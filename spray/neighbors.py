"""The k-nearest-neighbour graph of the maps: exact, projected or approximate, by N, with measured recall.

``nearest_neighbors(maps, k)`` returns each map's k nearest other maps (Euclidean) and says how they were
found. Which search runs depends on N (``method="auto"``):

- up to ``EXACT_KNN_MAX_N`` samples: exact, brute force in blocks (BLAS);
- up to ``PROJECTED_KNN_MAX_N``: the c nearest in the leading principal components, found exactly there,
  then re-ranked by the full distance; used only when its recall@k, measured on ``RECALL_SAMPLE`` rows
  before the search runs, reaches ``PROJECTED_KNN_MIN_RECALL`` (else more components, then a fallback);
- above: NN-descent (pynndescent), its recall measured on ``RECALL_SAMPLE`` rows.

The thresholds, and the measurements they come from, are next to each constant. ``spray.analyse`` turns the
graph into affinities (:func:`spray.analyse.knn_affinity`).
"""

from __future__ import annotations

import gc
import os
import sys
import threading
import uuid
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.cluster import KMeans
from threadpoolctl import threadpool_limits  # a scikit-learn dependency

from spray.errors import RunError

__all__ = ["EXACT_KNN_MAX_N", "KNN_METHODS", "PROJECTED_KNN_MAX_N", "nearest_neighbors"]


# Memory the float32 distance block of the brute-force kNN may take (rows x N x 4 bytes); selecting
# from it takes twice that again (int64 indices). Blocks of this size keep BLAS at full speed.
KNN_BLOCK_BYTES = 128 * 2**20

# Up to this many samples the kNN graph is exact (brute force, ``_exact_knn``), whose cost grows as N^2 D
# (benchmarks/spectral_scale.py; docs/benchmarks.md, "Constants").
EXACT_KNN_MAX_N = 10_000
# Above it and up to PROJECTED_KNN_MAX_N, the projected kNN (``_knn_projected``): the c nearest in the
# leading principal components, found exactly there (groups of points skipped by a lower bound), then
# re-ranked by the distance in full dimension. Each step (components, candidates per neighbour) is tried
# in turn, the first whose recall@k, measured on RECALL_SAMPLE rows before the whole search runs, reaches
# PROJECTED_KNN_MIN_RECALL is used. Heatmaps are smooth, so a few dozen components hold most of what tells
# them apart; white noise is the worst case, where no step reaches the threshold. The components each kind of
# data needed: benchmarks/spectral_scale.py (--noise) and docs/benchmarks.md, "Constants".
PROJECTED_KNN_MAX_N = 200_000
PROJECTED_KNN_STEPS = ((48, 4), (96, 8), (192, 16))
PROJECTED_KNN_MIN_RECALL = 0.95
# Steps after the first are tried only while N^2 x components stays below this: beyond it a projected search
# in which no group can be skipped costs as much as NN-descent, so larger N go to NN-descent sooner.
PROJECTED_KNN_MAX_WORK = 2e12
# When no step reaches the recall: exact up to this many samples (its N^2 cost still bearable), NN-descent above.
EXACT_KNN_FALLBACK_MAX_N = 25_000
# The principal axes come from a randomized range finder on this many rows, with these power iterations.
PROJECTION_SAMPLE = 5000
PROJECTION_POWER_ITERATIONS = 2
# Points per group of the projected search (k-means groups: the blocks of its GEMMs), and query rows per
# block: 512 x 256 float32 distances stay in a core's cache while they are scanned.
PROJECTED_GROUP_SIZE = 512
_PROJECTED_QUERY_ROWS = 256
# Above PROJECTED_KNN_MAX_N: approximate kNN by NN-descent (pynndescent, which umap-learn already depends
# on), with its recall measured. The graph is built with this many neighbours (or k, if larger) and the k
# nearest are kept: a graph built with more neighbours than k has a much higher recall@k (docs/benchmarks.md,
# "Constants").
APPROXIMATE_KNN_BUILD_NEIGHBORS = 30
# Rows whose exact neighbours are computed to measure the recall of an approximate graph.
RECALL_SAMPLE = 1000
KNN_METHODS = ("auto", "exact", "projected", "approximate")


_CACHED_PACKAGES: set[str] = set()
# umap-learn and pynndescent stay lazy (imported only when asked for), so their first import can happen in
# several task threads at once; one lock makes it happen once (see the sklearn imports at the top)
IMPORT_LOCK = threading.RLock()


def cache_numba_functions(package: str) -> None:
    """Switch numba's on-disk cache on for every compiled function of ``package`` that has it off, and give
    each a stable identity, so that a fresh process finds what an earlier one compiled.

    umap-learn compiles many functions with numba ``cache=False`` (``smooth_knn_dist``,
    ``compute_membership_strengths``, ``fast_knn_indices``, the layout optimisers), so every fresh process
    paid their JIT again: measured here, a first UMAP fit of 500 maps took 6.2 s, 0.5-0.7 s once cached.
    ``Dispatcher.enable_caching()`` is numba's switch for exactly that: the compiled code goes to
    ``__pycache__`` beside the package's sources (or ``NUMBA_CACHE_DIR``, or a per-user cache directory
    when site-packages is read-only), keyed by the source file's timestamp and size, so upgrading the
    package invalidates it. The cached code is the code numba would compile: embeddings are bit-identical
    with and without the cache (checked). Functions numba cannot cache (closures, or code that keeps
    pointers to Python objects) just compile as before.

    pynndescent's kernels (``nn_descent``, ``init_rp_tree``, ``process_candidates``, ...) take the distance
    function as an argument, and numba's cache key holds the argument's type, a compiled function known by
    a random per-process UUID: the cache never hit (one new ~230 kB entry per function per process). Each
    function here gets a UUID derived from its module and name instead (numba's ``_set_uuid``, which it
    uses itself to match functions across pickling; only where none was assigned yet), and the keys match
    across processes: a fresh NNDescent of 3,000 maps went from 17.5 s to 3.6 s. (The rest is
    ``nn_descent`` itself, which numba cannot cache: its verbose ``print`` keeps a pointer to a Python
    object.) A stale entry would need one of the package's files to change without the other's timestamp
    changing, which installing a version does not do.
    """
    if package in _CACHED_PACKAGES:
        return
    _CACHED_PACKAGES.add(package)
    try:
        from numba.core.caching import NullCache
        from numba.core.dispatcher import Dispatcher
    except ImportError:  # a numba without these internals: compile every time, as the package would
        return
    for name, module in list(sys.modules.items()):
        if module is None or not (name == package or name.startswith(package + ".")):
            continue
        for obj in list(vars(module).values()):
            if not (isinstance(obj, Dispatcher) and obj.py_func.__module__ == name):
                continue
            if getattr(obj, "_MemoMixin__uuid", "") is None and hasattr(obj, "_set_uuid"):
                obj._set_uuid(str(uuid.uuid5(uuid.NAMESPACE_URL, f"spray-numba:{name}.{obj.py_func.__qualname__}")))
            if isinstance(obj._cache, NullCache):
                obj.enable_caching()


def _import_pynndescent() -> Any:
    """Import pynndescent with numba's on-disk cache switched on (see :func:`cache_numba_functions`)."""
    with IMPORT_LOCK:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # numba threading-layer notices
            import pynndescent
            import pynndescent.distances
            import pynndescent.pynndescent_
            import pynndescent.rp_trees
            import pynndescent.utils
        cache_numba_functions("pynndescent")
    return pynndescent


def _exact_knn(maps: np.ndarray, n_neighbors: int) -> tuple[np.ndarray, np.ndarray]:
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
        # numpy's selection, not the faster torch.topk: torch's OpenMP threads keep spinning after it and
        # slow the next LAPACK call on shared cores (docs/benchmarks.md, "Constants")
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


def _approximate_knn(maps: np.ndarray, n_neighbors: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Approximate Euclidean kNN by NN-descent (pynndescent), same shapes and order as :func:`_exact_knn`.

    The graph is built with ``max(APPROXIMATE_KNN_BUILD_NEIGHBORS, 2 k) + 1`` neighbours (the +1 is the
    sample itself, which NN-descent lists) and only the k nearest are kept: a wider search is what buys
    recall. Seeded, so the same maps give the same graph.
    """
    pynndescent = _import_pynndescent()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pynndescent warns about numba/TBB threading layers
        build = min(maps.shape[0] - 1, max(APPROXIMATE_KNN_BUILD_NEIGHBORS, 2 * n_neighbors)) + 1
        index = pynndescent.NNDescent(
            maps, n_neighbors=build, metric="euclidean", random_state=seed, n_jobs=-1, low_memory=True
        )
        found, found_distances = index.neighbor_graph
    found = found.astype(np.int64)
    found_distances = found_distances.astype(np.float64)
    # drop the sample itself (by index: duplicates may come first) and missing entries (-1)
    own = (found == np.arange(len(found))[:, None]) | (found < 0)
    found_distances[own] = np.inf
    order = np.lexsort((found, found_distances), axis=1)[:, :n_neighbors]
    indices = np.take_along_axis(found, order, axis=1)
    distances = np.take_along_axis(found_distances, order, axis=1)
    if not np.isfinite(distances).all():
        raise RunError(
            f"approximate kNN found fewer than {n_neighbors} neighbours for some samples; "
            "lower analysis.neighbors"
        )
    return indices, distances


def _recall_sample(n: int, seed: int, sample: int = RECALL_SAMPLE) -> np.ndarray:
    """The seeded, sorted rows on which recall is measured."""
    return np.sort(np.random.default_rng(seed).choice(n, size=min(sample, n), replace=False))


def _true_kth_sq_distances(maps: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
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


def _estimate_recall(maps: np.ndarray, indices: np.ndarray, seed: int, sample: int = RECALL_SAMPLE) -> float:
    """Share of the true k nearest neighbours that ``indices`` contains, on a seeded sample of rows
    whose exact neighbours are found by brute force (:func:`_true_kth_sq_distances`)."""
    n, k = indices.shape
    rows = _recall_sample(n, seed, sample)
    kth, tolerance = _true_kth_sq_distances(maps, rows, k)
    # distances to the neighbours found, computed directly; a found neighbour at most as far as the true
    # k-th is a true one (so ties count)
    diff = maps[indices[rows]] - maps[rows][:, None, :]
    found = np.square(diff).sum(axis=2, dtype=np.float64)
    return float((found <= (kth + tolerance)[:, None]).sum()) / (len(rows) * k)


def _knn_kernels() -> Any:
    """:mod:`spray._knn_kernels`, its compiled code loaded (from numba's cache, or compiled on first use).

    The garbage collector is off meanwhile: numba's first use creates some 10^5 objects, and in a process
    holding torch's and scikit-learn's millions each triggered full collection cost more than the work
    (measured: 0.25 s with the collector on, 0.09 s off)."""
    with IMPORT_LOCK:
        if "spray._knn_kernels" in sys.modules:
            return sys.modules["spray._knn_kernels"]
        collecting = gc.isenabled()
        gc.disable()
        try:
            from spray import _knn_kernels

            _knn_kernels.load()
        finally:
            if collecting:
                gc.enable()
        return _knn_kernels


def _worker_threads() -> int:
    """CPUs this process may use (what OpenBLAS and OpenMP default to)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _principal_coordinates(maps: np.ndarray, n_dims: int, seed: int) -> np.ndarray:
    """Coordinates of the rows of ``maps`` on their ``n_dims`` leading principal axes, ``(maps - m) @ V``
    with V (D, n_dims) orthonormal and m the mean of the rows that gave V; float32, C order.

    Randomized range finder (Halko, Martinsson & Tropp 2011) with ``PROJECTION_POWER_ITERATIONS`` power
    iterations, on a seeded sample of ``PROJECTION_SAMPLE`` rows: axes from 5,000 rows served as well as
    those from all (recall 0.998 either way at N = 20,000) at 40 % of the cost. The axes need not be exact: V is
    orthonormal whatever it spans, which is all that :func:`_projected_recall` relies on, and candidates
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
    # one BLAS thread: these are small products and factorisations, where threads on shared cores wait on each
    # other (docs/benchmarks.md, "Constants")
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
    def build(cls, points: np.ndarray, seed: int) -> _Partition:
        n = len(points)
        n_groups = max(1, n // PROJECTED_GROUP_SIZE)
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
    squared distances (one GEMM) goes through the compiled selection (:func:`spray._knn_kernels.scan_block`).
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
    threads = _worker_threads()
    if threads == 1:
        for g in largest_first:
            search(g)
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(search, largest_first))
    return indices[:, :n_candidates]


def _in_threads(function: Any, n_items: int, step: int) -> None:
    """``function(start, stop)`` for consecutive ranges of at most ``step`` (>= 1) of ``n_items``, spread
    over the CPUs (:func:`_worker_threads`)."""
    step = int(max(1, min(step, -(-n_items // _worker_threads()))))
    ranges = [(start, min(n_items, start + step)) for start in range(0, n_items, step)]
    if _worker_threads() == 1 or len(ranges) == 1:
        for start, stop in ranges:
            function(start, stop)
        return
    with ThreadPoolExecutor(_worker_threads()) as pool:
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


def _projected_knn(
    maps: np.ndarray, coordinates: np.ndarray, n_neighbors: int, n_candidates: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Approximate kNN: the ``n_candidates`` nearest in the principal ``coordinates``
    (:func:`_projected_candidates`), re-ranked by their distance in full dimension
    (:func:`spray._knn_kernels.pair_sq_distances`); the k nearest are kept. Same shapes and order as
    :func:`_exact_knn`."""
    n = maps.shape[0]
    partition = _Partition.build(coordinates, seed)
    candidates = partition.order[_projected_candidates(partition, min(n - 1, n_candidates))]
    # by position: nearby points share candidates, which then are still in cache
    exact = np.sqrt(_sq_distances(maps, partition.order[:, None], candidates))
    best = np.lexsort((candidates, exact), axis=1)[:, :n_neighbors]
    indices = np.empty((n, best.shape[1]), dtype=np.int64)
    distances = np.empty((n, best.shape[1]), dtype=np.float64)
    indices[partition.order] = np.take_along_axis(candidates, best, axis=1)
    distances[partition.order] = np.take_along_axis(exact, best, axis=1)
    return indices, distances


def _projected_recall(
    maps: np.ndarray,
    coordinates: np.ndarray,
    rows: np.ndarray,
    n_neighbors: int,
    n_candidates: int,
    truth: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[float, tuple[np.ndarray, np.ndarray]]:
    """Recall@k that :func:`_projected_knn` reaches with these coordinates and candidates, measured before
    it runs: ``(recall, truth)``.

    The search is exact in principal coordinates (up to float32 round-off), so what it finds for a row
    does not depend on the other rows searched: the sampled ``rows`` alone are searched here, against all
    N (one GEMM and scan per block of them), re-ranked, and compared with their true k nearest (as
    :func:`_estimate_recall` does). ``truth`` (``(kth, tolerance)`` per sampled row) is computed on the first
    call and can be passed to later ones, for other coordinates or more candidates.

    The true neighbours: the coordinates are an orthogonal projection, so no distance between them exceeds
    the distance between the maps. A row's true k nearest are no farther than the k found for it, so they
    are among the rows within that distance in principal coordinates, and only these (120 per row on
    20,000 synthetic heatmaps) need their full distance. Where the projection tells little, too many rows
    are that near (more than N / 32 per sampled row on average), and a brute force in full dimension
    (:func:`_true_kth_sq_distances`) is cheaper.
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
    """``(kth, tolerance)`` as :func:`_true_kth_sq_distances` gives them, found with the projection bound
    (see :func:`_projected_recall`); ``found_kth``: the squared distance to the k-th row found for each."""
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
        return _true_kth_sq_distances(maps, rows, k)
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
        return _true_kth_sq_distances(maps, rows, k)
    kth = full[first + k - 1]
    return kth, 1e-12 * kth


def knn_method(n_samples: int) -> str:
    """What ``method="auto"`` uses for N samples: "exact", "projected" or "approximate"."""
    if n_samples <= EXACT_KNN_MAX_N:
        return "exact"
    return "projected" if n_samples <= PROJECTED_KNN_MAX_N else "approximate"


def _knn_projected(maps: np.ndarray, n_neighbors: int, seed: int) -> tuple[np.ndarray, np.ndarray, str, float]:
    """The projected kNN with the fewest principal components and candidates whose recall (measured
    first, :func:`_projected_recall`) reaches ``PROJECTED_KNN_MIN_RECALL``; if none does, the exact kNN up
    to ``EXACT_KNN_FALLBACK_MAX_N`` samples, NN-descent above."""
    n, n_features = maps.shape
    rows = _recall_sample(n, seed)
    truth = None
    tried = []
    for dims, per_neighbor in PROJECTED_KNN_STEPS:
        dims = min(dims, n_features)
        if tried and float(n) ** 2 * dims > PROJECTED_KNN_MAX_WORK:
            break
        candidates = per_neighbor * n_neighbors
        # one BLAS thread: the products here are small or run in threads of their own (see
        # _principal_coordinates); 2 BLAS threads on 2 shared cores made them erratically slow
        with threadpool_limits(1, user_api="blas"):
            coordinates = _principal_coordinates(maps, dims, seed)
            recall, truth = _projected_recall(maps, coordinates, rows, n_neighbors, candidates, truth)
            if recall >= PROJECTED_KNN_MIN_RECALL:
                indices, distances = _projected_knn(maps, coordinates, n_neighbors, candidates, seed)
                description = (
                    f"approximate ({min(candidates, n - 1)} nearest in {dims} principal components, re-ranked "
                    f"in full dimension, Euclidean); recall@{n_neighbors} {recall:.3f} measured on {len(rows)} samples"
                )
                return indices, distances, description, recall
        tried.append(f"{recall:.3f} with {dims} components")
        if dims >= n_features:
            break
    why = f"the projected search's recall@{n_neighbors} was {', '.join(tried)} (below {PROJECTED_KNN_MIN_RECALL})"
    if n <= EXACT_KNN_FALLBACK_MAX_N:
        indices, distances = _exact_knn(maps, n_neighbors)
        return indices, distances, f"exact (brute force, Euclidean): {why}", 1.0
    indices, distances, description, recall = nearest_neighbors(maps, n_neighbors, "approximate", seed)
    return indices, distances, f"{description}: {why}", recall


def nearest_neighbors(
    maps: np.ndarray, n_neighbors: int, method: str = "auto", seed: int = 0
) -> tuple[np.ndarray, np.ndarray, str, float]:
    """``(indices, distances, description, recall)`` of the kNN graph; ``method="auto"``: by N (see
    :func:`knn_method`). The description starts with "exact" or "approximate"."""
    if method not in KNN_METHODS:
        raise ValueError(f"unknown kNN method {method!r}; expected one of {', '.join(KNN_METHODS)}")
    n = maps.shape[0]
    if method == "auto":
        method = knn_method(n)
    if method == "exact":
        indices, distances = _exact_knn(maps, n_neighbors)
        return indices, distances, "exact (brute force, Euclidean)", 1.0
    if method == "projected":
        return _knn_projected(maps, n_neighbors, seed)
    indices, distances = _approximate_knn(maps, n_neighbors, seed)
    recall = _estimate_recall(maps, indices, seed)
    description = (
        f"approximate (pynndescent NN-descent, Euclidean); recall@{n_neighbors} {recall:.3f} "
        f"measured on {min(RECALL_SAMPLE, n)} samples"
    )
    return indices, distances, description, recall
