"""The flag stage's cached task: score one class's clusters from its preprocess and analyse entries, join the
pattern carriers, and store the result; ``read_flagged`` reads such an entry back.

An entry holds ``labels`` (N,) (the spectral clusters with the findings' members moved into their flagged
clusters), ``regions`` (K, h, w) bool (all False where a cluster has no region), per finding its
``prototype_<k>`` (h, w, C) and ``windows_<k>`` (n, 4), and in its meta, per cluster by id: ``id``,
``size``, ``score``, ``flagged``, ``evidence`` (``Evidence.to_dict``) and ``has_region``; per finding:
``cluster``, ``size``, ``clusters`` (spectral cluster id -> members), ``groups``, ``anywhere``, ``score``,
``evidence``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

import spray.flag
from spray.attribute import resolve_device
from spray.cache import Entry, cached, entry_key
from spray.config import FlaggingConfig, ImageConfig, ModelConfig
from spray.data import Sample, iter_pixel_batches, load_pixels
from spray.errors import RunError
from spray.flag.effect import EFFECT_RECIPIENTS
from spray.flag.evidence import CONSISTENCY, NECESSITY, SUFFICIENCY, Evidence
from spray.flag.findings import (
    CARRIER_SPREAD,
    CROSS_MATCH,
    JOIN_EFFECT,
    JOIN_RESEMBLANCE,
    MIN_EFFECT_GAP,
    MIN_OVERLAP,
    OVERLAP,
    SAME_PATTERN,
    ClusterEvidence,
    Finding,
    Joined,
)
from spray.flag.passes import PixelBatches
from spray.flag.patterns import (
    HOTSPOT_SIDE,
    MATCH,
    MAX_PATTERNS,
    MIN_CONTRAST,
    MIN_RECUR,
    MIN_SIDE,
    SCALES,
    SEARCH_SIDE,
)
from spray.flag.plan import GROW_SPREAD, MAX_GROWN_AREA, MIN_SPREAD, REGION_MASS
from spray.model import load_model

STORE_VERSION = 13
"""Revision of what a flag entry stores; bump it when that changes within a release."""


@dataclass(frozen=True)
class FlagTask:
    """Everything the flag task of one class needs besides its preprocess and analyse entries."""

    class_index: int
    model: ModelConfig
    image: ImageConfig
    flagging: FlaggingConfig
    device: str  # as in attribution.device ("auto", "cpu", "cuda:0", ...)
    batch_size: int  # images per batch while the class streams past
    loader_workers: int  # decoding threads
    samples: tuple[Sample, ...]  # the class's samples (any order: looked up by the preprocessed ids)
    recipients: tuple[Sample, ...]  # images of other classes the regions are pasted into


def store_key(flagging: FlaggingConfig, image: ImageConfig, analyse_key: str, pre_key: str, model_token: str,
              recipients_token: str) -> str:
    """The cache key of a class's flag entry: the token of everything that determines it. The thresholds
    are constants of the code, so they are part of it, with the release and ``STORE_VERSION``."""
    thresholds = (CONSISTENCY, NECESSITY, SUFFICIENCY, REGION_MASS, OVERLAP, SAME_PATTERN, CROSS_MATCH,
                  CARRIER_SPREAD, MIN_OVERLAP,
                  HOTSPOT_SIDE, SCALES, MATCH,
                  MIN_RECUR, SEARCH_SIDE, MAX_PATTERNS, MIN_CONTRAST, MIN_SIDE, GROW_SPREAD, MIN_SPREAD,
                  MAX_GROWN_AREA, EFFECT_RECIPIENTS, JOIN_EFFECT, JOIN_RESEMBLANCE, MIN_EFFECT_GAP)
    return entry_key("flag", STORE_VERSION, thresholds, flagging, analyse_key, pre_key, model_token, image,
                     recipients_token)


def flag_task(directory: str, key: str, pre: Entry, analysis: Entry, task: FlagTask) -> Entry:
    """The class's flag entry under ``directory``: found by ``key``, or computed and stored."""
    return cached(directory, "flag", key, _flag, pre, analysis, task)


