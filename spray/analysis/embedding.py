"""2-D embeddings of the maps for the report: t-SNE (scikit-learn) and UMAP (umap-learn)."""

from __future__ import annotations

import warnings

import numpy as np

# Imported at module load (see spray.analysis.clustering).
from sklearn.manifold import TSNE
from threadpoolctl import threadpool_limits  # a scikit-learn dependency

from spray.analysis._exact import KNN_BLOCK_BYTES
from spray.analysis._lazy import import_umap
from spray.analysis._maps import check_maps, distinct_rows
from spray.analysis.neighbors import DEFAULT_LIMITS, KnnLimits, knn_method, nearest_neighbors
from spray.config import EmbeddingConfig
from spray.errors import DataError

__all__ = ["MIN_DISTINCT_TO_EMBED", "TSNE_MAX_N", "embed", "embed_described", "embedding_descriptions", "import_umap"]


# Up to this many samples (the default of ``tsne_max_n``) t-SNE embeds all of them: scikit-learn's
# Barnes-Hut grows too slow beyond (docs/scaling.md). Above it, t-SNE embeds a seeded sample of this size and
# every other sample is placed at the mean position of its nearest sampled neighbours; the report says which.
TSNE_MAX_N = 10_000
# How many nearest sampled neighbours place a sample that t-SNE did not embed.
TSNE_PLACEMENT_NEIGHBORS = 10


# Fewer distinct heatmaps than this are not embedded (all placed at the origin): see :func:`embed`.
MIN_DISTINCT_TO_EMBED = 3


def _tsne_perplexity(n_samples: int, config: EmbeddingConfig, tsne_max_n: int) -> float:
    return float(min(config.perplexity, max((min(n_samples, tsne_max_n) - 1) / 3.0, 1.0)))


def _umap_neighbors(n_samples: int, config: EmbeddingConfig) -> int:
    return int(min(config.umap_neighbors, n_samples - 1))


_KNN_WORDS = {
    "exact": "exact",
    "projected": "approximate (principal components)",
    "approximate": "approximate (pynndescent)",
}


def _knn_words(description: str) -> str:
    """The kNN search a :class:`spray.analysis.neighbors.KnnGraph` description names, in a few words."""
    if description.startswith("exact"):
        return _KNN_WORDS["exact"]
    if "principal components" in description.split(":")[0]:
        return _KNN_WORDS["projected"]
    return _KNN_WORDS["approximate"]


def embedding_descriptions(
    n_samples: int,
    config: EmbeddingConfig,
    tsne_max_n: int = TSNE_MAX_N,
    knn_limits: KnnLimits = DEFAULT_LIMITS,
    umap_knn: str | None = None,
) -> dict[str, str]:
    """What :func:`embed` computes for N samples, one line per method, for the report; ``umap_knn``: the
    description of the kNN graph UMAP got (:func:`embed_described` passes the one of the run), by default
    the search ``knn_limits`` choose first for N."""
    perplexity = _tsne_perplexity(n_samples, config, tsne_max_n)
    if n_samples <= tsne_max_n:
        tsne = f"t-SNE of all {n_samples} samples (scikit-learn, Barnes-Hut), perplexity {perplexity:g}"
    else:
        tsne = (
            f"t-SNE of a random sample of {tsne_max_n} of the {n_samples} samples (scikit-learn, Barnes-Hut), "
            f"perplexity {perplexity:g}; the other {n_samples - tsne_max_n} are placed at the mean position of "
            f"their {TSNE_PLACEMENT_NEIGHBORS} nearest sampled neighbours"
        )
    if umap_knn is not None:
        knn = _knn_words(umap_knn)
    else:
        knn = _KNN_WORDS[knn_method(n_samples, knn_limits)]
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


