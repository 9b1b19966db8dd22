"""spray.analysis.eigenpairs: the normalised Laplacian, its smallest eigenpairs, the eigengap."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse
from mixtures import dense_normalized_laplacian, planted_mixture
from sklearn.metrics import adjusted_rand_score

from spray.analysis import (
    choose_n_clusters,
    knn_affinity,
    normalized_laplacian,
    smallest_eigenpairs,
    spectral_analysis,
)
from spray.config import AnalysisConfig


@pytest.mark.parametrize("n", [300, 1500], ids=["dense-solver", "sparse-solver"])
def test_eigenvalues_equal_a_dense_numpy_computation_of_the_same_laplacian(n):
    maps, _ = planted_mixture(n, 4)
    config = AnalysisConfig()
    result = spectral_analysis(maps, config)

    laplacian = dense_normalized_laplacian(knn_affinity(maps, config.neighbors))
    expected = np.linalg.eigvalsh(laplacian)[: config.eigenvalues]
    assert result.eigenvalues.shape == (32,)
    assert np.all(np.diff(result.eigenvalues) >= 0)
    np.testing.assert_allclose(result.eigenvalues, np.clip(expected, 0, None), rtol=0, atol=1e-6)
    # and the vectors are eigenvectors of that Laplacian, of unit length
    residual = laplacian @ result.eigenvectors - result.eigenvectors * result.eigenvalues
    assert np.abs(residual).max() < 1e-6
    np.testing.assert_allclose(np.linalg.norm(result.eigenvectors, axis=0), 1.0, atol=1e-9)


def test_smallest_eigenpairs_returns_the_small_end_of_a_spectrum_that_reaches_two():
    # a path graph is bipartite: its normalised Laplacian has the simple eigenvalues 1 - cos(pi j / (n - 1)),
    # from 0 up to exactly 2, so a solver asked for the largest magnitude of D^-1/2 A D^-1/2 would return
    # eigenvalues near 2 as well as near 0; the smallest ones are only 3e-6 apart
    n = 1200
    path = scipy.sparse.diags([np.ones(n - 1), np.ones(n - 1)], [-1, 1], format="csr")
    values, vectors = smallest_eigenpairs(normalized_laplacian(path), 8, seed=0)
    np.testing.assert_allclose(values, 1 - np.cos(np.pi * np.arange(8) / (n - 1)), rtol=0, atol=1e-10)
    assert vectors.shape == (n, 8)


def test_disconnected_groups_give_one_zero_eigenvalue_per_component():
    maps, truth = planted_mixture(2000, 4, separation=5.0)  # far apart: no shared neighbours
    result = spectral_analysis(maps, AnalysisConfig())
    assert result.n_components == 4
    assert np.all(result.eigenvalues[:4] < 1e-8)
    assert result.eigenvalues[4] > 0.1
    assert result.n_clusters == 4
    assert adjusted_rand_score(truth, result.labels) == 1.0
    assert any("4 connected components" in note for note in result.notes)


def test_negative_round_off_is_clamped_to_zero():
    maps, _ = planted_mixture(300, 3, separation=5.0)
    values, _ = smallest_eigenpairs(normalized_laplacian(knn_affinity(maps, 10)), 5)
    assert values.min() >= 0.0
    assert np.all(values[:3] < 1e-10)


def test_eigengap_picks_the_k_after_which_the_spectrum_jumps():
    eigenvalues = np.array([0.0, 0.01, 0.02, 0.5, 0.55, 0.6, 0.8, 0.82])
    assert choose_n_clusters(eigenvalues, 2, 6) == 3
    # the range is respected even when a larger gap lies outside it
    assert choose_n_clusters(eigenvalues, 4, 6) == 6
    assert choose_n_clusters(eigenvalues, 1, 3) == 3
    # ties go to the smaller k
    assert choose_n_clusters(np.array([0.0, 0.5, 1.0, 1.5]), 1, 3) == 1


def test_eigengap_needs_the_eigenvalue_after_max_clusters():
    with pytest.raises(ValueError, match="needs 6 eigenvalues"):
        choose_n_clusters(np.linspace(0, 1, 5), 2, 5)


def test_an_isolated_node_is_rejected_by_the_laplacian():
    affinity = scipy.sparse.csr_matrix(np.array([[0, 1, 0], [1, 0, 0], [0, 0, 0]], dtype=float))
    with pytest.raises(ValueError, match=r"nodes \[2\] have none"):
        normalized_laplacian(affinity)


def test_large_components_are_solved_exactly_by_lanczos():
    maps, _ = planted_mixture(1500, 3, separation=5.0)
    affinity = knn_affinity(maps, 10)
    laplacian = normalized_laplacian(affinity)
    # components of ~500 nodes take the Lanczos path
    values, vectors = smallest_eigenpairs(laplacian, 32, seed=0, dense_max_n=100)

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

