"""Stage 3 at scale (spray.analyse): the large-N paths give what the exact small-N path gives.

The large-N paths are switched on at small N by lowering their thresholds. Apart from the test file of
the small-N path because the first projected or NN-descent kNN graph in a process loads compiled numba code
(compiles it on a machine's first run: under a second for spray's kernels, ~20 s for pynndescent's).
"""

from __future__ import annotations

import uuid

import numpy as np
import pytest
import scipy.sparse
from sklearn.metrics import adjusted_rand_score

from spray import analyse, neighbors
from spray.analyse import embed, knn_affinity, normalized_laplacian, smallest_eigenpairs, spectral_analysis
from spray.config import AnalysisConfig, EmbeddingConfig


def planted_mixture(n: int, groups: int, separation: float = 0.7, dim: int = 64, seed: int = 0):
    """Gaussian groups of equal size (as in test_analyse.py)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(groups, dim)) * separation
    truth = np.arange(n) % groups
    return (centres[truth] + rng.normal(size=(n, dim))).astype(np.float32), truth


def dense_normalized_laplacian(affinity: scipy.sparse.spmatrix) -> np.ndarray:
    a = affinity.toarray()
    d = a.sum(axis=1)
    return np.eye(len(a)) - a / np.sqrt(np.outer(d, d))

def heatmap_mixture(n: int, groups: int, size: int = 16, seed: int = 0):
    """Smooth heatmap-like maps: each group a few Gaussian blobs, jittered per sample, L1-normalised."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    truth = np.arange(n) % groups
    maps = np.zeros((n, size, size))
    for g in range(groups):
        members = np.flatnonzero(truth == g)
        for _ in range(3):
            x, y, width = rng.uniform(2, size - 2), rng.uniform(2, size - 2), rng.uniform(1.5, 3.5)
            jx = x + rng.normal(0, 0.7, len(members))[:, None, None]
            jy = y + rng.normal(0, 0.7, len(members))[:, None, None]
            maps[members] += np.exp(-((xx - jx) ** 2 + (yy - jy) ** 2) / (2 * width**2))
    maps += 0.05 * rng.normal(size=maps.shape)
    flat = maps.reshape(n, -1)
    return (flat / np.abs(flat).sum(axis=1, keepdims=True)).astype(np.float32), truth


def test_large_components_are_solved_exactly_by_lanczos(monkeypatch):
    monkeypatch.setattr(analyse, "DENSE_EIGEN_MAX_N", 100)  # components of ~500 take the Lanczos path
    maps, _ = planted_mixture(1500, 3, separation=5.0)
    affinity = knn_affinity(maps, 10)
    laplacian = normalized_laplacian(affinity)
    values, vectors = smallest_eigenpairs(laplacian, 32, seed=0)

    dense = dense_normalized_laplacian(affinity)
    np.testing.assert_allclose(values, np.clip(np.linalg.eigvalsh(dense)[:32], 0, None), rtol=0, atol=1e-6)
    assert np.abs(dense @ vectors - vectors * values).max() < 1e-6
    np.testing.assert_allclose(vectors.T @ vectors, np.eye(32), atol=1e-6)


def test_repeated_eigenvalues_of_identical_components_are_all_found():
    # three identical copies of one graph: every eigenvalue three times, which a single Lanczos run misses
    maps, _ = planted_mixture(200, 2)
    block = normalized_laplacian(knn_affinity(maps, 10))
    laplacian = scipy.sparse.block_diag([block, block, block], format="csr")
    values, _ = smallest_eigenpairs(laplacian, 9)
    single = np.linalg.eigvalsh(block.toarray())[:3]
    np.testing.assert_allclose(values, np.clip(np.repeat(single, 3), 0, None), atol=1e-9)


def test_n_2000_takes_the_exact_path():
    maps, _ = heatmap_mixture(2000, 5)
    result = spectral_analysis(maps, AnalysisConfig())
    assert result.knn.startswith("exact") and result.knn_recall == 1.0


