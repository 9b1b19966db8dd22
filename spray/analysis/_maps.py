"""Validation of the maps at the boundary of the analysis, and their distinct rows.

Maps that are not a finite 2-D array, or a class with fewer samples than the kNN graph needs, raise
:class:`spray.errors.DataError` with a message that starts with what is wrong, so that the caller can
prefix the class (``"class 7: " + message``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from spray.errors import DataError


def check_maps(maps: Any, name: str = "maps") -> np.ndarray:
    """Return ``maps`` as a C-contiguous float32 (N, D) array or raise DataError."""
    array = np.asarray(maps)
    if array.ndim != 2:
        raise DataError(f"expected {name} of shape (N, D) (one flattened heatmap per row), got shape {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise DataError(f"expected at least one heatmap with at least one value, got {name} of shape {array.shape}")
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise DataError(f"expected numeric {name}, got dtype {array.dtype}")
    array = np.ascontiguousarray(array, dtype=np.float32)
    finite = np.isfinite(array).all(axis=1)
    if not finite.all():
        rows = np.flatnonzero(~finite)
        shown = ", ".join(str(i) for i in rows[:20]) + (f", ... ({len(rows)} in all)" if len(rows) > 20 else "")
        raise DataError(
            f"{len(rows)} of {len(array)} heatmaps contain NaN or inf values (rows {shown}); "
            "expected finite relevance: check the attribution of these samples"
        )
    return array


def check_enough_samples(n_samples: int, n_neighbors: int) -> None:
    if n_samples <= n_neighbors:
        raise DataError(
            f"{n_samples} sample{'s' if n_samples != 1 else ''} but the kNN graph with analysis.neighbors = "
            f"{n_neighbors} needs at least {n_neighbors + 1}; lower analysis.neighbors to at most "
            f"{max(n_samples - 1, 1)} or audit more samples"
        )


def distinct_rows(maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct rows of ``maps`` (N, D) float32 in order of first appearance, and (N,) the index of each
    row's copy among them. Rows are equal when their values are (-0.0 equals 0.0)."""
    rows = np.ascontiguousarray(maps, dtype=np.float32)
    if (np.signbit(rows) & (rows == 0)).any():
        rows = rows + np.float32(0)  # -0.0 + 0.0 is +0.0: rows equal as numbers become equal as bits
    bits = rows.view(np.uint32)
    first, inverse = _first_copies(_row_hashes(bits))
    duplicate = np.flatnonzero(first[inverse] != np.arange(len(rows)))
    if duplicate.size and not (bits[duplicate] == bits[first[inverse[duplicate]]]).all():
        # two different rows share a hash: sort the rows themselves, each one opaque item of bytes
        # (np.unique(axis=0) compares a structured dtype field by field, far slower on long rows)
        items = bits.view(np.dtype((np.void, 4 * bits.shape[1]))).ravel()
        first, inverse = _first_copies(items)
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return np.asarray(maps)[first[order]], rank[np.ravel(inverse)]


def _row_hashes(bits: np.ndarray, block: int = 4096) -> np.ndarray:
    """(N,) uint64 hash of each row of ``bits`` (N, D) uint32: a fixed random linear form modulo 2^64, so that
    equal rows hash equal; computed in blocks to bound the uint64 copy."""
    weights = np.random.default_rng(0).integers(1, 2**63, size=bits.shape[1], dtype=np.uint64) | np.uint64(1)
    hashes = np.empty(len(bits), dtype=np.uint64)
    for start in range(0, len(bits), block):
        hashes[start : start + block] = (bits[start : start + block].astype(np.uint64) * weights).sum(axis=1)
    return hashes


def _first_copies(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For (N,) keys: the row of each distinct key's first occurrence (sorted by key), and each row's distinct key."""
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    return first, np.ravel(inverse)


def relabel_by_size(labels: np.ndarray) -> np.ndarray:
    """Renumber so that cluster 0 is the largest; equal sizes keep the order of their first member."""
    ids, first, counts = np.unique(labels, return_index=True, return_counts=True)
    order = np.lexsort((first, -counts))
    mapping = np.empty(ids.max() + 1, dtype=np.int64)
    mapping[ids[order]] = np.arange(len(ids))
    return mapping[labels]

