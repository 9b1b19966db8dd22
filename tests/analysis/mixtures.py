"""Planted data for the analysis tests: Gaussian mixtures, heatmap-like maps, a dense reference Laplacian."""

from __future__ import annotations

import numpy as np
import scipy.sparse


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

