"""The k-nearest-neighbour graph of the maps: exact, projected or approximate, by N, with measured recall.

``nearest_neighbors(maps, k)`` returns each map's k nearest other maps (Euclidean) and says how they were
found. Which search runs depends on N (``method="auto"``) and the limits in :class:`KnnLimits`:

- up to ``exact_max_n`` samples: exact, brute force in blocks (BLAS);
- up to ``projected_max_n``: the c nearest in the leading principal components, found exactly there,
  then re-ranked by the full distance; used only when its recall@k, measured on ``recall_sample`` rows
  before the search runs, reaches ``min_recall`` (else more components, then a fallback);
- above: NN-descent (pynndescent, a dependency of umap-learn), its recall measured on ``recall_sample`` rows.

Why each limit is where it is, and why these searches and not faiss's HNSW or IVF indexes (slower here at
every N measured, on separated and on edge-sharing groups): ``docs/scaling.md``, measured by
``benchmarks/spectral_scale.py --knn-paths``.
:func:`spray.analysis.affinity.knn_affinity` turns the graph into affinities.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from threadpoolctl import threadpool_limits  # a scikit-learn dependency

from spray.analysis._exact import estimate_recall, exact_knn, recall_sample
from spray.analysis._lazy import import_pynndescent
from spray.analysis._projected import principal_coordinates, projected_knn, projected_recall
from spray.errors import RunError

__all__ = ["KNN_METHODS", "KnnGraph", "KnnLimits", "knn_method", "nearest_neighbors"]

KNN_METHODS = ("auto", "exact", "projected", "approximate")


@dataclass(frozen=True)
class KnnLimits:
    """Which kNN search runs for N samples, and how the approximate ones are tuned.

    exact_max_n : up to this N, the exact (brute-force) search; its cost grows as N^2 D.
    projected_max_n : up to this N (above ``exact_max_n``), the projected search.
    projected_steps : (principal components, candidates per neighbour), tried in turn; the first whose
        recall reaches ``min_recall`` is used. Heatmaps are smooth, so a few dozen components hold most of
        what tells them apart; white noise is the worst case, where no step reaches the threshold.
    min_recall : recall@k an approximate graph must reach on the sample to be used as it is.
    projected_max_work : steps after the first are tried only while N^2 x components stays below this.
    exact_fallback_max_n : when no projected step reaches ``min_recall``: exact up to this N, else the
        approximate search.
    recall_sample : rows whose exact neighbours are computed to measure a recall.
    group_size : points per group of the projected search (the blocks of its GEMMs).
    build_neighbors : NN-descent builds its graph with this many neighbours (or 2k, if larger) and keeps
        the k nearest: a wider search is what buys its recall.
    """

    exact_max_n: int = 10_000
    projected_max_n: int = 200_000
    projected_steps: tuple[tuple[int, int], ...] = ((48, 4), (96, 8), (192, 16))
    min_recall: float = 0.95
    projected_max_work: float = 2e12
    exact_fallback_max_n: int = 25_000
    recall_sample: int = 1000
    group_size: int = 512
    build_neighbors: int = 30

    def __post_init__(self) -> None:
        if not 0.0 < self.min_recall <= 1.0:
            raise ValueError(f"expected 0 < min_recall <= 1, got {self.min_recall}")
        if not self.projected_steps or any(d < 1 or c < 1 for d, c in self.projected_steps):
            raise ValueError(f"expected projected_steps of positive (components, candidates), got {self.projected_steps}")
        for name in ("exact_max_n", "projected_max_n", "recall_sample", "group_size", "build_neighbors"):
            if getattr(self, name) < 1:
                raise ValueError(f"expected {name} >= 1, got {getattr(self, name)}")


DEFAULT_LIMITS = KnnLimits()


class KnnGraph(NamedTuple):
    """Each sample's k nearest other samples: ``indices`` (N, k) int64 and ``distances`` (N, k) float64,
    each row sorted by (distance, index); ``description`` says what search found them (it starts with
    "exact" or "approximate"), ``recall`` the share of the true k nearest found (1.0 if exact, else
    measured on a sample)."""

    indices: np.ndarray
    distances: np.ndarray
    description: str
    recall: float


def knn_method(n_samples: int, limits: KnnLimits = DEFAULT_LIMITS) -> str:
    """What ``method="auto"`` tries first for N samples: "exact", "projected" or "approximate"."""
    if n_samples <= limits.exact_max_n:
        return "exact"
    return "projected" if n_samples <= limits.projected_max_n else "approximate"


def nearest_neighbors(
    maps: np.ndarray, n_neighbors: int, method: str = "auto", seed: int = 0, limits: KnnLimits = DEFAULT_LIMITS
) -> KnnGraph:
    """The k nearest other rows of every row of ``maps`` (N, D) float32, Euclidean.

    ``method``: "auto" (by N, :func:`knn_method`), "exact", "projected" or "approximate" (NN-descent). Seeded: the same maps
    give the same graph. A sample is excluded from its own neighbours by index, so duplicated maps are each
    other's neighbours at distance 0.
    """
    if method not in KNN_METHODS:
        raise ValueError(f"unknown kNN method {method!r}; expected one of {', '.join(KNN_METHODS)}")
    if method == "auto":
        method = knn_method(maps.shape[0], limits)
    if method == "exact":
        indices, distances = exact_knn(maps, n_neighbors)
        return KnnGraph(indices, distances, "exact (brute force, Euclidean)", 1.0)
    if method == "projected":
        return _projected(maps, n_neighbors, seed, limits)
    return _nndescent(maps, n_neighbors, seed, limits)


def _projected(maps: np.ndarray, n_neighbors: int, seed: int, limits: KnnLimits) -> KnnGraph:
    """The projected kNN with the fewest principal components and candidates whose recall (measured
    first, :func:`spray.analysis._projected.projected_recall`) reaches ``limits.min_recall``; if none does,
    the exact kNN up to ``limits.exact_fallback_max_n`` samples, the approximate search above."""
    n, n_features = maps.shape
    rows = recall_sample(n, seed, limits.recall_sample)
    truth = None
    tried: list[str] = []
    for dims, per_neighbor in limits.projected_steps:
        dims = min(dims, n_features)
        if tried and float(n) ** 2 * dims > limits.projected_max_work:
            break
        candidates = per_neighbor * n_neighbors
        # one BLAS thread: the products here are small or run in threads of their own; 2 BLAS threads on
        # 2 shared cores made them erratically slow
        with threadpool_limits(1, user_api="blas"):
            coordinates = principal_coordinates(maps, dims, seed)
            recall, truth = projected_recall(maps, coordinates, rows, n_neighbors, candidates, truth)
            if recall >= limits.min_recall:
                indices, distances = projected_knn(maps, coordinates, n_neighbors, candidates, seed, limits.group_size)
                description = (
                    f"approximate ({min(candidates, n - 1)} nearest in {dims} principal components, re-ranked "
                    f"in full dimension, Euclidean); recall@{n_neighbors} {recall:.3f} measured on {len(rows)} samples"
                )
                return KnnGraph(indices, distances, description, recall)
        tried.append(f"{recall:.3f} with {dims} components")
        if dims >= n_features:
            break
    why = f"the projected search's recall@{n_neighbors} was {', '.join(tried)} (below {limits.min_recall})"
    if n <= limits.exact_fallback_max_n:
        indices, distances = exact_knn(maps, n_neighbors)
        return KnnGraph(indices, distances, f"exact (brute force, Euclidean): {why}", 1.0)
    graph = nearest_neighbors(maps, n_neighbors, "approximate", seed, limits)
    return graph._replace(description=f"{graph.description}: {why}")


def _without_self(found: np.ndarray, found_distances: np.ndarray, n_neighbors: int) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest of an approximate search's lists (N, >k) that include the sample itself: the sample
    is dropped by index (duplicates may come first), as are missing entries (-1); sorted by (distance, index)."""
    found = found.astype(np.int64)
    found_distances = found_distances.astype(np.float64)
    own_entry = (found == np.arange(len(found))[:, None]) | (found < 0)
    found_distances[own_entry] = np.inf
    order = np.lexsort((found, found_distances), axis=1)[:, :n_neighbors]
    indices = np.take_along_axis(found, order, axis=1)
    distances = np.take_along_axis(found_distances, order, axis=1)
    if not np.isfinite(distances).all():
        raise RunError(
            f"approximate kNN found fewer than {n_neighbors} neighbours for some samples; lower analysis.neighbors"
        )
    return indices, distances


def _nndescent(maps: np.ndarray, n_neighbors: int, seed: int, limits: KnnLimits) -> KnnGraph:
    """Approximate kNN by NN-descent (pynndescent), built with ``max(build_neighbors, 2 k) + 1`` neighbours
    (the +1 is the sample itself, which NN-descent lists) of which the k nearest are kept."""
    pynndescent = import_pynndescent()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pynndescent warns about numba/TBB threading layers
        build = min(maps.shape[0] - 1, max(limits.build_neighbors, 2 * n_neighbors)) + 1
        index = pynndescent.NNDescent(
            maps, n_neighbors=build, metric="euclidean", random_state=seed, n_jobs=-1, low_memory=True
        )
        found, found_distances = index.neighbor_graph
    indices, distances = _without_self(found, found_distances, n_neighbors)
    recall = estimate_recall(maps, indices, seed, limits.recall_sample)
    description = (
        f"approximate (pynndescent NN-descent, Euclidean); recall@{n_neighbors} {recall:.3f} "
        f"measured on {min(limits.recall_sample, len(maps))} samples"
    )
    return KnnGraph(indices, distances, description, recall)
