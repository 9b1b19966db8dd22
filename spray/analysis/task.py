"""The analysis stage's cached tasks: per-class spectral analysis and embeddings, and the cross-class analysis.

Each task takes one frozen job (what it computes from) and stores ``(arrays, meta)`` through
:func:`spray.cache.cached`; :func:`analyse_key`, :func:`embed_key` and :func:`cross_class_key` are the
cache keys, which hold ``STORE_VERSION`` (and the latter two ``EMBED_STORE_VERSION``): bump it when what these
entries store changes within a release.
They are module-level functions so that process and distributed workers can run them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from spray.analysis.embedding import embed_described
from spray.analysis.features import lens_note, read_features
from spray.analysis.spectral import spectral_analysis
from spray.cache import Entry, cached, entry_key
from spray.config import AnalysisConfig, EmbeddingConfig
from spray.errors import DataError

__all__ = [
    "EMBED_STORE_VERSION",
    "STORE_VERSION",
    "AnalyseJob",
    "CrossClassJob",
    "EmbedJob",
    "analysable",
    "analyse",
    "analyse_key",
    "analyse_task",
    "cross_class",
    "cross_class_key",
    "cross_class_task",
    "embed_key",
    "embed_maps",
    "embed_task",
]

STORE_VERSION = 1
# What embed and cross-class entries hold: above ``spray.analysis.embedding.FULL_LAYOUT_MAX_N`` maps, landmark
# layouts (version 2); bump it when the embeddings stored change.
EMBED_STORE_VERSION = 2

Stored = tuple[dict[str, np.ndarray], dict[str, Any]]


@dataclass(frozen=True)
class AnalyseJob:
    """The spectral analysis of one class: its preprocess entry (maps (N, h, w)) and the analysis section;
    with ``analysis.space: features`` its features entry (``spray.analysis.features``), clustered instead."""

    pre: Entry
    config: AnalysisConfig
    class_name: str
    features: Entry | None = None


@dataclass(frozen=True)
class EmbedJob:
    """The 2-D embeddings of one class's preprocessed maps."""

    pre: Entry
    config: EmbeddingConfig


@dataclass(frozen=True)
class CrossClassJob:
    """One analysis of the maps of every audited class together: ``pres[i]`` holds class ``classes[i]``."""

    pres: tuple[Entry, ...]
    classes: tuple[int, ...]
    analysis: AnalysisConfig
    embedding: EmbeddingConfig


def analyse_key(config: AnalysisConfig, pre_key: str, features_key: str | None = None) -> str:
    """The analyse entry's key: the analysis section, the preprocess key and, with the features lens, the
    features key."""
    parts = (pre_key,) if features_key is None else (pre_key, features_key)
    return entry_key("analyse", STORE_VERSION, config, *parts)


def embed_key(config: EmbeddingConfig, pre_key: str) -> str:
    return entry_key("embed", STORE_VERSION, EMBED_STORE_VERSION, config, pre_key)


def cross_class_key(analysis: AnalysisConfig, embedding: EmbeddingConfig, pre_keys: list[str],
                    classes: list[int]) -> str:
    return entry_key("cross_class", STORE_VERSION, EMBED_STORE_VERSION, analysis, embedding, pre_keys, classes)


def _flat_maps(pre: Entry) -> np.ndarray:
    """The preprocessed maps of an entry as (N, h * w)."""
    maps = pre.read()[0]["maps"]
    return maps.reshape(len(maps), -1)


def analyse(job: AnalyseJob) -> Stored:
    """The stored spectral analysis of one class; a class the analysis cannot take (too few samples left
    once unreadable or non-finite ones were skipped, or maps that are not finite) is stored as skipped, with
    the reason, so that the other classes are audited."""
    points = _flat_maps(job.pre) if job.features is None else read_features(job.features)
    try:
        result = spectral_analysis(points, job.config)
    except DataError as error:
        return {}, {"skipped": str(error)}
    notes = list(result.notes)
    if job.features is not None and job.config.layer is not None:
        notes.insert(0, lens_note(job.config.layer, points.shape[1]))
    return (
        {"eigenvalues": result.eigenvalues, "eigenvectors": result.eigenvectors, "labels": result.labels,
         "gaps": result.gaps},
        {"n_clusters": result.n_clusters, "n_components": result.n_components, "neighbors": result.neighbors,
         "cluster_range": list(result.cluster_range), "knn": result.knn, "eigensolver": result.eigensolver,
         "notes": notes},
    )


def analyse_task(directory: str, key: str, job: AnalyseJob) -> Entry:
    return cached(directory, "analyse", key, analyse, job)


def analysable(maps: np.ndarray) -> bool:
    """Whether maps (N, h, w) can be embedded: at least 3, all finite (else the analysis skipped the class)."""
    return len(maps) >= 3 and bool(np.isfinite(maps).all())


def embed_maps(job: EmbedJob) -> Stored:
    """The stored embeddings of one class and the line per method that says what was computed."""
    maps = job.pre.read()[0]["maps"]
    if not analysable(maps):
        return {}, {"descriptions": {}}
    coordinates, descriptions = embed_described(maps.reshape(len(maps), -1), job.config)
    return coordinates, {"descriptions": descriptions}


def embed_task(directory: str, key: str, job: EmbedJob) -> Entry:
    return cached(directory, "embed", key, embed_maps, job)


def cross_class(job: CrossClassJob) -> Stored:
    """One spectral analysis and the embeddings of the maps of every audited class together."""
    maps, ids, labels = [], [], []
    for entry, index in zip(job.pres, job.classes):
        arrays, meta = entry.read()
        maps.append(arrays["maps"].reshape(len(arrays["maps"]), -1))
        ids += meta["ids"]
        labels.append(np.full(len(meta["ids"]), index, dtype=np.int64))
    all_maps = np.concatenate(maps)
    try:
        result = spectral_analysis(all_maps, job.analysis)
    except DataError as error:
        raise DataError(f"cross-class analysis: {error}") from None
    arrays = {"eigenvalues": result.eigenvalues, "labels": result.labels, "classes": np.concatenate(labels)}
    coordinates, _ = embed_described(all_maps, job.embedding)
    arrays.update({f"embedding_{name}": coords for name, coords in coordinates.items()})
    return arrays, {"ids": ids, "n_clusters": result.n_clusters, "notes": list(result.notes),
                    "embeddings": list(job.embedding.methods)}


def cross_class_task(directory: str, key: str, job: CrossClassJob) -> Entry:
    return cached(directory, "cross_class", key, cross_class, job)
