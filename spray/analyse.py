"""Stage 3: spectral relevance analysis of one class's preprocessed heatmaps.

The maps of one class, ``(N, D)`` float32 (D = h * w of the preprocessed heatmaps), go through:

1. a symmetric k-nearest-neighbour affinity graph (Euclidean kNN: exact up to 10,000 samples, above that
   approximate with a recall of at least 0.95 measured before it is used; locally scaled weights; sparse),
2. the symmetric normalised Laplacian ``L = I - D^-1/2 A D^-1/2``,
3. its ``m`` smallest eigenvalues and eigenvectors (ascending),
4. the eigengap ``argmax_k (l_{k+1} - l_k)`` over the configured range of k (von Luxburg 2007),
5. k-means on the rows of the first k eigenvectors, each row normalised to unit length (Ng, Jordan, Weiss 2001),

and separately into 2-D t-SNE and UMAP embeddings for the report (:func:`embed`).

Validation happens here, at the boundary: maps that are not a finite 2-D array, or a class with fewer
samples than the kNN graph needs, raise :class:`spray.errors.DataError` with a message that starts with
what is wrong, so that the caller can prefix the class (``"class 7: " + message``).
"""

from __future__ import annotations

import gc
import os
import sys
import threading
import uuid
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.linalg
import scipy.sparse
import scipy.sparse.csgraph
import scipy.sparse.linalg

# Imported at module load, not inside the functions: task threads importing sklearn submodules for the first
# time concurrently can see a partially initialised sklearn and fail with a circular-import error.
from sklearn.cluster import KMeans
from sklearn.manifold import TSNE
from threadpoolctl import threadpool_limits  # a scikit-learn dependency

from spray.config import AnalysisConfig, EmbeddingConfig
from spray.errors import DataError, RunError

__all__ = [
    "SpectralResult",
    "knn_affinity",
    "normalized_laplacian",
    "smallest_eigenpairs",
    "choose_n_clusters",
    "spectral_clustering",
    "spectral_analysis",
    "embed",
    "embedding_descriptions",
]

# Up to this many nodes the eigenpairs come from a dense LAPACK solve of the Laplacian: it is exact and
# needs no convergence checks (32 pairs of 300 nodes: 0.02 s). Above it the sparse Lanczos solver (ARPACK)
# is faster (1,000 nodes: 0.07 s against 0.22 s dense) and the only option that does not grow as N^2.
DENSE_EIGEN_MAX_N = 500

# Memory the float32 distance block of the brute-force kNN may take (rows x N x 4 bytes); selecting
# from it takes twice that again (int64 indices). Blocks of this size keep BLAS at full speed.
_KNN_BLOCK_BYTES = 128 * 2**20

# Up to this many samples the kNN graph is exact (brute force, ``_exact_knn``): a few seconds at most. Its
# cost grows as N^2 D: 2.8-3.1 s at N = 10,000 x 1024 on 2 shared cores, 6-10 s at 20,000, ~50 s at 100,000.
EXACT_KNN_MAX_N = 10_000
# Above it and up to PROJECTED_KNN_MAX_N, the projected kNN (``_knn_projected``): the c nearest in the
# leading principal components, found exactly there (groups of points skipped by a lower bound), then
# re-ranked by the distance in full dimension. Each step (components, candidates per neighbour) is tried
# in turn, the first whose recall@k, measured on RECALL_SAMPLE rows before the whole search runs, reaches
# PROJECTED_KNN_MIN_RECALL is used. 20,000 synthetic heatmaps x 1024 (benchmarks/spectral_scale.py): 48
# components and 40 candidates, recall 0.998, 0.6 s for the whole graph against 6-10 s exact, the same
# clusters; with heavy noise (--noise 1.0) 96 components (recall 0.98), and 192 at 100,000 (1.000).
# Gaussian groups in 256 dimensions needed 192. Heatmaps are smooth, so a few dozen components hold most
# of what tells them apart; white noise is the worst case, where no step reaches the threshold.
PROJECTED_KNN_MAX_N = 200_000
PROJECTED_KNN_STEPS = ((48, 4), (96, 8), (192, 16))
PROJECTED_KNN_MIN_RECALL = 0.95
# Steps after the first are tried only while N^2 x components stays below this: 100,000 samples in 192
# components took 30 s where no group could be skipped, as long as NN-descent; larger N go to it sooner.
PROJECTED_KNN_MAX_WORK = 2e12
# When no step reaches the recall: exact up to this many samples (6-10 s at 20,000), NN-descent above.
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
# nearest are kept: NN-descent's recall@10 on 20,000 Gaussian-mixture maps of 1024 values was 0.55 when
# built with 10 neighbours, 0.94 with 30 and 0.998 with 60 (0.99 and 1.0 on smooth heatmap-like maps).
APPROXIMATE_KNN_BUILD_NEIGHBORS = 30
# Rows whose exact neighbours are computed to measure the recall of an approximate graph.
RECALL_SAMPLE = 1000
KNN_METHODS = ("auto", "exact", "projected", "approximate")


