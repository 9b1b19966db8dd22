"""Stage 3 at scale (spray.analyse): the large-N paths give what the exact small-N path gives.

The large-N paths are switched on at small N by lowering their thresholds. Apart from the test file of
the small-N path because the first approximate kNN graph in a process pays pynndescent's JIT (~15-20 s).
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse
from sklearn.metrics import adjusted_rand_score

from spray import analyse
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


def test_the_approximate_knn_path_matches_the_exact_path_at_2000_samples(monkeypatch):
    maps, truth = heatmap_mixture(2000, 5)
    config = AnalysisConfig()
    exact = spectral_analysis(maps, config)
    assert exact.knn.startswith("exact") and exact.knn_recall == 1.0

    monkeypatch.setattr(analyse, "EXACT_KNN_MAX_N", 500)
    monkeypatch.setattr(analyse, "DENSE_EIGEN_MAX_N", 500)
    scaled = spectral_analysis(maps, config)
    assert scaled.knn.startswith("approximate (pynndescent") and "recall@10 1.000" in scaled.knn
    assert scaled.knn_recall == 1.0
    assert scaled.eigensolver.startswith("ARPACK")
    np.testing.assert_allclose(scaled.eigenvalues, exact.eigenvalues, rtol=0, atol=1e-6)
    assert scaled.n_clusters == exact.n_clusters == 5
    assert adjusted_rand_score(exact.labels, scaled.labels) >= 0.99
    assert adjusted_rand_score(truth, scaled.labels) >= 0.99


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
