"""Stage 3: spectral relevance analysis (SpRAY) of one class's preprocessed heatmaps.

The maps of one class, ``(N, D)`` float32 (D = h * w of the preprocessed heatmaps), go through:

1. a symmetric k-nearest-neighbour affinity graph (Euclidean kNN: exact for small N, above that
   approximate with a recall measured before it is used; locally scaled weights; sparse;
   :mod:`spray.analysis.neighbors`, :mod:`spray.analysis.affinity`),
2. the symmetric normalised Laplacian ``L = I - D^-1/2 A D^-1/2``,
3. its ``m`` smallest eigenvalues and eigenvectors (ascending),
4. the eigengap ``argmax_k (l_{k+1} - l_k)`` over the configured range of k (von Luxburg 2007)
   (2 to 4: :mod:`spray.analysis.eigenpairs`),
5. k-means on the rows of the first k eigenvectors, each row normalised to unit length (Ng, Jordan, Weiss
   2001; :mod:`spray.analysis.clustering`),

and separately into 2-D t-SNE and UMAP embeddings for the report (:mod:`spray.analysis.embedding`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse.csgraph

from spray.analysis._maps import check_enough_samples, check_maps, distinct_rows, relabel_by_size
from spray.analysis.affinity import affinity_from_neighbors
from spray.analysis.clustering import spectral_clustering
from spray.analysis.eigenpairs import (
    DENSE_EIGEN_MAX_N,
    choose_n_clusters,
    eigensolver_description,
    normalized_laplacian,
    smallest_eigenpairs,
)
from spray.analysis.neighbors import DEFAULT_LIMITS, KnnLimits, nearest_neighbors
from spray.config import AnalysisConfig

__all__ = ["SpectralResult", "cluster_range", "spectral_analysis"]

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

def cluster_range(n_samples: int, n_eigenvalues: int, config: AnalysisConfig) -> tuple[int, int]:
    """The range of k the eigengap may choose from, capped for small N.

    The kNN graph cannot set apart a group smaller than its neighbourhood (each member's k neighbours
    would reach outside), so more than ``N // neighbors`` clusters cannot be told apart by the spectrum:
    the upper end is ``min(max_clusters, N // neighbors, m - 1)`` (m - 1: the gap after k needs l_{k+1}),
    and the lower end never exceeds it.
    """
    upper = max(1, min(config.max_clusters, n_samples // config.neighbors, n_eigenvalues - 1))
    lower = min(config.min_clusters, upper)
    return lower, upper

def spectral_analysis(
    maps: np.ndarray,
    config: AnalysisConfig,
    knn_limits: KnnLimits = DEFAULT_LIMITS,
    dense_eigen_max_n: int = DENSE_EIGEN_MAX_N,
) -> SpectralResult:
    """SpRAY's spectral analysis of the heatmaps of one class.

    Parameters
    ----------
    maps : (N, D) float32, one preprocessed, flattened heatmap per sample; finite.
    config : neighbors (k of the kNN graph), eigenvalues (m, capped at N - 1), min/max_clusters, seed.
    knn_limits : which kNN search runs for which N (:class:`spray.analysis.neighbors.KnnLimits`).
    dense_eigen_max_n : connected components up to this many nodes get the dense eigensolver
        (:func:`spray.analysis.eigenpairs.smallest_eigenpairs`).

    Returns
    -------
    SpectralResult with m = min(config.eigenvalues, U - 1) eigenpairs, U the number of distinct maps.
    Identical maps are one node of the graph and share a cluster (eigenvectors are repeated for them); a
    class with no more than ``neighbors`` distinct maps (all zero, constant) has no structure to find: one
    cluster, one eigenvalue 0, and a note that says so.

    Raises
    ------
    DataError : N <= config.neighbors, or rows with NaN/inf (the message names the rows).
    """
    maps = check_maps(maps)
    n_samples = maps.shape[0]
    check_enough_samples(n_samples, config.neighbors)
    distinct, inverse = distinct_rows(maps)
    if len(distinct) <= config.neighbors:
        return _no_structure(n_samples, len(distinct), config)
    result = _spectral_analysis(distinct, config, knn_limits, dense_eigen_max_n)
    if len(distinct) == n_samples:
        return result
    # identical heatmaps are one node of the graph, so they always share a cluster
    result.eigenvectors = result.eigenvectors[inverse]
    result.labels = relabel_by_size(result.labels[inverse])
    result.notes.append(f"{n_samples - len(distinct)} of the {n_samples} heatmaps repeat another exactly; "
                        f"the graph was built on the {len(distinct)} distinct ones and repeats share their cluster")
    return result

def _no_structure(n_samples: int, n_distinct: int, config: AnalysisConfig) -> SpectralResult:
    """The result for a class whose heatmaps are too few distinct ones for a kNN graph (all zero, constant,
    or repeats): one cluster, nothing for the eigengap to choose, and a note saying why."""
    return SpectralResult(
        eigenvalues=np.zeros(1), eigenvectors=np.full((n_samples, 1), 1.0 / np.sqrt(n_samples)), n_clusters=1,
        gaps=np.zeros(0), labels=np.zeros(n_samples, dtype=np.int64), n_components=1, neighbors=config.neighbors,
        cluster_range=(1, 1), knn="none", knn_recall=1.0, eigensolver="none",
        notes=[f"no structure: the {n_samples} heatmaps hold only {n_distinct} distinct one(s) (all zero, constant "
               f"or repeated), fewer than the analysis.neighbors + 1 = {config.neighbors + 1} a kNN graph needs; "
               "the class is one cluster"])

def _spectral_analysis(
    maps: np.ndarray, config: AnalysisConfig, knn_limits: KnnLimits, dense_eigen_max_n: int
) -> SpectralResult:
    """spectral_analysis of finite maps (N, D) with N > neighbors, all rows distinct."""
    n_samples = maps.shape[0]
    notes: list[str] = []
    graph = nearest_neighbors(maps, config.neighbors, "auto", config.seed, knn_limits)
    if graph.recall < 0.9:
        notes.append(
            f"the approximate kNN graph found {graph.recall:.0%} of the true {config.neighbors} nearest neighbours "
            "(on a sample): the clusters may differ from an exact analysis"
        )
    affinity = affinity_from_neighbors(graph.indices, graph.distances)
    n_components, component = scipy.sparse.csgraph.connected_components(affinity, directed=False)
    m = min(config.eigenvalues, n_samples - 1)
    values, vectors = smallest_eigenpairs(normalized_laplacian(affinity), m, config.seed, dense_eigen_max_n)
    lower, upper = cluster_range(n_samples, m, config)
    notes += _range_and_component_notes(n_samples, config, (lower, upper), int(n_components))
    n_clusters = choose_n_clusters(values, lower, upper) if m >= 2 else 1
    return SpectralResult(
        eigenvalues=values,
        eigenvectors=vectors,
        n_clusters=n_clusters,
        gaps=np.diff(values),
        labels=spectral_clustering(vectors, n_clusters, seed=config.seed),
        n_components=int(n_components),
        neighbors=config.neighbors,
        cluster_range=(lower, upper),
        knn=graph.description,
        knn_recall=graph.recall,
        eigensolver=eigensolver_description(np.bincount(component), m, dense_eigen_max_n),
        notes=notes,
    )

def _range_and_component_notes(
    n_samples: int, config: AnalysisConfig, allowed: tuple[int, int], n_components: int
) -> list[str]:
    """What a reviewer should know about the eigengap's range and the graph's connected components."""
    lower, upper = allowed
    notes = []
    if (lower, upper) != (config.min_clusters, config.max_clusters):
        notes.append(
            f"the eigengap chose from {lower}..{upper} clusters instead of the configured "
            f"{config.min_clusters}..{config.max_clusters}: {n_samples} samples with {config.neighbors} "
            f"neighbours each cannot separate more than {upper} groups"
        )
    if n_components > 1:
        notes.append(
            f"the kNN graph has {n_components} connected components ({n_components} eigenvalues are 0): "
            "groups of heatmaps that share no neighbours"
            + (f"; only {upper} clusters were allowed, so some components were merged" if n_components > upper else "")
        )
    return notes