@dataclass
class SpectralResult:
    """The spectral analysis of N heatmaps.

    ``labels`` are numbered by decreasing cluster size (0 is the largest). ``gaps[k - 1]`` is
    ``l_{k+1} - l_k`` for 1-based k, so the eigengap's choice is ``argmax`` over the allowed range + 1.
    ``cluster_range`` is the range of k the eigengap actually searched: the configured range, capped for
    small N (see :func:`spectral_analysis`). ``knn`` and ``eigensolver`` say how the graph and the
    eigenpairs were computed, ``notes`` what a reviewer should know (for the report).
    """

    eigenvalues: np.ndarray  # (m,) ascending, smallest eigenvalues of L = I - D^-1/2 A D^-1/2
    eigenvectors: np.ndarray  # (N, m) matching columns, unit length
    n_clusters: int  # chosen by the eigengap in cluster_range
    gaps: np.ndarray  # (m - 1,) l_{k+1} - l_k
    labels: np.ndarray  # (N,) int64 in [0, n_clusters), by decreasing size
    n_components: int  # connected components of the kNN graph
    neighbors: int  # k of the kNN graph actually used
    cluster_range: tuple[int, int] = (0, 0)  # (min, max) clusters the eigengap chose from
    knn: str = "exact"  # how the neighbours were found
    knn_recall: float = 1.0  # share of the true k nearest neighbours found (estimated on a sample if approximate)
    eigensolver: str = ""  # which solver gave the eigenpairs
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------------
# validation


