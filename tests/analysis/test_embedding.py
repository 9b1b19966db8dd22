"""spray.analysis.embedding: t-SNE and UMAP for the report."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from mixtures import planted_mixture
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

from spray.analysis import FULL_LAYOUT_MAX_N, embed, embed_described, embedding_descriptions
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


def test_embeddings_up_to_the_full_layout_limit_are_those_of_every_map_laid_out():
    """At most FULL_LAYOUT_MAX_N maps: t-SNE and UMAP lay out every map as they always have; the golden
    coordinates were made by that code path (scikit-learn 1.9.1, umap-learn 0.5.12) and must not move."""
    maps, _ = planted_mixture(200, 3, separation=3.0)
    golden = np.load(Path(__file__).parent / "data" / "small_embedding.npz")
    out = embed(maps, EmbeddingConfig(seed=0))
    assert FULL_LAYOUT_MAX_N >= 200
    for name in ("tsne", "umap"):
        np.testing.assert_allclose(out[name], golden[name], rtol=1e-5, atol=1e-4)
    assert embedding_descriptions(200, EmbeddingConfig())["tsne"].startswith("t-SNE of all 200 samples")


def test_many_samples_lay_out_landmarks_and_place_the_rest_near_them():
    maps, truth = planted_mixture(400, 3, separation=3.0)
    config = EmbeddingConfig(seed=0)
    first, descriptions = embed_described(maps, config, full_max_n=120, landmarks=60)
    second = embed(maps, config, full_max_n=120, landmarks=60)
    for name in ("tsne", "umap"):
        assert first[name].shape == (400, 2) and first[name].dtype == np.float32
        np.testing.assert_array_equal(first[name], second[name])
        assert adjusted_rand_score(truth, KMeans(3, n_init=10, random_state=0).fit_predict(first[name])) == 1.0
        assert "60 landmarks" in descriptions[name] and "the other 340 samples are placed" in descriptions[name]
    assert descriptions == embedding_descriptions(400, config, full_max_n=120, landmarks=60)


def test_landmarks_are_distinct_maps():
    """Repeated maps are one landmark candidate, so a class of mostly identical maps still has distinct
    landmarks to lay out (t-SNE cannot lay out identical points)."""
    distinct, _ = planted_mixture(30, 3, separation=3.0)
    maps = np.concatenate([np.repeat(distinct[:1], 200, axis=0), distinct[1:]])
    out, descriptions = embed_described(maps, EmbeddingConfig(methods=["tsne"]), full_max_n=100, landmarks=50)
    assert np.isfinite(out["tsne"]).all()
    assert "30 landmarks" in descriptions["tsne"]
    np.testing.assert_array_equal(out["tsne"][:200], np.repeat(out["tsne"][:1], 200, axis=0))
