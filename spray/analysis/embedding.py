"""2-D embeddings of the maps for the report: t-SNE (scikit-learn) and UMAP (umap-learn)."""

from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

# Imported at module load (see spray.analysis.clustering).
from sklearn.manifold import TSNE
from threadpoolctl import threadpool_limits  # a scikit-learn dependency

from spray.analysis._lazy import import_umap
from spray.analysis._maps import check_maps, distinct_rows
from spray.analysis._projected import principal_coordinates, worker_threads
from spray.analysis.neighbors import DEFAULT_LIMITS, KnnLimits, knn_method, nearest_neighbors
from spray.config import EmbeddingConfig
from spray.errors import DataError

__all__ = [
    "FULL_LAYOUT_MAX_N",
    "LANDMARKS",
    "LANDMARK_DIMS",
    "MIN_DISTINCT_TO_EMBED",
    "PLACEMENT_NEIGHBORS",
    "embed",
    "embed_described",
    "embedding_descriptions",
    "import_umap",
]


# Up to this many maps (the default of ``full_max_n``) t-SNE and UMAP lay out every map; scikit-learn's
# Barnes-Hut t-SNE grows too slow beyond, and UMAP's epochs over a 100,000-map graph took longer than the
# spectral analysis (docs/scaling.md). Above it, both lay out ``LANDMARKS`` seeded landmark maps in the maps'
# ``LANDMARK_DIMS`` leading principal components and every other map is placed at the mean position of its
# ``PLACEMENT_NEIGHBORS`` nearest landmarks there; the report says which.
FULL_LAYOUT_MAX_N = 10_000
# Landmarks laid out above ``FULL_LAYOUT_MAX_N``: 100 per group of ten groups, enough to draw each group (a
# group of 1 % of the maps gets about 10), and few enough that both layouts together stay within the
# spectral analysis's time at 100,000 maps (benchmarks/spectral_scale.py --embeddings, docs/scaling.md).
LANDMARKS = 1_000
# Principal components the landmark layouts and the placement work in: t-SNE's customary 50, which hold
# nearly all of the variance of smooth heatmaps (the projected kNN search reaches its recall with 48).
LANDMARK_DIMS = 50
# How many nearest landmarks place a map that was not laid out.
PLACEMENT_NEIGHBORS = 10
# Scores held per thread while the nearest landmarks are found (32 MiB: cache-friendly blocks).
PLACEMENT_BLOCK_BYTES = 32 << 20


# Fewer distinct heatmaps than this are not embedded (all placed at the origin): see :func:`embed`.
MIN_DISTINCT_TO_EMBED = 3


def _laid_out(n_samples: int, full_max_n: int, landmarks: int) -> int:
    """How many maps t-SNE and UMAP lay out themselves: all up to ``full_max_n``, else the landmarks."""
    return n_samples if n_samples <= full_max_n else min(landmarks, n_samples)


def _tsne_perplexity(laid_out: int, config: EmbeddingConfig) -> float:
    return float(min(config.perplexity, max((laid_out - 1) / 3.0, 1.0)))


def _umap_neighbors(laid_out: int, config: EmbeddingConfig) -> int:
    return int(min(config.umap_neighbors, laid_out - 1))


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
    full_max_n: int = FULL_LAYOUT_MAX_N,
    knn_limits: KnnLimits = DEFAULT_LIMITS,
    umap_knn: str | None = None,
    landmarks: int = LANDMARKS,
    landmark_dims: int = LANDMARK_DIMS,
) -> dict[str, str]:
    """What :func:`embed` computes for N samples, one line per method, for the report; ``umap_knn``: the
    description of the kNN graph UMAP got (:func:`embed_described` passes the one of the run), by default
    the search ``knn_limits`` choose first for the maps UMAP lays out. Above ``full_max_n`` samples,
    ``landmarks`` and ``landmark_dims``: the landmarks laid out and their principal components (fewer where
    the maps have fewer distinct rows or dimensions; :func:`embed_described` passes those of the run)."""
    laid_out = _laid_out(n_samples, full_max_n, landmarks)
    perplexity = _tsne_perplexity(laid_out, config)
    knn = _knn_words(umap_knn) if umap_knn is not None else _KNN_WORDS[knn_method(laid_out, knn_limits)]
    neighbours = f"{knn} {_umap_neighbors(laid_out, config)}-nearest-neighbour graph"
    if n_samples <= full_max_n:
        descriptions = {
            "tsne": f"t-SNE of all {n_samples} samples (scikit-learn, Barnes-Hut), perplexity {perplexity:g}",
            "umap": f"UMAP (umap-learn) of all {n_samples} samples on the {neighbours}, min_dist {config.umap_min_dist:g}",
        }
    else:
        which = (f"{laid_out} landmarks (a seeded sample of the {n_samples} samples' distinct maps) in their "
                 f"{landmark_dims} leading principal components")
        rest = (f"the other {n_samples - laid_out} samples are placed at the mean position of their "
                f"{min(PLACEMENT_NEIGHBORS, laid_out)} nearest landmarks there")
        descriptions = {
            "tsne": f"t-SNE (scikit-learn, Barnes-Hut) of {which}, perplexity {perplexity:g}; {rest}",
            "umap": f"UMAP (umap-learn) of {which}, on their {neighbours}, min_dist {config.umap_min_dist:g}; {rest}",
        }
    return {name: f"{descriptions[name]}, seed {config.seed}" for name in config.methods}