def _check_maps(maps: Any, name: str = "maps") -> np.ndarray:
    """Return ``maps`` as a C-contiguous float32 (N, D) array or raise DataError."""
    array = np.asarray(maps)
    if array.ndim != 2:
        raise DataError(f"expected {name} of shape (N, D) (one flattened heatmap per row), got shape {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise DataError(f"expected at least one heatmap with at least one value, got {name} of shape {array.shape}")
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise DataError(f"expected numeric {name}, got dtype {array.dtype}")
    array = np.ascontiguousarray(array, dtype=np.float32)
    finite = np.isfinite(array).all(axis=1)
    if not finite.all():
        rows = np.flatnonzero(~finite)
        shown = ", ".join(str(i) for i in rows[:20]) + (f", ... ({len(rows)} in all)" if len(rows) > 20 else "")
        raise DataError(
            f"{len(rows)} of {len(array)} heatmaps contain NaN or inf values (rows {shown}); "
            "expected finite relevance: check the attribution of these samples"
        )
    return array


def _check_enough_samples(n_samples: int, n_neighbors: int) -> None:
    if n_samples <= n_neighbors:
        raise DataError(
            f"{n_samples} sample{'s' if n_samples != 1 else ''} but the kNN graph with analysis.neighbors = "
            f"{n_neighbors} needs at least {n_neighbors + 1}; lower analysis.neighbors to at most "
            f"{max(n_samples - 1, 1)} or audit more samples"
        )


# --------------------------------------------------------------------------------------------------
# 1. kNN graph


def _exact_knn(maps: np.ndarray, n_neighbors: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact Euclidean k nearest neighbours of every row among the other rows.

    Returns ``(indices (N, k) int64, distances (N, k) float64)``, each row sorted by (distance, index).

    Brute force by BLAS: ``|x|^2 - 2 x.y + |y|^2`` in float32 on mean-centred data (centring removes the
    common offset that makes this formula lose precision), in row blocks so that memory stays at
    ``_KNN_BLOCK_BYTES`` whatever N. float32 round-off could swap neighbours whose distances agree to ~1e-6,
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
    block = int(max(1, min(n, _KNN_BLOCK_BYTES // (4 * n))))
    indices = np.empty((n, n_neighbors), dtype=np.int64)
    distances = np.empty((n, n_neighbors), dtype=np.float64)
    for start in range(0, n, block):
        stop = min(n, start + block)
        rows = np.arange(stop - start)
        scores = centred[start:stop] @ centred.T
        scores *= -2.0
        scores += sq_norms
        scores[rows, rows + start] = np.inf
        # numpy's selection, not torch.topk (1.6x faster): torch's OpenMP threads keep spinning after it
        # and slowed the next LAPACK call on 2 cores from 0.03 s to 3-4 s
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
    by brute force against all N rows in blocks (memory stays at ``_KNN_BLOCK_BYTES`` whatever N; no copy
    of ``maps``), in the expanded float32 formula on centred maps: a directly computed squared distance
    ``d`` is within the true k nearest if ``d <= kth + tolerance`` (so ties count)."""
    n = maps.shape[0]
    centre = maps.mean(axis=0, dtype=np.float64).astype(np.float32)
    queries = maps[rows] - centre
    query_norms = np.einsum("ij,ij->i", queries, queries)
    nearest = np.full((len(rows), k), np.inf, dtype=np.float32)  # k smallest squared distances so far
    block = int(max(k, _KNN_BLOCK_BYTES // (4 * len(rows))))
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
    with _IMPORT_LOCK:
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
    # one BLAS thread: these are small products and factorisations, and with 2 threads on 2 shared cores
    # each QR of the (1024, 58) subspace took 0.8 s instead of 0.002 s (threads waiting on each other)
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
        step = max(1, _KNN_BLOCK_BYTES // (8 * 4 * n_features))
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

    _in_threads(scan, len(rows), _KNN_BLOCK_BYTES // (4 * 4 * n))
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

    _in_threads(collect, len(rows), _KNN_BLOCK_BYTES // (4 * 4 * n))
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


def _knn_method(n_samples: int) -> str:
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
    indices, distances, description, recall = _knn(maps, n_neighbors, "approximate", seed)
    return indices, distances, f"{description}: {why}", recall


def _knn(
    maps: np.ndarray, n_neighbors: int, method: str = "auto", seed: int = 0
) -> tuple[np.ndarray, np.ndarray, str, float]:
    """``(indices, distances, description, recall)`` of the kNN graph; ``method="auto"``: by N (see
    :func:`_knn_method`). The description starts with "exact" or "approximate"."""
    if method not in KNN_METHODS:
        raise ValueError(f"unknown kNN method {method!r}; expected one of {', '.join(KNN_METHODS)}")
    n = maps.shape[0]
    if method == "auto":
        method = _knn_method(n)
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


WEIGHTINGS = ("local_scaling", "connectivity")

# Zelnik-Manor & Perona (2004): the local scale of a point is the distance to its 7th neighbour.
_LOCAL_SCALE_NEIGHBOR = 7
# Edge weights never fall below exp(-30) ~ 1e-13: an edge of the kNN graph stays an edge (no node loses
# its degree to underflow, D^-1/2 stays finite), yet is weak enough to count as cut.
_MAX_EXPONENT = 30.0


def _affinity_from_neighbors(
    indices: np.ndarray, distances: np.ndarray | None = None, weighting: str = "local_scaling"
) -> scipy.sparse.csr_matrix:
    """``A = (W + W^T) / 2`` from the kNN lists; see :func:`knn_affinity` for the weights."""
    n, k = indices.shape
    if weighting == "connectivity":
        weights = np.ones(n * k, dtype=np.float64)
    elif weighting == "local_scaling":
        if distances is None:
            raise ValueError("local_scaling weights need the neighbour distances")
        scale = distances[:, min(_LOCAL_SCALE_NEIGHBOR, k) - 1].astype(np.float64)
        positive = scale[scale > 0]
        # repeated heatmaps have scale 0; flooring at a small share of the typical scale keeps the
        # exponent finite without weakening edges between ordinary neighbours
        floor = 1e-3 * float(np.median(positive)) if positive.size else 1.0
        scale = np.maximum(scale, floor)
        exponent = distances.astype(np.float64) ** 2 / (scale[:, None] * scale[indices])
        weights = np.exp(-np.minimum(exponent, _MAX_EXPONENT)).ravel()
    else:
        raise ValueError(f"unknown weighting {weighting!r}; expected one of {', '.join(WEIGHTINGS)}")
    rows = np.repeat(np.arange(n), k)
    directed = scipy.sparse.csr_matrix((weights, (rows, indices.ravel())), shape=(n, n))
    affinity = ((directed + directed.T) * 0.5).tocsr()
    affinity.sort_indices()
    return affinity


def knn_affinity(
    maps: np.ndarray, n_neighbors: int, weighting: str = "local_scaling", method: str = "auto", seed: int = 0
) -> scipy.sparse.csr_matrix:
    """Symmetric k-nearest-neighbour affinity of the rows of ``maps``.

    Parameters
    ----------
    maps : (N, D) array of finite floats, one flattened heatmap per row.
    n_neighbors : k, at most N - 1.
    weighting : "local_scaling" (default) or "connectivity".
    method : "exact" (brute force), "projected" (principal components, with its recall measured and exact
        or NN-descent if it is too low), "approximate" (pynndescent NN-descent, seeded by ``seed``) or
        "auto": exact up to ``EXACT_KNN_MAX_N`` samples, projected up to ``PROJECTED_KNN_MAX_N``,
        NN-descent above.

    Returns
    -------
    (N, N) float64 CSR matrix, symmetric, zero diagonal, at most 2 k N non-zeros, weights in (0, 1]:
    ``A = (W + W^T) / 2`` with ``W_ij`` non-zero only if j is among the k Euclidean nearest neighbours of i
    (exact, or as found by the approximate search), so a one-sided neighbour pair gets half the weight of a
    mutual one.

    - "local_scaling" (Zelnik-Manor & Perona 2004): ``W_ij = exp(-d_ij^2 / (s_i s_j))``, ``s_i`` the
      distance from i to its 7th neighbour (k-th if k < 7).
    - "connectivity": ``W_ij = 1``: CoRelAy's SparseKNN(symmetric=True), for comparison with ViRelAy.

    Why local scaling: heatmaps of one class are not equally spread. The maps a Clever Hans feature
    dominates are nearly alike (a tight group), the rest vary with the object (a diffuse one). With
    binary edges, diffuse maps that reach into the tight group bind it to the rest as strongly as its
    own members do; scaling each distance by both ends' local scale weakens exactly these edges while
    edges inside either group keep weights around exp(-1). On planted mixtures of a tight (noise 0.4), a
    diffuse (1.5) and a medium group (1.0), 5 seeds, ARI was 0.76-0.97 (local scaling) against 0.42-0.86
    (binary, one seed with the wrong k); on equally spread mixtures, mixtures with 1 % outliers and
    heatmap-like maps with an 8 % corner artifact both gave the same k and ARI. A global kernel width
    would make the graph depend on the maps' normalisation; the local scale is invariant to it. The
    kNN sparsity is kept: the kernel only re-weights the k-NN edges, it adds none.
    """
    maps = _check_maps(maps)
    n_neighbors = int(n_neighbors)
    if n_neighbors < 1:
        raise ValueError(f"expected n_neighbors >= 1, got {n_neighbors}")
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {weighting!r}; expected one of {', '.join(WEIGHTINGS)}")
    _check_enough_samples(maps.shape[0], n_neighbors)
    indices, distances, _, _ = _knn(maps, n_neighbors, method, seed)
    return _affinity_from_neighbors(indices, distances, weighting)


# --------------------------------------------------------------------------------------------------
# 2. Laplacian and 3. eigenpairs


def normalized_laplacian(affinity: Any) -> scipy.sparse.csr_matrix:
    """Symmetric normalised Laplacian ``L = I - D^-1/2 A D^-1/2`` of a symmetric non-negative affinity.

    ``affinity``: (N, N) sparse or dense, symmetric, non-negative, every node with positive degree.
    Returns an (N, N) float64 CSR matrix; its eigenvalues lie in [0, 2], 0 with multiplicity equal to the
    number of connected components.
    """
    a = scipy.sparse.csr_matrix(affinity, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"expected a square affinity matrix, got shape {a.shape}")
    if a.nnz and a.data.min() < 0:
        raise ValueError("expected a non-negative affinity, found negative weights")
    asymmetry = abs(a - a.T)
    if asymmetry.nnz and asymmetry.max() > 1e-12 * max(1.0, abs(a).max()):
        raise ValueError("expected a symmetric affinity matrix (A == A.T)")
    degree = np.asarray(a.sum(axis=1)).ravel()
    if (degree <= 0).any():
        isolated = np.flatnonzero(degree <= 0)
        raise ValueError(f"expected every node to have an edge; nodes {isolated[:20].tolist()} have none")
    scale = scipy.sparse.diags(1.0 / np.sqrt(degree))
    normalized = scale @ a @ scale
    laplacian = scipy.sparse.identity(a.shape[0], dtype=np.float64, format="csr") - normalized
    laplacian = laplacian.tocsr()
    laplacian.sort_indices()
    return laplacian


def _fix_signs(vectors: np.ndarray) -> np.ndarray:
    """Make the largest-magnitude entry of each column positive: eigenvectors are defined up to sign, and
    a canonical sign keeps results identical across solvers and runs."""
    pivot = np.argmax(np.abs(vectors), axis=0)
    signs = np.sign(vectors[pivot, np.arange(vectors.shape[1])])
    signs[signs == 0] = 1.0
    return vectors * signs


def _lanczos_smallest(
    normalized_affinity: Any, size: int, n: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """``1 - mu`` and vectors for the n largest algebraic eigenvalues ``mu`` of ``D^-1/2 A D^-1/2``."""
    start = np.random.default_rng(seed).uniform(-1.0, 1.0, size)
    try:
        mu, vectors = scipy.sparse.linalg.eigsh(
            normalized_affinity, k=n, which="LA", v0=start, ncv=min(size, max(2 * n + 1, 64)), tol=1e-10
        )
    except scipy.sparse.linalg.ArpackNoConvergence as error:
        raise RunError(
            f"the eigensolver did not converge for {n} eigenpairs of a {size}-node graph "
            f"({len(error.eigenvalues)} converged); try fewer analysis.eigenvalues"
        ) from None
    order = np.argsort(-mu, kind="stable")
    return 1.0 - mu[order], vectors[:, order]


def _connected_eigenpairs(laplacian: scipy.sparse.csr_matrix, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Smallest eigenpairs of the Laplacian of one connected graph (0 is a simple eigenvalue)."""
    size = laplacian.shape[0]
    if size <= DENSE_EIGEN_MAX_N or n >= size - 1:
        return scipy.linalg.eigh(laplacian.toarray(), subset_by_index=[0, n - 1])
    affinity = scipy.sparse.identity(size, dtype=np.float64, format="csr") - laplacian
    return _lanczos_smallest(affinity, size, n, seed)


def smallest_eigenpairs(laplacian: Any, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The ``n`` smallest eigenvalues (ascending) and eigenvectors of a normalised Laplacian.

    Parameters
    ----------
    laplacian : (N, N) symmetric, sparse or dense, eigenvalues in [0, 2] (as from :func:`normalized_laplacian`).
    n : how many, 1 <= n <= N.
    seed : seeds the Lanczos start vector, so the result is identical between runs.

    Returns
    -------
    eigenvalues (n,) float64 ascending, tiny negative round-off clamped to 0;
    eigenvectors (N, n) float64, unit columns, each with its largest-magnitude entry positive.

    Solvers. A connected graph of up to ``DENSE_EIGEN_MAX_N`` nodes (or with n close to N) gets a dense
    LAPACK solve. A larger one ARPACK's Lanczos on ``M = I - L = D^-1/2 A D^-1/2`` for its *largest
    algebraic* eigenvalues ``mu``, returned as ``1 - mu``: the same eigenvectors, and the wanted end of
    the spectrum is the one Lanczos converges to without a factorisation. (Largest *magnitude* of M would
    also pick eigenvalues near -1, i.e. L near 2: the wrong end; shift-invert around 0 needs a sparse LU
    of L, whose fill-in on kNN graphs of high-dimensional data is close to dense.)

    Components. A graph with c connected components has eigenvalue 0 c times, and a Krylov solver started
    from one vector finds only some copies of a repeated eigenvalue (measured: 6 of 9 zeros on a
    100,000-node graph of 9 components), which would make the eigengap pick the wrong k. So each
    component is solved on its own (the Laplacian is block-diagonal: its spectrum is the union of theirs,
    each eigenvector zero outside its component) and the n smallest are kept. Each component contributes
    its 0, so at most n - c + 1 pairs are needed of each, and fewer are asked first (see
    :func:`_eigenpairs_by_component`): the result is the same. This is also faster than one run: 9 components
    of ~11,000 nodes took 2.1 s one by one, 6.6 s in one Lanczos run with their null vectors deflated.
    """
    lap = scipy.sparse.csr_matrix(laplacian, dtype=np.float64)
    size = lap.shape[0]
    if lap.ndim != 2 or lap.shape[1] != size:
        raise ValueError(f"expected a square Laplacian, got shape {lap.shape}")
    n = int(n)
    if not 1 <= n <= size:
        raise ValueError(f"expected 1 <= n <= N = {size} eigenpairs, got n = {n}")
    n_components, component = scipy.sparse.csgraph.connected_components(lap, directed=False)
    # One BLAS thread: ARPACK's work is many small, memory-bound BLAS-2 calls, and these dense problems
    # are small; with 2 threads on 2 shared cores most time went to waking threads (measured: eigsh on
    # 100,000 nodes 36 s -> 14 s, dense eigh of 1,000 nodes 0.84 s -> 0.22 s with 1 thread)
    with threadpool_limits(1, user_api="blas"):
        if n_components == 1:
            values, vectors = _connected_eigenpairs(lap, n, seed)
        else:
            values, vectors = _eigenpairs_by_component(lap, n, seed, n_components, component)
    if values.min() < -1e-8:
        raise RunError(f"the Laplacian has a negative eigenvalue {values.min():.3g}: it is not a normalised Laplacian")
    values = np.clip(values, 0.0, 2.0)
    return values, _fix_signs(vectors)


def _eigenpairs_by_component(
    lap: scipy.sparse.csr_matrix,
    n: int,
    seed: int,
    n_components: int,
    component: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    size = lap.shape[0]
    sizes = np.bincount(component, minlength=n_components)
    # every component contributes its 0, so none contributes more than n - c + 1 of the n smallest
    most = np.minimum(max(1, n - n_components + 1), sizes)
    # First each component is asked for a little more than its share by size (Lanczos' cost grows with the
    # pairs asked: 25 pairs of a 2,800-node component took 0.032 s, 5 pairs 0.009 s). A component is asked
    # again, for twice as many, while even its largest pair so far is not above the n-th smallest of all:
    # then it might hold more of the n smallest. The pairs kept are those that asking every component
    # for ``most`` pairs would keep.
    asked = np.minimum(most, np.ceil(1.5 * n * sizes / size).astype(np.int64) + 2)
    order = np.argsort(component, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    nodes_of = [order[bounds[c] : bounds[c + 1]] for c in range(n_components)]
    solved: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    pending = list(range(n_components))
    while pending:
        for c in pending:
            nodes = nodes_of[c]
            solved[c] = _connected_eigenpairs(lap[nodes][:, nodes].tocsr(), int(asked[c]), seed)
        everything = np.sort(np.round(np.concatenate([solved[c][0] for c in range(n_components)]), 12))
        cut = everything[n - 1] if len(everything) >= n else np.inf
        pending = [c for c in range(n_components) if asked[c] < most[c] and np.round(solved[c][0][-1], 12) <= cut]
        for c in pending:
            asked[c] = min(most[c], 2 * asked[c])
    groups = [(nodes_of[c], *solved[c]) for c in range(n_components)]  # (nodes, values, vectors on nodes)
    # merge: the n smallest overall; equal eigenvalues (the zeros) in the order of their group and column
    keys = [(np.round(v, 12), np.full(len(v), g), np.arange(len(v))) for g, (_, v, _) in enumerate(groups)]
    rounded, group_of, column_of = (np.concatenate(parts) for parts in zip(*keys))
    chosen = np.lexsort((column_of, group_of, rounded))[:n]
    values = np.concatenate([v for _, v, _ in groups])[chosen]
    vectors = np.zeros((size, len(chosen)))
    for j, (g, col) in enumerate(zip(group_of[chosen], column_of[chosen])):
        nodes, _, vecs = groups[g]
        vectors[nodes, j] = vecs[:, col]
    return values, vectors


# --------------------------------------------------------------------------------------------------
# 4. eigengap and 5. clustering


def choose_n_clusters(eigenvalues: np.ndarray, min_clusters: int, max_clusters: int) -> int:
    """The number of clusters k in [min_clusters, max_clusters] after which the eigengap is largest.

    ``eigenvalues`` ascending (l_1 <= l_2 <= ...); returns ``argmax_k (l_{k+1} - l_k)`` (von Luxburg 2007),
    the smallest such k on a tie. Needs ``max_clusters + 1 <= len(eigenvalues)``.
    """
    values = np.asarray(eigenvalues, dtype=np.float64)
    if values.ndim != 1:
        raise ValueError(f"expected a 1-D array of eigenvalues, got shape {values.shape}")
    if not 1 <= min_clusters <= max_clusters:
        raise ValueError(f"expected 1 <= min_clusters <= max_clusters, got {min_clusters} and {max_clusters}")
    if max_clusters + 1 > len(values):
        raise ValueError(
            f"max_clusters = {max_clusters} needs {max_clusters + 1} eigenvalues (the gap after the k-th "
            f"needs the (k+1)-th), got {len(values)}"
        )
    gaps = np.diff(values)
    window = gaps[min_clusters - 1 : max_clusters]
    return int(min_clusters + np.argmax(window))


def _relabel_by_size(labels: np.ndarray) -> np.ndarray:
    """Renumber so that cluster 0 is the largest; equal sizes keep the order of their first member."""
    ids, first, counts = np.unique(labels, return_index=True, return_counts=True)
    order = np.lexsort((first, -counts))
    mapping = np.empty(ids.max() + 1, dtype=np.int64)
    mapping[ids[order]] = np.arange(len(ids))
    return mapping[labels]


def spectral_clustering(eigenvectors: np.ndarray, n_clusters: int, seed: int = 0) -> np.ndarray:
    """Ng-Jordan-Weiss clustering: k-means on the rows of the first ``n_clusters`` eigenvectors, each row
    scaled to unit length.

    ``eigenvectors``: (N, m) of the normalised Laplacian, ascending eigenvalues, m >= n_clusters.
    Returns (N,) int64 labels in [0, n_clusters), 0 the largest cluster. k-means uses 10 seeded restarts.
    """
    vectors = np.asarray(eigenvectors, dtype=np.float64)
    if vectors.ndim != 2:
        raise ValueError(f"expected eigenvectors of shape (N, m), got shape {vectors.shape}")
    n_clusters = int(n_clusters)
    if not 1 <= n_clusters <= min(vectors.shape):
        raise ValueError(f"expected 1 <= n_clusters <= min(N, m) = {min(vectors.shape)}, got {n_clusters}")
    if n_clusters == 1:
        return np.zeros(vectors.shape[0], dtype=np.int64)
    rows = vectors[:, :n_clusters]
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    rows = rows / np.maximum(norms, np.finfo(np.float64).tiny)
    kmeans = KMeans(n_clusters=n_clusters, n_init=10, random_state=seed)
    # one BLAS thread (k-means' own OpenMP threads stay): its products are small, and 2 BLAS threads on 2
    # shared cores made this step take 0.04-0.7 s at N = 20,000 instead of 0.04 s
    with threadpool_limits(1, user_api="blas"):
        labels = kmeans.fit_predict(rows)
    return _relabel_by_size(labels.astype(np.int64))


# --------------------------------------------------------------------------------------------------
# the whole analysis


def _cluster_range(n_samples: int, n_eigenvalues: int, config: AnalysisConfig) -> tuple[int, int]:
    """The range of k the eigengap may choose from, capped for small N.

    The kNN graph cannot set apart a group smaller than its neighbourhood (each member's k neighbours
    would reach outside), so more than ``N // neighbors`` clusters cannot be told apart by the spectrum:
    the upper end is ``min(max_clusters, N // neighbors, m - 1)`` (m - 1: the gap after k needs l_{k+1}),
    and the lower end never exceeds it.
    """
    upper = max(1, min(config.max_clusters, n_samples // config.neighbors, n_eigenvalues - 1))
    lower = min(config.min_clusters, upper)
    return lower, upper


def spectral_analysis(maps: np.ndarray, config: AnalysisConfig) -> SpectralResult:
    """SpRAY's spectral analysis of the heatmaps of one class.

    Parameters
    ----------
    maps : (N, D) float32, one preprocessed, flattened heatmap per sample; finite.
    config : neighbors (k of the kNN graph), eigenvalues (m, capped at N - 1), min/max_clusters, seed.

    Returns
    -------
    SpectralResult with m = min(config.eigenvalues, N - 1) eigenpairs.

    Raises
    ------
    DataError : N <= config.neighbors, or rows with NaN/inf (the message names the rows).
    """
    maps = _check_maps(maps)
    n_samples = maps.shape[0]
    _check_enough_samples(n_samples, config.neighbors)
    notes: list[str] = []

    indices, distances, knn_description, recall = _knn(maps, config.neighbors, "auto", config.seed)
    if recall < 0.9:
        notes.append(
            f"the approximate kNN graph found {recall:.0%} of the true {config.neighbors} nearest neighbours "
            "(on a sample): the clusters may differ from an exact analysis"
        )
    affinity = _affinity_from_neighbors(indices, distances)
    n_components, component = scipy.sparse.csgraph.connected_components(affinity, directed=False)
    laplacian = normalized_laplacian(affinity)
    m = min(config.eigenvalues, n_samples - 1)
    values, vectors = smallest_eigenpairs(laplacian, m, seed=config.seed)
    largest = int(np.bincount(component).max())
    solver = (
        "dense LAPACK (scipy.linalg.eigh)"
        if largest <= DENSE_EIGEN_MAX_N or m >= largest - 1
        else "ARPACK Lanczos (scipy.sparse.linalg.eigsh) on D^-1/2 A D^-1/2"
    ) + (", per connected component" if n_components > 1 else "")

    lower, upper = _cluster_range(n_samples, m, config)
    if (lower, upper) != (config.min_clusters, config.max_clusters):
        notes.append(
            f"the eigengap chose from {lower}..{upper} clusters instead of the configured "
            f"{config.min_clusters}..{config.max_clusters}: {n_samples} samples with {config.neighbors} "
            f"neighbours each cannot separate more than {upper} groups"
        )
    n_clusters = choose_n_clusters(values, lower, upper) if m >= 2 else 1
    labels = spectral_clustering(vectors, n_clusters, seed=config.seed)
    if n_components > 1:
        notes.append(
            f"the kNN graph has {n_components} connected components ({n_components} eigenvalues are 0): "
            "groups of heatmaps that share no neighbours"
            + (f"; only {upper} clusters were allowed, so some components were merged" if n_components > upper else "")
        )
    return SpectralResult(
        eigenvalues=values,
        eigenvectors=vectors,
        n_clusters=n_clusters,
        gaps=np.diff(values),
        labels=labels,
        n_components=int(n_components),
        neighbors=config.neighbors,
        cluster_range=(lower, upper),
        knn=knn_description,
        knn_recall=recall,
        eigensolver=solver,
        notes=notes,
    )


# --------------------------------------------------------------------------------------------------
# 2-D embeddings


# Up to this many samples t-SNE embeds all of them (scikit-learn's Barnes-Hut: ~1 min for 10,000 on 2
# cores, impractical beyond ~25,000). Above it, t-SNE embeds a seeded sample of this size and every other
# sample is placed at the mean position of its nearest sampled neighbours. openTSNE's FFT t-SNE embeds
# all points but took 509 s for 100,000 here (and is another dependency); the report says which was used.
TSNE_MAX_N = 10_000
# How many nearest sampled neighbours place a sample that t-SNE did not embed.
TSNE_PLACEMENT_NEIGHBORS = 10


def _tsne_perplexity(n_samples: int, config: EmbeddingConfig) -> float:
    return float(min(config.perplexity, max((min(n_samples, TSNE_MAX_N) - 1) / 3.0, 1.0)))


def _umap_neighbors(n_samples: int, config: EmbeddingConfig) -> int:
    return int(min(config.umap_neighbors, n_samples - 1))


def embedding_descriptions(n_samples: int, config: EmbeddingConfig) -> dict[str, str]:
    """What :func:`embed` computes for N samples, one line per method, for the report."""
    perplexity = _tsne_perplexity(n_samples, config)
    if n_samples <= TSNE_MAX_N:
        tsne = f"t-SNE of all {n_samples} samples (scikit-learn, Barnes-Hut), perplexity {perplexity:g}"
    else:
        tsne = (
            f"t-SNE of a random sample of {TSNE_MAX_N} of the {n_samples} samples (scikit-learn, Barnes-Hut), "
            f"perplexity {perplexity:g}; the other {n_samples - TSNE_MAX_N} are placed at the mean position of "
            f"their {TSNE_PLACEMENT_NEIGHBORS} nearest sampled neighbours"
        )
    knn = {
        "exact": "exact",
        "projected": "approximate (principal components)",
        "approximate": "approximate (pynndescent)",
    }[_knn_method(n_samples)]
    descriptions = {
        "tsne": f"{tsne}, seed {config.seed}",
        "umap": f"UMAP (umap-learn) of all {n_samples} samples on the {knn} {_umap_neighbors(n_samples, config)}"
        f"-nearest-neighbour graph, min_dist {config.umap_min_dist:g}, seed {config.seed}",
    }
    return {name: descriptions[name] for name in config.methods}


def _nearest_reference(queries: np.ndarray, reference: np.ndarray, k: int) -> np.ndarray:
    """Indices (len(queries), k) of the k nearest reference rows of each query (brute force, float32)."""
    sq_norms = np.einsum("ij,ij->i", reference, reference)
    block = int(max(1, _KNN_BLOCK_BYTES // (4 * len(reference))))
    found = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), block):
        scores = queries[start : start + block] @ reference.T
        scores *= -2.0
        scores += sq_norms
        found[start : start + block] = np.argpartition(scores, k - 1, axis=1)[:, :k]
    return found


def _tsne(maps: np.ndarray, config: EmbeddingConfig) -> np.ndarray:
    n_samples = maps.shape[0]
    tsne = TSNE(
        n_components=2,
        perplexity=_tsne_perplexity(n_samples, config),
        init="pca",
        learning_rate="auto",
        random_state=config.seed,
    )
    if n_samples <= TSNE_MAX_N:
        return tsne.fit_transform(maps).astype(np.float32)
    sampled = np.sort(np.random.default_rng(config.seed).choice(n_samples, TSNE_MAX_N, replace=False))
    rest = np.setdiff1d(np.arange(n_samples), sampled)
    coordinates = np.empty((n_samples, 2), dtype=np.float32)
    coordinates[sampled] = tsne.fit_transform(maps[sampled])
    centre = maps.mean(axis=0, dtype=np.float64).astype(np.float32)
    nearest = _nearest_reference(maps[rest] - centre, maps[sampled] - centre, TSNE_PLACEMENT_NEIGHBORS)
    coordinates[rest] = coordinates[sampled][nearest].mean(axis=1)
    return coordinates


_CACHED_PACKAGES: set[str] = set()
# umap-learn and pynndescent stay lazy (imported only when asked for), so their first import can happen in
# several task threads at once; one lock makes it happen once (see the sklearn imports at the top)
_IMPORT_LOCK = threading.RLock()


def _cache_numba_functions(package: str) -> None:
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
    """Import pynndescent with numba's on-disk cache switched on (see :func:`_cache_numba_functions`)."""
    with _IMPORT_LOCK:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # numba threading-layer notices
            import pynndescent
            import pynndescent.distances
            import pynndescent.pynndescent_
            import pynndescent.rp_trees
            import pynndescent.utils
        _cache_numba_functions("pynndescent")
    return pynndescent


def _import_umap() -> Any:
    """Import umap-learn (only when an embedding asks for it) with numba's on-disk cache switched on."""
    with _IMPORT_LOCK:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # umap's import warns about optional TensorFlow
            import umap
            import umap.layouts
            import umap.sparse
            import umap.spectral
            import umap.umap_
            import umap.utils
        _cache_numba_functions("umap")
    return umap


def _umap(maps: np.ndarray, config: EmbeddingConfig) -> np.ndarray:
    umap = _import_umap()
    n_samples = maps.shape[0]
    n_neighbors = _umap_neighbors(n_samples, config)
    # UMAP gets spray's own kNN graph (the sample itself first, as umap-learn lists it): exact or projected
    # up to PROJECTED_KNN_MAX_N samples, where umap-learn would otherwise run pynndescent and pay the JIT
    # of its nn_descent (3-4 s per process, 15-40 s before spray cached the rest) for a rougher graph
    indices, distances, _, _ = _knn(maps, n_neighbors - 1, "auto", config.seed)
    own = np.arange(n_samples)[:, None]
    precomputed = (
        np.hstack([own, indices]).astype(np.int64),
        np.hstack([np.zeros((n_samples, 1)), distances]).astype(np.float32),
        None,
    )
    reducer = umap.UMAP(
        n_components=2,
        n_neighbors=n_neighbors,
        min_dist=config.umap_min_dist,
        random_state=config.seed,
        n_jobs=1,  # a seed makes umap single-threaded anyway; saying so silences its warning
        # spectral initialisation needs more points than dimensions + 1; below that, random is all there is
        init="spectral" if n_samples > 10 else "random",
        precomputed_knn=precomputed,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(reducer.fit_transform(maps), dtype=np.float32)


def embed(maps: np.ndarray, config: EmbeddingConfig) -> dict[str, np.ndarray]:
    """2-D embeddings of the heatmaps for the report.

    ``maps``: (N, D), finite, N >= 3. Returns ``{name: (N, 2) float32}`` for each name in
    ``config.methods``:

    - "tsne": scikit-learn t-SNE with perplexity min(perplexity, (N - 1) / 3); above ``TSNE_MAX_N``
      samples, t-SNE of a seeded sample with the others placed by their nearest sampled neighbours;
    - "umap": umap-learn with n_neighbors min(umap_neighbors, N - 1), on spray's kNN graph.

    :func:`embedding_descriptions` says which, for the report. Seeded: the same maps and config give the
    same coordinates. umap-learn is imported only when asked for.
    """
    maps = _check_maps(maps)
    if maps.shape[0] < 3:
        raise DataError(f"{maps.shape[0]} samples cannot be embedded in 2-D; expected at least 3")
    result: dict[str, np.ndarray] = {}
    for name in config.methods:
        result[name] = _tsne(maps, config) if name == "tsne" else _umap(maps, config)
    return result