@pytest.mark.parametrize("path", ["projected", "pynndescent"])
def test_the_approximate_knn_paths_match_the_exact_path_at_2000_samples(monkeypatch, path):
    maps, truth = heatmap_mixture(2000, 5)
    config = AnalysisConfig()
    exact = spectral_analysis(maps, config)
    assert exact.knn.startswith("exact") and exact.knn_recall == 1.0

    monkeypatch.setattr(neighbors, "EXACT_KNN_MAX_N", 500)
    monkeypatch.setattr(analyse, "DENSE_EIGEN_MAX_N", 500)
    if path == "pynndescent":
        monkeypatch.setattr(neighbors, "PROJECTED_KNN_MAX_N", 500)
    scaled = spectral_analysis(maps, config)
    expected = {
        "projected": "approximate (40 nearest in 48 principal components",
        "pynndescent": "approximate (pynndescent",
    }[path]
    assert scaled.knn.startswith(expected) and "recall@10 1.000" in scaled.knn
    assert scaled.knn_recall == 1.0
    assert scaled.eigensolver.startswith("ARPACK")
    np.testing.assert_allclose(scaled.eigenvalues, exact.eigenvalues, rtol=0, atol=1e-6)
    assert scaled.n_clusters == exact.n_clusters == 5
    assert adjusted_rand_score(exact.labels, scaled.labels) >= 0.99
    assert adjusted_rand_score(truth, scaled.labels) >= 0.99


def test_the_projected_path_clusters_planted_mixtures_as_the_exact_path_does(monkeypatch):
    # Gaussian groups in 256 dimensions: unlike heatmaps, most of each map's variance is noise spread over
    # all components, so the projected search needs many of them (192 here) and may still miss a few
    # neighbours; the clustering must not change
    maps, _truth = planted_mixture(3000, 4, separation=0.6, dim=256, seed=1)
    config = AnalysisConfig()
    exact = spectral_analysis(maps, config)
    monkeypatch.setattr(neighbors, "EXACT_KNN_MAX_N", 500)
    scaled = spectral_analysis(maps, config)
    assert scaled.knn.startswith("approximate (") and "principal components" in scaled.knn
    assert scaled.knn_recall >= neighbors.PROJECTED_KNN_MIN_RECALL
    assert scaled.n_clusters == exact.n_clusters == 4
    assert adjusted_rand_score(exact.labels, scaled.labels) >= 0.99
    np.testing.assert_allclose(scaled.eigenvalues[:8], exact.eigenvalues[:8], rtol=0, atol=5e-3)


def test_projected_candidates_are_the_exact_nearest_in_principal_coordinates(monkeypatch):
    monkeypatch.setattr(neighbors, "PROJECTED_GROUP_SIZE", 64)  # many groups, most of them skipped
    rng = np.random.default_rng(3)
    points = (rng.normal(size=(12, 16)) * 4)[rng.integers(0, 12, 3000)] + rng.normal(size=(3000, 16))
    points = points.astype(np.float32)
    partition = neighbors._Partition.build(points, seed=0)
    found = partition.order[neighbors._projected_candidates(partition, 25)][np.argsort(partition.order)]
    d2 = ((points[:, None, :].astype(np.float64) - points[None, :, :]) ** 2).sum(axis=2)
    np.fill_diagonal(d2, np.inf)
    expected = np.argsort(d2, axis=1)[:, :25]
    assert all(set(a) == set(b) for a, b in zip(found, expected))


def test_the_measured_recall_is_the_recall_of_the_projected_search():
    maps, _ = planted_mixture(3000, 4, separation=0.6, dim=256, seed=1)
    rows = neighbors._recall_sample(len(maps), seed=0, sample=300)
    coordinates = neighbors._principal_coordinates(maps, 16, seed=0)
    recall, _ = neighbors._projected_recall(maps, coordinates, rows, 10, 20)
    indices, _ = neighbors._projected_knn(maps, coordinates, 10, 20, seed=0)
    assert 0 < recall < 0.95  # 16 components of 256 lose neighbours here
    assert recall == neighbors._estimate_recall(maps, indices, seed=0, sample=300)


