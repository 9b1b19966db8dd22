"""spray.analysis.affinity: the kNN affinity graph and its weights."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse
from mixtures import planted_mixture
from sklearn.neighbors import NearestNeighbors

from spray.analysis import WEIGHTINGS, knn_affinity


@pytest.mark.parametrize("weighting", WEIGHTINGS)
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

