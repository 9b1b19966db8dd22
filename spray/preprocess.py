"""Stage 2: turn input relevance into comparable maps for the spectral analysis.

Channel sum, area-averaged downsizing, optional absolute value, normalisation. Normalising by the sum of
absolute relevance (the default) rather than the signed sum keeps maps whose positive and negative relevance
cancel from exploding (see the method notes); every norm is guarded against zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from spray.attribute import StoredShard
from spray.cache import Entry, cached, entry_key
from spray.config import PreprocessingConfig
from spray.data import Sample
from spray.errors import DataError

# What a preprocess entry holds (PreprocessedClass). Part of every key.
STORE_VERSION = 1

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
    return normalize(downsize(summed, config.size), config.normalize)


@dataclass(frozen=True)
class PreprocessTask:
    """The preprocessing of one class: the samples of each of its shards (in shard order), the section,
    and the cache entry (``directory``, ``key``) it is stored under."""

    directory: str
    key: str
    shard_samples: list[list[Sample]]
    config: PreprocessingConfig


def preprocess_key(config: PreprocessingConfig, shard_keys: list[str]) -> str:
    """The cache key of a class's maps: the section and the keys of its attribute entries."""
    return entry_key("preprocess", STORE_VERSION, config, shard_keys)


def preprocess_task(task: PreprocessTask, shards: list[Entry]) -> Entry:
    """The class's preprocess entry, computed from its attribute entries ``shards`` unless stored; a Dask
    task body."""
    return cached(task.directory, "preprocess", task.key, preprocess_shards, shards, task.shard_samples,
                  task.config)


@dataclass(frozen=True)
class PreprocessedClass:
    """A preprocess entry read back: ``maps`` (N, h, w) float32, ``logits`` (N, K), ``conservation`` (N,) of
    the explained samples ``ids`` (N), and the samples skipped by attribution [(id, reason)]."""

    maps: np.ndarray
    logits: np.ndarray
    conservation: np.ndarray
    ids: list[str]
    skipped: list[tuple[str, str]]

    def to_entry(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """The arrays and meta a cache entry stores."""
        return ({"maps": self.maps, "logits": self.logits, "conservation": self.conservation},
                {"ids": self.ids, "skipped": [list(item) for item in self.skipped]})

    @classmethod
    def read(cls, entry: Entry) -> PreprocessedClass:
        arrays, meta = entry.read()
        return cls(arrays["maps"], arrays["logits"], arrays["conservation"], list(meta["ids"]),
                   [(str(i), str(r)) for i, r in meta["skipped"]])


def preprocess_shards(shards: list[Entry], shard_samples: list[list[Sample]],
                      config: PreprocessingConfig) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Preprocessed maps of every explained sample of a class (``PreprocessedClass.to_entry``), reading each
    shard's relevance chunk by chunk, so that memory holds one chunk of full-resolution relevance and the
    (N, h, w) maps."""
    ids: list[str] = []
    logits, conservation, maps = [], [], []
    skipped: list[tuple[str, str]] = []
    for entry, samples in zip(shards, shard_samples):
        shard = StoredShard.read(entry)
        shard_ids = [samples[i].id for i in shard.index]
        step = shard.relevance.chunks[0]
        for start in range(0, shard.relevance.shape[0], step):
            # each map is normalised on its own, so chunk by chunk gives the same maps as all at once
            maps.append(preprocess(shard.relevance[start : start + step], config, shard_ids[start : start + step]))
        ids += shard_ids
        if len(shard_ids):
            logits.append(shard.logits)
            conservation.append(shard.conservation)
        skipped += shard.skipped
    return PreprocessedClass(
        maps=np.concatenate(maps) if maps else np.zeros((0, *config.size), np.float32),
        logits=np.concatenate(logits) if logits else np.zeros((0, 0), np.float32),
        conservation=np.concatenate(conservation) if conservation else np.zeros(0, np.float32),
        ids=ids, skipped=skipped,
    ).to_entry()