def _tsne(maps: np.ndarray, config: EmbeddingConfig, tsne_max_n: int) -> np.ndarray:
    n_samples = maps.shape[0]
    tsne = TSNE(
        n_components=2,
        perplexity=_tsne_perplexity(n_samples, config, tsne_max_n),
        init="pca",
        learning_rate="auto",
        random_state=config.seed,
    )
    if n_samples <= tsne_max_n:
        return _deterministic_fit(tsne, maps).astype(np.float32)
    sampled = np.sort(np.random.default_rng(config.seed).choice(n_samples, tsne_max_n, replace=False))
    rest = np.setdiff1d(np.arange(n_samples), sampled)
    coordinates = np.empty((n_samples, 2), dtype=np.float32)
    coordinates[sampled] = _deterministic_fit(tsne, maps[sampled])
    centre = maps.mean(axis=0, dtype=np.float64).astype(np.float32)
    nearest = _nearest_reference(maps[rest] - centre, maps[sampled] - centre, TSNE_PLACEMENT_NEIGHBORS)
    coordinates[rest] = coordinates[sampled][nearest].mean(axis=1)
    return coordinates


def _umap(maps: np.ndarray, config: EmbeddingConfig, knn_limits: KnnLimits) -> tuple[np.ndarray, str]:
    """UMAP coordinates (N, 2) float32 and the description of the kNN graph they were laid out from."""
    umap = import_umap()
    n_samples = maps.shape[0]
    n_neighbors = _umap_neighbors(n_samples, config)
    # UMAP gets spray's own kNN graph (the sample itself first, as umap-learn lists it), where umap-learn
    # would otherwise run pynndescent and pay the JIT of its nn_descent in every process for a rougher graph
    indices, distances, description, _ = nearest_neighbors(maps, n_neighbors - 1, "auto", config.seed, knn_limits)
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
        return np.asarray(reducer.fit_transform(maps), dtype=np.float32), description


def embed(
    maps: np.ndarray,
    config: EmbeddingConfig,
    tsne_max_n: int = TSNE_MAX_N,
    knn_limits: KnnLimits = DEFAULT_LIMITS,
) -> dict[str, np.ndarray]:
    """2-D embeddings of the heatmaps for the report.

    ``maps``: (N, D), finite, N >= 3. Returns ``{name: (N, 2) float32}`` for each name in
    ``config.methods``:

    - "tsne": scikit-learn t-SNE with perplexity min(perplexity, (N - 1) / 3); above ``tsne_max_n``
      samples, t-SNE of a seeded sample with the others placed by their nearest sampled neighbours;
    - "umap": umap-learn with n_neighbors min(umap_neighbors, N - 1), on spray's kNN graph (searched as
      ``knn_limits`` say).

    Fewer than ``MIN_DISTINCT_TO_EMBED`` distinct maps (all zero, constant) are all placed at the origin.
    :func:`embed_described` also says what ran, for the report. Seeded: the same maps and config give the
    same coordinates. umap-learn is imported only when asked for.
    """
    return embed_described(maps, config, tsne_max_n, knn_limits)[0]


def embed_described(
    maps: np.ndarray,
    config: EmbeddingConfig,
    tsne_max_n: int = TSNE_MAX_N,
    knn_limits: KnnLimits = DEFAULT_LIMITS,
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """:func:`embed`'s coordinates and, per method, a line saying what was computed (as
    :func:`embedding_descriptions`, with the kNN search UMAP's graph actually came from)."""
    maps = check_maps(maps)
    if maps.shape[0] < 3:
        raise DataError(f"{maps.shape[0]} samples cannot be embedded in 2-D; expected at least 3")
    n_samples = maps.shape[0]
    if len(distinct_rows(maps)[0]) < MIN_DISTINCT_TO_EMBED:
        # nothing to lay out, and t-SNE's PCA initialisation divides by the zero spread of identical maps
        # (scikit-learn then crashes the process); every sample sits at the origin
        origin: dict[str, np.ndarray] = {name: np.zeros((n_samples, 2), dtype=np.float32) for name in config.methods}
        return origin, embedding_descriptions(n_samples, config, tsne_max_n, knn_limits)
    result: dict[str, np.ndarray] = {}
    umap_knn = None
    for name in config.methods:
        if name == "tsne":
            result[name] = _tsne(maps, config, tsne_max_n)
        else:
            result[name], umap_knn = _umap(maps, config, knn_limits)
    return result, embedding_descriptions(n_samples, config, tsne_max_n, knn_limits, umap_knn)
