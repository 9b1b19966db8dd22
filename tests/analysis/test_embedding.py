"""spray.analysis.embedding: t-SNE and UMAP for the report."""

from __future__ import annotations

import sys

import numpy as np
from mixtures import planted_mixture
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

from spray.analysis import embed, embedding_descriptions
from spray.config import EmbeddingConfig


def test_tsne_is_seeded_and_does_not_import_umap(monkeypatch):
    monkeypatch.setitem(sys.modules, "umap", None)  # importing umap now fails
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
    assert "perplexity 3.66667" in embedding_descriptions(12, EmbeddingConfig())["tsne"]


def test_umap_embedding_is_seeded_and_separates_groups():
    maps, truth = planted_mixture(300, 3, separation=3.0)
    config = EmbeddingConfig(methods=["umap"], seed=0)
    first, second = embed(maps, config), embed(maps, config)
    assert first["umap"].shape == (300, 2) and first["umap"].dtype == np.float32
    np.testing.assert_array_equal(first["umap"], second["umap"])
    found = KMeans(3, n_init=10, random_state=0).fit_predict(first["umap"])
    assert adjusted_rand_score(truth, found) == 1.0


def test_umap_handles_fewer_samples_than_its_neighbours():
    maps, _ = planted_mixture(8, 2)
    out = embed(maps, EmbeddingConfig(methods=["umap"], umap_neighbors=15))
    assert out["umap"].shape == (8, 2) and np.isfinite(out["umap"]).all()

def test_t_sne_of_many_samples_embeds_a_sample_and_places_the_rest():
    maps, truth = planted_mixture(400, 3, separation=3.0)
    config = EmbeddingConfig(methods=["tsne"])
    first, second = embed(maps, config, tsne_max_n=120)["tsne"], embed(maps, config, tsne_max_n=120)["tsne"]
    assert first.shape == (400, 2) and np.isfinite(first).all()
    np.testing.assert_array_equal(first, second)
    assert adjusted_rand_score(truth, KMeans(3, n_init=10, random_state=0).fit_predict(first)) == 1.0
    assert "random sample of 120 of the 400" in embedding_descriptions(400, config, tsne_max_n=120)["tsne"]
