"""spray.analysis.neighbors: the large-N kNN searches give what the exact small-N search gives.

The large-N paths are switched on at small N by passing lower limits (:class:`KnnLimits`). Apart from the
other analysis tests because the first projected or NN-descent kNN graph in a process loads compiled numba
code. NN-descent compiles pynndescent's numba code in every fresh process (tens of seconds), so its tests
are marked slow.
"""

from __future__ import annotations

import numpy as np
import pytest
from mixtures import heatmap_mixture, planted_mixture
from sklearn.metrics import adjusted_rand_score

from spray.analysis import KnnLimits, nearest_neighbors, spectral_analysis
from spray.config import AnalysisConfig

APPROXIMATE = "approximate (pynndescent NN-descent"
NN_DESCENT = pytest.mark.slow


def true_recall(maps: np.ndarray, graph, k: int) -> float:
    """Share of the found neighbours no farther than the true k-th (ties count), over every row."""
    exact = nearest_neighbors(maps, k, "exact")
    return float((graph.distances <= exact.distances[:, -1:] * (1 + 1e-6)).mean())


def test_n_2000_takes_the_exact_path():
    maps, _ = heatmap_mixture(2000, 5)
    result = spectral_analysis(maps, AnalysisConfig())
    assert result.knn.startswith("exact") and result.knn_recall == 1.0


@pytest.mark.parametrize("path", ["projected", pytest.param("approximate", marks=NN_DESCENT)])
def test_the_approximate_knn_paths_match_the_exact_path_at_2000_samples(path):
    maps, truth = heatmap_mixture(2000, 5)
    config = AnalysisConfig()
    exact = spectral_analysis(maps, config)
    assert exact.knn.startswith("exact") and exact.knn_recall == 1.0

    limits = KnnLimits(exact_max_n=500, projected_max_n=500 if path == "approximate" else 200_000)
    scaled = spectral_analysis(maps, config, knn_limits=limits, dense_eigen_max_n=500)
    expected = {"projected": "approximate (40 nearest in 48 principal components", "approximate": APPROXIMATE}[path]
    assert scaled.knn.startswith(expected) and "recall@10 1.000" in scaled.knn
    assert scaled.knn_recall == 1.0
    assert scaled.eigensolver.startswith("ARPACK")
    np.testing.assert_allclose(scaled.eigenvalues, exact.eigenvalues, rtol=0, atol=1e-6)
    assert scaled.n_clusters == exact.n_clusters == 5
    assert adjusted_rand_score(exact.labels, scaled.labels) >= 0.99
    assert adjusted_rand_score(truth, scaled.labels) >= 0.99


def test_the_projected_path_clusters_planted_mixtures_as_the_exact_path_does():
    # Gaussian groups in 256 dimensions: unlike heatmaps, most of each map's variance is noise spread over
    # all components, so the projected search needs many of them (192 here) and may still miss a few
    # neighbours; the clustering must not change
    maps, _truth = planted_mixture(3000, 4, separation=0.6, dim=256, seed=1)
    config = AnalysisConfig()
    exact = spectral_analysis(maps, config)
    limits = KnnLimits(exact_max_n=500)
    scaled = spectral_analysis(maps, config, knn_limits=limits)
    assert scaled.knn.startswith("approximate (") and "principal components" in scaled.knn
    assert scaled.knn_recall >= limits.min_recall
    assert scaled.n_clusters == exact.n_clusters == 4
    assert adjusted_rand_score(exact.labels, scaled.labels) >= 0.99
    np.testing.assert_allclose(scaled.eigenvalues[:8], exact.eigenvalues[:8], rtol=0, atol=5e-3)


def test_projected_search_in_all_dimensions_is_exact_with_many_groups_skipped():
    # as many components as dimensions: the candidates are the exact nearest (up to float32 round-off, hence
    # twice as many as needed), whichever groups were skipped
    rng = np.random.default_rng(3)
    points = (rng.normal(size=(12, 16)) * 4)[rng.integers(0, 12, 3000)] + rng.normal(size=(3000, 16))
    points = points.astype(np.float32)
    graph = nearest_neighbors(points, 25, "projected", limits=KnnLimits(projected_steps=((16, 2),), group_size=64))
    assert "50 nearest in 16 principal components" in graph.description
    d2 = ((points[:, None, :].astype(np.float64) - points[None, :, :]) ** 2).sum(axis=2)
    np.fill_diagonal(d2, np.inf)
    expected = np.argsort(d2, axis=1)[:, :25]
    assert all(set(a) == set(b) for a, b in zip(graph.indices, expected))


