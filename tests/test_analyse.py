"""Stage 3 (spray.analyse): what the spectral analysis and the embeddings promise."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse
from sklearn.metrics import adjusted_rand_score
from sklearn.neighbors import NearestNeighbors

from spray import analyse
from spray.analyse import (
    choose_n_clusters,
    embed,
    knn_affinity,
    normalized_laplacian,
    smallest_eigenpairs,
    spectral_analysis,
    spectral_clustering,
)
from spray.config import AnalysisConfig, EmbeddingConfig
from spray.errors import DataError


def planted_mixture(n: int, groups: int, separation: float = 0.7, dim: int = 64, seed: int = 0):
    """Gaussian groups of equal size: centres ~ N(0, separation^2 I), unit noise.

    At separation 0.7 the groups still share kNN edges (the graph is connected), so recovering them
    takes the spectrum and not just connected components.
    """
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(groups, dim)) * separation
    truth = np.arange(n) % groups
    maps = centres[truth] + rng.normal(size=(n, dim))
    return maps.astype(np.float32), truth


def dense_normalized_laplacian(affinity: scipy.sparse.spmatrix) -> np.ndarray:
    a = affinity.toarray()
    d = a.sum(axis=1)
    return np.eye(len(a)) - a / np.sqrt(np.outer(d, d))


# ---------------------------------------------------------------------------------------------- kNN graph


@pytest.mark.parametrize("weighting", analyse.WEIGHTINGS)
def test_affinity_is_sparse_symmetric_and_built_on_the_exact_neighbours(weighting):
    maps, _ = planted_mixture(400, 3)
    k = 10
    affinity = knn_affinity(maps, k, weighting=weighting)

    assert scipy.sparse.isspmatrix_csr(affinity) or isinstance(affinity, scipy.sparse.csr_array)
    assert affinity.shape == (400, 400)
    assert affinity.nnz <= 2 * k * 400
    assert abs(affinity - affinity.T).max() == 0
    assert affinity.diagonal().max() == 0
    assert affinity.data.min() > 0 and affinity.data.max() <= 1

    # every sample is joined to exactly its k nearest neighbours (scikit-learn's exact search) and to the
    # samples that have it among theirs: nothing else
    _, expected = NearestNeighbors(n_neighbors=k + 1).fit(maps).kneighbors(maps)
    expected_edges = {(i, j) for i, row in enumerate(expected[:, 1:]) for j in row}
    expected_edges |= {(j, i) for i, j in expected_edges}
    rows, cols = affinity.nonzero()
    assert set(zip(rows.tolist(), cols.tolist())) == expected_edges


def test_connectivity_weights_are_one_for_mutual_and_half_for_one_sided_neighbours():
    maps, _ = planted_mixture(200, 2)
    values = set(np.unique(knn_affinity(maps, 5, weighting="connectivity").data).tolist())
    assert values == {0.5, 1.0}


def test_repeated_heatmaps_are_each_others_neighbours():
    maps, _ = planted_mixture(100, 2)
    maps[:20] = maps[0]  # 20 identical maps: distance 0, local scale 0
    affinity = knn_affinity(maps, 10)
    assert np.isfinite(affinity.data).all()
    # each copy's 10 neighbours are other copies, at full weight
    assert set(affinity[0].indices) <= set(range(1, 20)) | set(affinity[0].indices[affinity[0].data < 1])
    assert (affinity[0, 1:20].toarray() > 0).sum() >= 10


# ---------------------------------------------------------------------------------------------- spectrum


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


# ---------------------------------------------------------------------------------------------- eigengap


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


@pytest.mark.parametrize(("n", "groups", "seed"), [(300, 3, 0), (600, 5, 1), (1500, 4, 2), (1200, 2, 3)])
def test_planted_mixtures_are_recovered_with_k_from_the_eigengap(n, groups, seed):
    maps, truth = planted_mixture(n, groups, seed=seed)
    result = spectral_analysis(maps, AnalysisConfig())
    assert result.n_components == 1
    assert result.n_clusters == groups
    assert adjusted_rand_score(truth, result.labels) >= 0.99
    assert result.gaps.shape == (31,)
    assert result.gaps[groups - 1] == result.gaps[1:10].max() or groups == 1


@pytest.mark.parametrize("seed", [0, 2])
def test_a_tight_group_inside_a_diffuse_class_is_separated_better_with_local_scaling(seed):
    # the Clever Hans shape: a few nearly identical maps next to many varied ones
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(2, 64)) * 0.8
    truth = np.repeat([0, 1], [500, 60])
    spread = np.where(truth == 1, 0.3, 1.2)[:, None]
    maps = (centres[truth] + rng.normal(size=(560, 64)) * spread).astype(np.float32)
    result = spectral_analysis(maps, AnalysisConfig())
    assert result.n_clusters == 2
    scaled = adjusted_rand_score(truth, result.labels)
    assert scaled >= 0.95

    # the same pipeline with binary kNN edges (CoRelAy's) pulls diffuse maps into the tight group
    laplacian = normalized_laplacian(knn_affinity(maps, 10, weighting="connectivity"))
    _, vectors = smallest_eigenpairs(laplacian, 32)
    binary = adjusted_rand_score(truth, spectral_clustering(vectors, 2))
    assert scaled > binary + 0.05


def test_labels_are_numbered_by_decreasing_cluster_size():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 32)) * 5
    truth = np.repeat([0, 1, 2], [50, 200, 100])
    maps = (centres[truth] + rng.normal(size=(350, 32))).astype(np.float32)
    result = spectral_analysis(maps, AnalysisConfig())
    sizes = np.bincount(result.labels)
    assert sizes.tolist() == [200, 100, 50]
    assert result.labels.dtype == np.int64


def test_spectral_clustering_with_one_cluster_labels_everything_zero():
    assert spectral_clustering(np.random.default_rng(0).normal(size=(20, 4)), 1).tolist() == [0] * 20


def test_the_cluster_range_is_capped_for_few_samples():
    maps, _ = planted_mixture(35, 2)
    result = spectral_analysis(maps, AnalysisConfig(neighbors=10, max_clusters=10))
    # 35 samples with 10 neighbours each cannot hold more than 3 separable groups
    assert result.cluster_range == (2, 3)
    assert 2 <= result.n_clusters <= 3
    assert any("instead of the configured 2..10" in note for note in result.notes)
    # and the eigenvalue count follows N - 1 when N is below config.eigenvalues
    tiny = spectral_analysis(maps[:12], AnalysisConfig(neighbors=3, eigenvalues=32))
    assert tiny.eigenvalues.shape == (11,) and tiny.eigenvectors.shape == (12, 11)


def test_analysis_is_deterministic_for_a_seed():
    maps, _ = planted_mixture(1500, 4, separation=0.5)  # overlapping: k-means has choices to make
    config = AnalysisConfig(seed=3)
    first, second = spectral_analysis(maps, config), spectral_analysis(maps, config)
    np.testing.assert_array_equal(first.labels, second.labels)
    np.testing.assert_array_equal(first.eigenvalues, second.eigenvalues)
    np.testing.assert_array_equal(first.eigenvectors, second.eigenvectors)


# ---------------------------------------------------------------------------------------------- errors


def test_too_few_samples_for_the_knn_graph_is_a_data_error_naming_the_key():
    maps, _ = planted_mixture(8, 2)
    with pytest.raises(DataError) as error:
        spectral_analysis(maps, AnalysisConfig(neighbors=10))
    message = str(error.value)
    # the caller prefixes the class: "class 7: 8 samples but ..."
    assert message.startswith("8 samples but")
    assert "at least 11" in message and "analysis.neighbors" in message and "at most 7" in message


def test_nan_and_inf_rows_are_a_data_error_naming_the_rows():
    maps, _ = planted_mixture(100, 2)
    maps[3, 5] = np.nan
    maps[41, 0] = np.inf
    with pytest.raises(DataError, match=r"^2 of 100 heatmaps contain NaN or inf values \(rows 3, 41\)"):
        spectral_analysis(maps, AnalysisConfig())
    with pytest.raises(DataError, match=r"rows 3, 41"):
        embed(maps, EmbeddingConfig(methods=["tsne"]))


def test_maps_must_be_two_dimensional():
    with pytest.raises(DataError, match=r"expected maps of shape \(N, D\)"):
        spectral_analysis(np.zeros((10, 4, 4), dtype=np.float32), AnalysisConfig(neighbors=3))


def test_an_isolated_node_is_rejected_by_the_laplacian():
    affinity = scipy.sparse.csr_matrix(np.array([[0, 1, 0], [1, 0, 0], [0, 0, 0]], dtype=float))
    with pytest.raises(ValueError, match=r"nodes \[2\] have none"):
        normalized_laplacian(affinity)


# ---------------------------------------------------------------------------------------------- embeddings


def test_tsne_is_seeded_and_does_not_import_umap(monkeypatch):
    def no_umap():
        raise AssertionError("umap imported although only t-SNE was asked for")

    monkeypatch.setattr(analyse, "_import_umap", no_umap)
    maps, _truth = planted_mixture(150, 3, separation=3.0)
    config = EmbeddingConfig(methods=["tsne"], seed=1)
    first, second = embed(maps, config), embed(maps, config)
    assert list(first) == ["tsne"]
    assert first["tsne"].shape == (150, 2) and first["tsne"].dtype == np.float32
    np.testing.assert_array_equal(first["tsne"], second["tsne"])


def test_tsne_caps_the_perplexity_for_few_samples():
    maps, _ = planted_mixture(12, 2)
    out = embed(maps, EmbeddingConfig(methods=["tsne"], perplexity=30))
    assert out["tsne"].shape == (12, 2) and np.isfinite(out["tsne"]).all()
    assert "perplexity 3.66667" in analyse.embedding_descriptions(12, EmbeddingConfig())["tsne"]


def test_umap_embedding_is_seeded_and_separates_groups():
    maps, truth = planted_mixture(300, 3, separation=3.0)
    config = EmbeddingConfig(methods=["umap"], seed=0)
    first, second = embed(maps, config), embed(maps, config)
    assert first["umap"].shape == (300, 2) and first["umap"].dtype == np.float32
    np.testing.assert_array_equal(first["umap"], second["umap"])
    from sklearn.cluster import KMeans

    found = KMeans(3, n_init=10, random_state=0).fit_predict(first["umap"])
    assert adjusted_rand_score(truth, found) == 1.0


def test_umap_handles_fewer_samples_than_its_neighbours():
    maps, _ = planted_mixture(8, 2)
    out = embed(maps, EmbeddingConfig(methods=["umap"], umap_neighbors=15))
    assert out["umap"].shape == (8, 2) and np.isfinite(out["umap"]).all()
