"""spray.analysis.spectral and .clustering: what the whole spectral analysis of one class promises."""

from __future__ import annotations

import numpy as np
import pytest
from mixtures import planted_mixture
from sklearn.metrics import adjusted_rand_score

from spray.analysis import (
    embed,
    knn_affinity,
    normalized_laplacian,
    smallest_eigenpairs,
    spectral_analysis,
    spectral_clustering,
)
from spray.config import AnalysisConfig, EmbeddingConfig
from spray.errors import DataError


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