def test_the_projected_search_widens_until_its_recall_is_reached(monkeypatch):
    maps, _ = planted_mixture(3000, 4, separation=0.6, dim=256, seed=1)
    monkeypatch.setattr(neighbors, "PROJECTED_KNN_STEPS", ((8, 2), (256, 4)))
    indices, distances, description, recall = neighbors.nearest_neighbors(maps, 10, "projected")
    assert "40 nearest in 256 principal components" in description and recall == 1.0
    expected_indices, expected_distances = neighbors._exact_knn(maps, 10)
    np.testing.assert_array_equal(indices, expected_indices)
    np.testing.assert_allclose(distances, expected_distances, rtol=1e-6)


@pytest.mark.parametrize("fallback", ["exact", "pynndescent"])
def test_a_projected_search_below_the_recall_threshold_falls_back(monkeypatch, fallback):
    maps, _ = planted_mixture(3000, 4, separation=0.6, dim=256, seed=1)
    monkeypatch.setattr(neighbors, "PROJECTED_KNN_STEPS", ((8, 2), (16, 2)))
    if fallback == "pynndescent":
        monkeypatch.setattr(neighbors, "EXACT_KNN_FALLBACK_MAX_N", 1000)
    indices, _distances, description, recall = neighbors.nearest_neighbors(maps, 10, "projected")
    assert "recall@10 was 0." in description and "with 8 components, 0." in description
    assert f"with 16 components (below {neighbors.PROJECTED_KNN_MIN_RECALL})" in description
    if fallback == "exact":
        assert description.startswith("exact (brute force") and recall == 1.0
        np.testing.assert_array_equal(indices, neighbors._exact_knn(maps, 10)[0])
    else:
        assert description.startswith("approximate (pynndescent") and 0 < recall <= 1


def test_the_candidate_selection_keeps_the_smallest():
    from spray import _knn_kernels

    rng = np.random.default_rng(0)
    for size, keep in ((10, 1), (80, 40), (81, 40), (200, 7)):
        values = rng.integers(0, 20, size).astype(np.float32)  # many ties
        indices = np.arange(size, dtype=np.int64)
        original = values.copy()
        _knn_kernels.keep_smallest(values, indices, size, keep)
        assert np.array_equal(np.sort(values[:keep]), np.sort(original)[:keep])
        assert np.array_equal(original[indices], values)  # indices moved along


def test_pynndescent_gets_stable_numba_identities_and_its_cache():
    from numba.core.caching import NullCache

    neighbors._import_pynndescent()
    import pynndescent.distances
    import pynndescent.pynndescent_

    distance = pynndescent.distances.squared_euclidean
    assert distance._uuid == str(uuid.uuid5(uuid.NAMESPACE_URL, "spray-numba:pynndescent.distances.squared_euclidean"))
    assert not isinstance(pynndescent.pynndescent_.process_candidates._cache, NullCache)


def test_t_sne_of_many_samples_embeds_a_sample_and_places_the_rest(monkeypatch):
    monkeypatch.setattr(analyse, "TSNE_MAX_N", 120)
    maps, truth = planted_mixture(400, 3, separation=3.0)
    config = EmbeddingConfig(methods=["tsne"])
    first, second = embed(maps, config)["tsne"], embed(maps, config)["tsne"]
    assert first.shape == (400, 2) and np.isfinite(first).all()
    np.testing.assert_array_equal(first, second)
    from sklearn.cluster import KMeans

    assert adjusted_rand_score(truth, KMeans(3, n_init=10, random_state=0).fit_predict(first)) == 1.0
    assert "random sample of 120 of the 400" in analyse.embedding_descriptions(400, config)["tsne"]
