"""Spectral clustering (Ng, Jordan & Weiss 2001): k-means on the row-normalised eigenvectors."""

from __future__ import annotations

import numpy as np

# Imported at module load, not inside the function: task threads importing sklearn submodules for the
# first time concurrently can see a partially initialised sklearn and fail with a circular-import error.
from sklearn.cluster import KMeans
from threadpoolctl import threadpool_limits  # a scikit-learn dependency

from spray.analysis._maps import relabel_by_size

__all__ = ["spectral_clustering"]


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
    # shared cores made this step erratically slower
    with threadpool_limits(1, user_api="blas"):
        labels = kmeans.fit_predict(rows)
    return relabel_by_size(labels.astype(np.int64))
