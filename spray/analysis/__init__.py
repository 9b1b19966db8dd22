"""Stage 3: spectral relevance analysis (SpRAY) of preprocessed heatmaps, and their 2-D embeddings.

Modules, in the order the analysis runs them:

- :mod:`~spray.analysis.neighbors`: the k-nearest-neighbour search (exact, projected, approximate by N);
- :mod:`~spray.analysis.affinity`: the symmetric kNN affinity graph and its weights;
- :mod:`~spray.analysis.eigenpairs`: the normalised Laplacian, its smallest eigenpairs, the eigengap;
- :mod:`~spray.analysis.clustering`: k-means on the row-normalised eigenvectors;
- :mod:`~spray.analysis.spectral`: all of it for one class (:func:`spectral_analysis`);
- :mod:`~spray.analysis.embedding`: t-SNE and UMAP for the report;
- :mod:`~spray.analysis.task`: the cached pipeline tasks.

The task module is not imported here (it needs the cache); import it as ``spray.analysis.task``.
"""

from spray.analysis.affinity import WEIGHTINGS, affinity_from_neighbors, knn_affinity
from spray.analysis.clustering import spectral_clustering
from spray.analysis.eigenpairs import (
    DENSE_EIGEN_MAX_N,
    choose_n_clusters,
    eigensolver_description,
    normalized_laplacian,
    smallest_eigenpairs,
)
from spray.analysis.embedding import (
    FULL_LAYOUT_MAX_N,
    LANDMARKS,
    MIN_DISTINCT_TO_EMBED,
    embed,
    embed_described,
    embedding_descriptions,
    import_umap,
)
from spray.analysis.neighbors import KNN_METHODS, KnnGraph, KnnLimits, knn_method, nearest_neighbors
from spray.analysis.spectral import SpectralResult, cluster_range, spectral_analysis

__all__ = [
    "DENSE_EIGEN_MAX_N",
    "FULL_LAYOUT_MAX_N",
    "KNN_METHODS",
    "LANDMARKS",
    "MIN_DISTINCT_TO_EMBED",
    "WEIGHTINGS",
    "KnnGraph",
    "KnnLimits",
    "SpectralResult",
    "affinity_from_neighbors",
    "choose_n_clusters",
    "cluster_range",
    "eigensolver_description",
    "embed",
    "embed_described",
    "embedding_descriptions",
    "import_umap",
    "knn_affinity",
    "knn_method",
    "nearest_neighbors",
    "normalized_laplacian",
    "smallest_eigenpairs",
    "spectral_analysis",
    "spectral_clustering",
]