def test_the_candidate_selection_keeps_the_nearest_among_many_ties():
    # maps on a small lattice: many repeated maps and equal distances for the compiled selection
    maps = np.random.default_rng(0).integers(0, 3, size=(2000, 6)).astype(np.float32)
    graph = nearest_neighbors(maps, 10, "projected", limits=KnnLimits(projected_steps=((6, 2),), group_size=64))
    np.testing.assert_allclose(graph.distances, nearest_neighbors(maps, 10, "exact").distances, rtol=1e-6)


def test_the_measured_recall_is_the_recall_of_the_projected_search():
    maps, _ = planted_mixture(3000, 4, separation=0.6, dim=256, seed=1)
    # every row sampled, and a threshold low enough that the first (poor) setting is used
    limits = KnnLimits(projected_steps=((16, 2),), min_recall=0.01, recall_sample=3000)
    graph = nearest_neighbors(maps, 10, "projected", limits=limits)
    assert 0 < graph.recall < 0.95  # 16 components of 256 lose neighbours here
    assert graph.recall == pytest.approx(true_recall(maps, graph, 10), abs=1e-3)


def test_the_projected_search_widens_until_its_recall_is_reached():
    maps, _ = planted_mixture(3000, 4, separation=0.6, dim=256, seed=1)
    graph = nearest_neighbors(maps, 10, "projected", limits=KnnLimits(projected_steps=((8, 2), (256, 4))))
    assert "40 nearest in 256 principal components" in graph.description and graph.recall == 1.0
    expected = nearest_neighbors(maps, 10, "exact")
    np.testing.assert_array_equal(graph.indices, expected.indices)
    np.testing.assert_allclose(graph.distances, expected.distances, rtol=1e-6)


@pytest.mark.parametrize("fallback", ["exact", pytest.param("approximate", marks=NN_DESCENT)])
def test_a_projected_search_below_the_recall_threshold_falls_back(fallback):
    maps, _ = planted_mixture(3000, 4, separation=0.6, dim=256, seed=1)
    limits = KnnLimits(projected_steps=((8, 2), (16, 2)), exact_fallback_max_n=25_000 if fallback == "exact" else 1000)
    graph = nearest_neighbors(maps, 10, "projected", limits=limits)
    assert "recall@10 was 0." in graph.description and "with 8 components, 0." in graph.description
    assert f"with 16 components (below {limits.min_recall})" in graph.description
    if fallback == "exact":
        assert graph.description.startswith("exact (brute force") and graph.recall == 1.0
        np.testing.assert_array_equal(graph.indices, nearest_neighbors(maps, 10, "exact").indices)
    else:
        assert graph.description.startswith(APPROXIMATE) and 0 < graph.recall <= 1


@NN_DESCENT
def test_nn_descent_reports_a_recall_that_matches_the_true_one():
    maps, _ = heatmap_mixture(2000, 5, seed=1)
    limits = KnnLimits(recall_sample=2000)
    graph = nearest_neighbors(maps, 10, "approximate", seed=0, limits=limits)
    assert graph.description.startswith(APPROXIMATE)
    assert graph.indices.shape == (2000, 10) and (graph.indices != np.arange(2000)[:, None]).all()
    assert graph.recall == pytest.approx(true_recall(maps, graph, 10), abs=1e-3)
    assert graph.recall >= 0.95
    again = nearest_neighbors(maps, 10, "approximate", seed=0, limits=limits)
    np.testing.assert_array_equal(graph.indices, again.indices)  # seeded: the same graph every run


def test_limits_are_validated():
    with pytest.raises(ValueError, match="min_recall"):
        KnnLimits(min_recall=0)
    with pytest.raises(ValueError, match="projected_steps"):
        KnnLimits(projected_steps=())
    with pytest.raises(ValueError, match="unknown kNN method"):
        nearest_neighbors(np.zeros((5, 2), np.float32), 2, "annoy")
