"""The normalised Laplacian of an affinity graph, its smallest eigenpairs, and the eigengap."""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.linalg
import scipy.sparse
import scipy.sparse.csgraph
import scipy.sparse.linalg
from threadpoolctl import threadpool_limits  # a scikit-learn dependency

from spray.errors import RunError

__all__ = ["DENSE_EIGEN_MAX_N", "choose_n_clusters", "eigensolver_description", "normalized_laplacian", "smallest_eigenpairs"]

# Up to this many nodes (the default of ``dense_max_n``) the eigenpairs come from a dense LAPACK solve of
# the Laplacian: it is exact and needs no convergence checks. Above it the sparse Lanczos solver (ARPACK)
# is faster and the only option that does not grow as N^2 (timings: docs/scaling.md).
DENSE_EIGEN_MAX_N = 500


def _dense(size: int, n: int, dense_max_n: int) -> bool:
    """Whether the eigenpairs of a connected graph of ``size`` nodes come from the dense solver."""
    return size <= dense_max_n or n >= size - 1


def eigensolver_description(
    component_sizes: np.ndarray, n: int, dense_max_n: int = DENSE_EIGEN_MAX_N
) -> str:
    """What :func:`smallest_eigenpairs` runs for ``n`` pairs of a graph whose connected components have
    ``component_sizes`` nodes (for the report)."""
    largest = int(np.max(component_sizes))
    solver = (
        "dense LAPACK (scipy.linalg.eigh)"
        if _dense(largest, n, dense_max_n)
        else "ARPACK Lanczos (scipy.sparse.linalg.eigsh) on D^-1/2 A D^-1/2"
    )
    return solver + (", per connected component" if len(component_sizes) > 1 else "")


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


def _connected_eigenpairs(
    laplacian: scipy.sparse.csr_matrix, n: int, seed: int, dense_max_n: int
) -> tuple[np.ndarray, np.ndarray]:
    """Smallest eigenpairs of the Laplacian of one connected graph (0 is a simple eigenvalue)."""
    size = laplacian.shape[0]
    if _dense(size, n, dense_max_n):
        return scipy.linalg.eigh(laplacian.toarray(), subset_by_index=[0, n - 1])
    affinity = scipy.sparse.identity(size, dtype=np.float64, format="csr") - laplacian
    return _lanczos_smallest(affinity, size, n, seed)


def smallest_eigenpairs(
    laplacian: Any, n: int, seed: int = 0, dense_max_n: int = DENSE_EIGEN_MAX_N
) -> tuple[np.ndarray, np.ndarray]:
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

    Solvers. A connected graph of up to ``dense_max_n`` nodes (or with n close to N) gets a dense
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
    :func:`_eigenpairs_by_component`): the result is the same, and faster than one run with the null
    vectors deflated.
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
    # are small; with 2 threads on 2 shared cores most time went to waking threads
    with threadpool_limits(1, user_api="blas"):
        if n_components == 1:
            values, vectors = _connected_eigenpairs(lap, n, seed, dense_max_n)
        else:
            values, vectors = _eigenpairs_by_component(lap, n, seed, component, dense_max_n)
    if values.min() < -1e-8:
        raise RunError(f"the Laplacian has a negative eigenvalue {values.min():.3g}: it is not a normalised Laplacian")
    values = np.clip(values, 0.0, 2.0)
    return values, _fix_signs(vectors)


def _eigenpairs_by_component(
    lap: scipy.sparse.csr_matrix,
    n: int,
    seed: int,
    component: np.ndarray,
    dense_max_n: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The n smallest eigenpairs of a graph of several connected components (``component``: (N,) the
    component of each node), each component solved on its own."""
    size = lap.shape[0]
    n_components = int(component.max()) + 1
    sizes = np.bincount(component, minlength=n_components)
    # every component contributes its 0, so none contributes more than n - c + 1 of the n smallest
    most = np.minimum(max(1, n - n_components + 1), sizes)
    # First each component is asked for a little more than its share by size (Lanczos' cost grows with the
    # pairs asked). A component is asked
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
            solved[c] = _connected_eigenpairs(lap[nodes][:, nodes].tocsr(), int(asked[c]), seed, dense_max_n)
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

