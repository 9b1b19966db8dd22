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

import warnings
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
from spray.neighbors import (
    IMPORT_LOCK,
    KNN_BLOCK_BYTES,
    cache_numba_functions,
    knn_method,
    nearest_neighbors,
)

__all__ = [
    "SpectralResult",
    "choose_n_clusters",
    "embed",
    "embedding_descriptions",
    "knn_affinity",
    "normalized_laplacian",
    "smallest_eigenpairs",
    "spectral_analysis",
    "spectral_clustering",
]

# Up to this many nodes the eigenpairs come from a dense LAPACK solve of the Laplacian: exact, with no
# convergence checks. Above it ARPACK is faster and does not grow as N^2 (docs/benchmarks.md, "Constants").
DENSE_EIGEN_MAX_N = 500



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
        NN-descent above (the searches and their thresholds: :mod:`spray.neighbors`).

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
    indices, distances, _, _ = nearest_neighbors(maps, n_neighbors, method, seed)
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
    # One BLAS thread: ARPACK's work is many small, memory-bound BLAS-2 calls and these dense problems are
    # small, so more threads on shared cores mostly wait for each other (docs/benchmarks.md, "Constants")
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
    # pairs asked). A component is asked again, for twice as many, while even its largest pair so far is not
    # above the n-th smallest of all: then it might hold more of the n smallest. The pairs kept are those that
    # asking every component for ``most`` pairs would keep.
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
    # one BLAS thread (k-means' own OpenMP threads stay): its products are small, and BLAS threads on
    # shared cores only wait for each other (docs/benchmarks.md, "Constants")
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
    SpectralResult with m = min(config.eigenvalues, U - 1) eigenpairs, U the number of distinct maps.
    Identical maps are one node of the graph and share a cluster (eigenvectors are repeated for them); a
    class with no more than ``neighbors`` distinct maps (all zero, constant) has no structure to find: one
    cluster, one eigenvalue 0, and a note that says so.

    Raises
    ------
    DataError : N <= config.neighbors, or rows with NaN/inf (the message names the rows).
    """
    maps = _check_maps(maps)
    n_samples = maps.shape[0]
    _check_enough_samples(n_samples, config.neighbors)
    distinct, inverse = distinct_rows(maps)
    if len(distinct) <= config.neighbors:
        return _no_structure(n_samples, len(distinct), config)
    result = _spectral_analysis(distinct, config)
    if len(distinct) == n_samples:
        return result
    # identical heatmaps are one node of the graph, so they always share a cluster
    result.eigenvectors = result.eigenvectors[inverse]
    result.labels = _relabel_by_size(result.labels[inverse])
    result.notes.append(f"{n_samples - len(distinct)} of the {n_samples} heatmaps repeat another exactly; "
                        f"the graph was built on the {len(distinct)} distinct ones and repeats share their cluster")
    return result


def distinct_rows(maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct rows of ``maps`` (N, D) in order of first appearance, and (N,) the index of each row's
    copy among them."""
    _, first, inverse = np.unique(maps, axis=0, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return maps[first[order]], rank[np.ravel(inverse)]


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


def _spectral_analysis(maps: np.ndarray, config: AnalysisConfig) -> SpectralResult:
    """spectral_analysis of finite maps (N, D) with N > neighbors, all rows distinct."""
    n_samples = maps.shape[0]
    notes: list[str] = []

    indices, distances, knn_description, recall = nearest_neighbors(maps, config.neighbors, "auto", config.seed)
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


# Up to this many samples t-SNE embeds all of them (scikit-learn's Barnes-Hut grows too slow beyond). Above
# it, t-SNE embeds a seeded sample of this size and every other sample is placed at the mean position of its
# nearest sampled neighbours: openTSNE's FFT t-SNE, which embeds all points, is slower still at 100,000 and
# another dependency (docs/benchmarks.md, "Constants"). The report says which was used.
TSNE_MAX_N = 10_000
# How many nearest sampled neighbours place a sample that t-SNE did not embed.
TSNE_PLACEMENT_NEIGHBORS = 10


# Fewer distinct heatmaps than this are not embedded (all placed at the origin): see :func:`embed`.
MIN_DISTINCT_TO_EMBED = 3


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
    }[knn_method(n_samples)]
    descriptions = {
        "tsne": f"{tsne}, seed {config.seed}",
        "umap": f"UMAP (umap-learn) of all {n_samples} samples on the {knn} {_umap_neighbors(n_samples, config)}"
        f"-nearest-neighbour graph, min_dist {config.umap_min_dist:g}, seed {config.seed}",
    }
    return {name: descriptions[name] for name in config.methods}