@dataclass(frozen=True)
class Flagged:
    """A flag entry read back: the labels after joining, every cluster's evidence and region, the findings."""

    labels: np.ndarray  # (N,) int, aligned with the preprocess entry's ids
    clusters: list[ClusterEvidence]  # by cluster id; no distances (they are not stored)
    findings: list[Finding]  # strongest first


def read_flagged(entry: Entry) -> Flagged:
    """Read a flag entry back (see the module docstring for its layout)."""
    arrays, meta = entry.read()
    clusters = [
        ClusterEvidence(int(stored["id"]), int(stored["size"]),
                        Evidence.from_dict(stored["evidence"], score=stored["score"], flagged=stored["flagged"]),
                        arrays["regions"][position] if stored["has_region"] else None)
        for position, stored in enumerate(meta["clusters"])
    ]
    findings = [
        Finding(int(stored["cluster"]), int(stored["size"]), {int(c): int(k) for c, k in stored["clusters"]},
                tuple(int(g) for g in stored["groups"]), bool(stored["anywhere"]),
                Evidence.from_dict(stored["evidence"], score=stored["score"], flagged=True),
                arrays[f"prototype_{position}"], arrays[f"windows_{position}"])
        for position, stored in enumerate(meta.get("findings", []))
    ]
    return Flagged(arrays["labels"] if "labels" in arrays else np.zeros(0, np.int64), clusters, findings)


def _flag(pre: Entry, analysis: Entry, task: FlagTask) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    pre_arrays, pre_meta = pre.read()
    analysis_arrays, analysis_meta = analysis.read()
    if "skipped" in analysis_meta:
        return {}, {"clusters": []}
    by_id = {sample.id: sample for sample in task.samples}
    members = [by_id[i] for i in pre_meta["ids"]]
    recipients, _, _ = load_pixels(list(task.recipients), task.image)
    maps = pre_arrays["maps"]
    model, device = load_model(task.model), resolve_device(task.device)
    # looked up on the package, where the public name lives, so that a replacement set there is used
    scored = spray.flag.score_clusters(model, task.class_index, _batches(members, task), maps,
                                       analysis_arrays["labels"], recipients, task.image, task.flagging, device)
    joined = spray.flag.form_findings(analysis_arrays["labels"], scored)
    if joined.findings:
        effects = spray.flag.measure_effects(model, task.class_index, _batches(members, task), maps, recipients,
                                             task.image, task.flagging, joined.findings, device)
        joined = spray.flag.join_by_effect(joined, effects)
    return _stored(joined, maps.shape[1:])


def _batches(members: list[Sample], task: FlagTask) -> PixelBatches:
    def batches() -> Iterator[np.ndarray]:
        # the class streams past twice (score_clusters); an image that decoded for attribution and fails
        # now has changed on disk since
        for batch in iter_pixel_batches(members, task.image, task.batch_size, task.loader_workers):
            if batch.failed:
                sample, reason = batch.failed[0]
                raise RunError(f"class {task.class_index}: sample {sample} can no longer be read ({reason}); "
                               "the images changed while auditing: re-run")
            yield batch.pixels

    return batches


def _stored(joined: Joined, map_shape: tuple[int, ...]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    scored = joined.clusters
    regions = np.stack([s.region if s.region is not None else np.zeros(map_shape, bool) for s in scored]) \
        if scored else np.zeros((0, *map_shape), bool)
    meta = {"clusters": [{"id": s.id, "size": s.size, "score": s.score, "flagged": s.flagged,
                          "evidence": s.evidence.to_dict(), "has_region": s.region is not None} for s in scored],
            "findings": [{"cluster": f.cluster, "size": f.size, "clusters": sorted(f.clusters.items()),
                          "groups": list(f.groups), "anywhere": f.anywhere, "score": f.score,
                          "evidence": f.evidence.to_dict()} for f in joined.findings]}
    arrays = {"regions": regions, "labels": joined.labels}
    for position, finding in enumerate(joined.findings):
        arrays[f"prototype_{position}"] = finding.prototype
        arrays[f"windows_{position}"] = finding.windows
    return arrays, meta
