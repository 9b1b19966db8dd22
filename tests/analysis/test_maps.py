"""spray.analysis._maps: the distinct rows the analysis and the embeddings build on."""

from __future__ import annotations

import numpy as np

from spray.analysis import _maps


def test_distinct_rows_are_equal_values_in_order_of_first_appearance():
    maps = np.array([[1, 0], [2, 2], [1, -0.0], [3, 3], [2, 2]], dtype=np.float32)
    distinct, inverse = _maps.distinct_rows(maps)
    np.testing.assert_array_equal(distinct, [[1, 0], [2, 2], [3, 3]])
    np.testing.assert_array_equal(inverse, [0, 1, 0, 2, 1])


def test_rows_that_share_a_hash_are_still_told_apart(monkeypatch):
    rng = np.random.default_rng(0)
    maps = rng.normal(size=(6, 3)).astype(np.float32)[[0, 1, 2, 1, 3, 4, 5, 0]]
    expected = _maps.distinct_rows(maps)
    monkeypatch.setattr(_maps, "_row_hashes", lambda bits: np.zeros(len(bits), dtype=np.uint64))
    distinct, inverse = _maps.distinct_rows(maps)
    np.testing.assert_array_equal(distinct, expected[0])
    np.testing.assert_array_equal(inverse, expected[1])
    np.testing.assert_array_equal(inverse, [0, 1, 2, 1, 3, 4, 5, 0])