def _nearest_reference(queries: np.ndarray, reference: np.ndarray, k: int) -> np.ndarray:
    """Indices (len(queries), k) of the k nearest reference rows of each query (brute force, float32)."""
    sq_norms = np.einsum("ij,ij->i", reference, reference)
    block = int(max(1, KNN_BLOCK_BYTES // (4 * len(reference))))
    found = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), block):
        scores = queries[start : start + block] @ reference.T
        scores *= -2.0
        scores += sq_norms
        found[start : start + block] = np.argpartition(scores, k - 1, axis=1)[:, :k]
    return found


def _deterministic_fit(tsne: TSNE, maps: np.ndarray) -> np.ndarray:
    """``tsne.fit_transform(maps)`` on one thread: the Barnes-Hut gradient sums in an order that depends on
    the number of OpenMP threads, so a seeded t-SNE gives other coordinates on a machine with more cores
    (or under another thread limit); one thread makes it the same everywhere, and a resumed run byte-identical
    to an undisturbed one."""
    with threadpool_limits(1):
        return tsne.fit_transform(maps)


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
        return _deterministic_fit(tsne, maps).astype(np.float32)
    sampled = np.sort(np.random.default_rng(config.seed).choice(n_samples, TSNE_MAX_N, replace=False))
    rest = np.setdiff1d(np.arange(n_samples), sampled)
    coordinates = np.empty((n_samples, 2), dtype=np.float32)
    coordinates[sampled] = _deterministic_fit(tsne, maps[sampled])
    centre = maps.mean(axis=0, dtype=np.float64).astype(np.float32)
    nearest = _nearest_reference(maps[rest] - centre, maps[sampled] - centre, TSNE_PLACEMENT_NEIGHBORS)
    coordinates[rest] = coordinates[sampled][nearest].mean(axis=1)
    return coordinates


def _import_umap() -> Any:
    """Import umap-learn (only when an embedding asks for it) with numba's on-disk cache switched on."""
    with IMPORT_LOCK:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # umap's import warns about optional TensorFlow
            import umap
            import umap.layouts
            import umap.sparse
            import umap.spectral
            import umap.umap_
            import umap.utils
        cache_numba_functions("umap")
    return umap


def _umap(maps: np.ndarray, config: EmbeddingConfig) -> np.ndarray:
    umap = _import_umap()
    n_samples = maps.shape[0]
    n_neighbors = _umap_neighbors(n_samples, config)
    # UMAP gets spray's own kNN graph (the sample itself first, as umap-learn lists it): exact or projected
    # up to PROJECTED_KNN_MAX_N samples, where umap-learn would otherwise run pynndescent and pay the JIT
    # of its nn_descent in every process for a rougher graph (benchmarks/spectral_scale.py)
    indices, distances, _, _ = nearest_neighbors(maps, n_neighbors - 1, "auto", config.seed)
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

    Fewer than ``MIN_DISTINCT_TO_EMBED`` distinct maps (all zero, constant) are all placed at the origin.
    :func:`embedding_descriptions` says which, for the report. Seeded: the same maps and config give the
    same coordinates. umap-learn is imported only when asked for.
    """
    maps = _check_maps(maps)
    if maps.shape[0] < 3:
        raise DataError(f"{maps.shape[0]} samples cannot be embedded in 2-D; expected at least 3")
    result: dict[str, np.ndarray] = {}
    if len(distinct_rows(maps)[0]) < MIN_DISTINCT_TO_EMBED:
        # nothing to lay out, and t-SNE's PCA initialisation divides by the zero spread of identical maps
        # (scikit-learn then crashes the process); every sample sits at the origin
        return {name: np.zeros((maps.shape[0], 2), dtype=np.float32) for name in config.methods}
    for name in config.methods:
        result[name] = _tsne(maps, config) if name == "tsne" else _umap(maps, config)
    return result
