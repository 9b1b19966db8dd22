"""Stage 2: turn input relevance into comparable maps for the spectral analysis.

Channel sum, area-averaged downsizing, optional absolute value, normalisation. Normalising by the sum of
absolute relevance (the default) rather than the signed sum keeps maps whose positive and negative relevance
cancel from exploding (see the method notes); every norm is guarded against zero.
"""

from __future__ import annotations

import numpy as np
import torch

from spray.config import PreprocessingConfig
from spray.errors import DataError

_GUARD = 1e-12


def downsize(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Area-average (N, H, W) maps to (N, h, w); exact block means when h, w divide H, W."""
    if maps.shape[1:] == tuple(size):
        return maps.astype(np.float32, copy=False)
    pooled = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(np.ascontiguousarray(maps))[:, None], size)
    return pooled[:, 0].numpy().astype(np.float32, copy=False)


def normalize(maps: np.ndarray, norm: str) -> np.ndarray:
    """Divide each (h, w) map of (N, h, w) by its norm: 'sum_abs', 'l2', 'max_abs' or 'none'."""
    flat = maps.reshape(len(maps), -1)
    if norm == "none":
        return maps
    if norm == "sum_abs":
        scale = np.abs(flat).sum(1)
    elif norm == "l2":
        scale = np.sqrt((flat.astype(np.float64) ** 2).sum(1))
    elif norm == "max_abs":
        scale = np.abs(flat).max(1)
    else:
        raise ValueError(f"unknown normalisation {norm!r}; expected sum_abs, l2, max_abs or none")
    return (maps / np.maximum(scale, _GUARD)[:, None, None].astype(np.float32)).astype(np.float32)


def preprocess(relevance: np.ndarray, config: PreprocessingConfig, ids: list[str] | None = None) -> np.ndarray:
    """(N, C, H, W) input relevance -> (N, h, w) float32 maps ready for the affinity graph.

    A map with NaN or infinite relevance cannot be compared with others; it raises DataError naming the
    samples (``ids``) so the user can look at them, instead of silently poisoning the whole class.
    """
    if relevance.ndim != 4:
        raise ValueError(f"expected relevance of shape (N, C, H, W), got {relevance.shape}")
    summed = relevance.sum(1, dtype=np.float32)
    bad = np.flatnonzero(~np.isfinite(summed).all((1, 2)))
    if len(bad):
        names = [ids[i] if ids is not None else str(i) for i in bad[:10]]
        more = f" and {len(bad) - 10} more" if len(bad) > 10 else ""
        raise DataError(
            f"non-finite (NaN or inf) relevance for {len(bad)} sample(s): {', '.join(names)}{more}; "
            "check these inputs and the model's outputs for them"
        )
    if config.absolute:
        summed = np.abs(summed)
    return normalize(downsize(summed, tuple(config.size)), config.normalize)