def _nearest_reference(queries: np.ndarray, reference: np.ndarray, k: int) -> np.ndarray:
    """Indices (len(queries), k) of the k nearest reference rows of each query (brute force, float32).

    Blocks of queries run in one thread per CPU, each with one BLAS thread: the selection (numpy's
    argpartition, which releases the GIL) costs more than the product and has no threads of its own. A
    row's neighbours do not depend on the blocks, so the result is the same on any number of threads."""
    sq_norms = np.einsum("ij,ij->i", reference, reference)
    block = int(max(1, PLACEMENT_BLOCK_BYTES // (4 * len(reference))))
    found = np.empty((len(queries), k), dtype=np.int64)

    def nearest(start: int) -> None:
        scores = queries[start : start + block] @ reference.T
        scores *= -2.0
        scores += sq_norms
        found[start : start + block] = np.argpartition(scores, k - 1, axis=1)[:, :k]

    with threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(worker_threads()) as pool:
        list(pool.map(nearest, range(0, len(queries), block)))
    return found


def _deterministic_fit(tsne: TSNE, maps: np.ndarray) -> np.ndarray:
    """``tsne.fit_transform(maps)`` on one thread: the Barnes-Hut gradient sums in an order that depends on
    the number of OpenMP threads, so a seeded t-SNE gives other coordinates on a machine with more cores
    (or under another thread limit); one thread makes it the same everywhere, and a resumed run byte-identical
    to an undisturbed one."""
    with threadpool_limits(1):
        return tsne.fit_transform(maps)


def _tsne(points: np.ndarray, config: EmbeddingConfig) -> np.ndarray:
    """t-SNE coordinates (n, 2) float32 of ``points`` (n, d), all of them laid out."""
    tsne = TSNE(
        n_components=2,
        perplexity=_tsne_perplexity(len(points), config),
        init="pca",
        learning_rate="auto",
        random_state=config.seed,
    )
    return _deterministic_fit(tsne, points).astype(np.float32)


@dataclass(frozen=True)
class _Landmarks:
    """The maps laid out above ``full_max_n`` and where the others go: ``indices`` (L,) sorted rows of the
    landmarks, ``coordinates`` (L, d) float32 their principal coordinates, ``rest`` (R,) the other rows
    that are the first copy of their map, ``nearest`` (R, k) positions in ``indices`` of each one's k
    nearest landmarks, ``first_copy`` (N,) the row of each row's first copy (repeats share its position)."""

    indices: np.ndarray
    coordinates: np.ndarray
    rest: np.ndarray
    nearest: np.ndarray
    first_copy: np.ndarray

    def place(self, layout: np.ndarray) -> np.ndarray:
        """All N positions (N, 2) float32 from the landmarks' layout (L, 2): the other maps at the mean
        position of their nearest landmarks, repeats of a map where its first copy is."""
        placed = np.empty((len(self.first_copy), 2), dtype=np.float32)
        placed[self.indices] = layout
        placed[self.rest] = layout[self.nearest].mean(axis=1)
        return placed[self.first_copy]


def _landmarks(maps: np.ndarray, copy_of: np.ndarray, landmarks: int, seed: int) -> _Landmarks:
    """A seeded sample of ``landmarks`` of the distinct maps (``copy_of`` (N,): the index of each row's map
    among the distinct ones, in order of first appearance), the principal coordinates of all maps, and each
    other distinct map's nearest landmarks there."""
    _, firsts = np.unique(copy_of, return_index=True)
    rng = np.random.default_rng(seed)
    chosen = np.sort(firsts if len(firsts) <= landmarks else rng.choice(firsts, landmarks, replace=False))
    coordinates = principal_coordinates(maps, min(LANDMARK_DIMS, maps.shape[1]), seed)
    rest = np.setdiff1d(firsts, chosen)
    nearest = _nearest_reference(coordinates[rest], coordinates[chosen], min(PLACEMENT_NEIGHBORS, len(chosen)))
    return _Landmarks(chosen, np.ascontiguousarray(coordinates[chosen]), rest, nearest, firsts[copy_of])


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
    full_max_n: int = FULL_LAYOUT_MAX_N,
    knn_limits: KnnLimits = DEFAULT_LIMITS,
    landmarks: int = LANDMARKS,
) -> dict[str, np.ndarray]:
    """2-D embeddings of the heatmaps for the report.

    ``maps``: (N, D), finite, N >= 3. Returns ``{name: (N, 2) float32}`` for each name in
    ``config.methods``:

    - "tsne": scikit-learn t-SNE with perplexity min(perplexity, (n - 1) / 3), n the maps it lays out;
    - "umap": umap-learn with n_neighbors min(umap_neighbors, n - 1), on spray's kNN graph (searched as
      ``knn_limits`` say).

    Up to ``full_max_n`` samples both lay out every map. Above it, both lay out the same ``landmarks``
    seeded distinct maps in the maps' ``LANDMARK_DIMS`` leading principal components, and every other map
    is placed at the mean position of its ``PLACEMENT_NEIGHBORS`` nearest landmarks in those components.

    Fewer than ``MIN_DISTINCT_TO_EMBED`` distinct maps (all zero, constant) are all placed at the origin.
    :func:`embed_described` also says what ran, for the report. Seeded: the same maps and config give the
    same coordinates. umap-learn is imported only when asked for.
    """
    return embed_described(maps, config, full_max_n, knn_limits, landmarks)[0]


def embed_described(
    maps: np.ndarray,
    config: EmbeddingConfig,
    full_max_n: int = FULL_LAYOUT_MAX_N,
    knn_limits: KnnLimits = DEFAULT_LIMITS,
    landmarks: int = LANDMARKS,
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """:func:`embed`'s coordinates and, per method, a line saying what was computed (as
    :func:`embedding_descriptions`, with the kNN search UMAP's graph actually came from)."""
    maps = check_maps(maps)
    if maps.shape[0] < 3:
        raise DataError(f"{maps.shape[0]} samples cannot be embedded in 2-D; expected at least 3")
    if full_max_n < 3 or landmarks < 3:
        raise ValueError(f"expected full_max_n >= 3 and landmarks >= 3, got {full_max_n} and {landmarks}")
    n_samples = maps.shape[0]
    distinct, inverse = distinct_rows(maps)
    if len(distinct) < MIN_DISTINCT_TO_EMBED:
        # nothing to lay out, and t-SNE's PCA initialisation divides by the zero spread of identical maps
        # (scikit-learn then crashes the process); every sample sits at the origin
        origin: dict[str, np.ndarray] = {name: np.zeros((n_samples, 2), dtype=np.float32) for name in config.methods}
        return origin, embedding_descriptions(n_samples, config, full_max_n, knn_limits, landmarks=landmarks)
    if n_samples <= full_max_n:
        return _embed_all(maps, config, full_max_n, knn_limits)
    plan = _landmarks(maps, inverse, landmarks, config.seed)
    result: dict[str, np.ndarray] = {}
    umap_knn = None
    for name in config.methods:
        if name == "tsne":
            result[name] = plan.place(_tsne(plan.coordinates, config))
        else:
            layout, umap_knn = _umap(plan.coordinates, config, knn_limits)
            result[name] = plan.place(layout)
    return result, embedding_descriptions(n_samples, config, full_max_n, knn_limits, umap_knn, len(plan.indices),
                                          plan.coordinates.shape[1])


def _embed_all(maps: np.ndarray, config: EmbeddingConfig, full_max_n: int,
               knn_limits: KnnLimits) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """:func:`embed_described` of at most ``full_max_n`` maps: every map laid out."""
    result: dict[str, np.ndarray] = {}
    umap_knn = None
    for name in config.methods:
        if name == "tsne":
            result[name] = _tsne(maps, config)
        else:
            result[name], umap_knn = _umap(maps, config, knn_limits)
    return result, embedding_descriptions(len(maps), config, full_max_n, knn_limits, umap_knn)
