"""``summary.json``: the machine-readable outcome of an audit (a public contract).

Shape (extra keys may be added, none of these may change; the JSON Schema: ``docs/summary.schema.json``,
from ``spray.report.schema``)::

    {"schema_version": 1, "classes": [{"class": <index>, "name": ..., "n_samples": ..., "eigenvalues": [...], "n_clusters": k,
                  "flagged": bool,
                  "clusters": [{"id": ..., "size": ..., "members": [sample ids], "score": ...,
                                "flagged": true|false, "evidence": {...},
                                "neon": {"competitor", "mean_logit", "positive_share_in_region", "layer",
                                         "present_share", "present_share_in_region"} | null,
                                "faithfulness": {"aopc_morf", "aopc_random", "aopc_gain", "n"} | null}],
                  "findings": [{"cluster": ..., "size": ..., "clusters": {spectral id: members}, "groups": [...],
                                "anywhere": bool, "position_spread": ..., "score": ..., "members": [sample ids],
                                "prototype": [[[0-255 per channel]]], "evidence": {...}}],
                  "faithfulness": {...} | null}],
     "skipped_classes": [...], "skipped_samples": [{"id": ..., "reason": ...}],
     "label_mapping": {"source": ..., "outputs": [{"output": <index>, "name": ...}]}, "run": {...}}

Numbers that are not finite (a cluster too small to score, a conservation ratio of a zero logit) become
``null`` so that the file is strict JSON that every parser accepts.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import math
from pathlib import PurePath
from typing import Any

import numpy as np

from spray.report.schema import SCHEMA_VERSION
from spray.results import (
    ClassResult,
    ClusterNeon,
    ClusterResult,
    CrossClassResult,
    FaithfulnessSummary,
    FindingResult,
    RunInfo,
)


def to_jsonable(value: Any) -> Any:
    """Convert ``value`` into plain JSON types: numpy scalars and arrays, paths, tuples, sets, dataclasses.

    Non-finite floats become ``None``; mapping keys become strings (JSON has no other key type).
    """
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, (np.bool_,)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        number = float(value)
        return number if math.isfinite(number) else None
    if isinstance(value, np.ndarray):
        return [to_jsonable(item) for item in value.tolist()]
    if isinstance(value, dict):
        return {_json_key(key): to_jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
        return [to_jsonable(item) for item in items]
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, (_dt.datetime, _dt.date)):
        return value.isoformat()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_jsonable(dataclasses.asdict(value))
    if hasattr(value, "item") and callable(value.item):  # torch scalars and other 0-d array types
        return to_jsonable(value.item())
    return str(value)


def _json_key(key: Any) -> str:
    """A mapping key as JSON needs it: a string (numpy integers become ``"3"``, not ``"np.int64(3)"``)."""
    return key if isinstance(key, str) else str(to_jsonable(key))


def finite_or_nan(value: Any) -> float:
    """``value`` as a float, NaN when it is missing or not a finite number."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return math.nan
    return number if math.isfinite(number) else math.nan


def cluster_order_key(cluster: ClusterResult) -> tuple[bool, float, int]:
    """Flagged clusters first, then by decreasing score (unscored last), then by id for a stable order."""
    score = finite_or_nan(cluster.score)
    return (not bool(cluster.flagged), -score if not math.isnan(score) else math.inf, int(cluster.id))


def max_score(result: ClassResult) -> float:
    """The class's strongest Clever Hans evidence: its highest finite cluster score, NaN when none."""
    scores = [finite_or_nan(cluster.score) for cluster in result.clusters]
    scores = [score for score in scores if not math.isnan(score)]
    return max(scores) if scores else math.nan


def class_order_key(result: ClassResult) -> tuple[bool, float, int]:
    """Ranking of classes by Clever Hans evidence: flagged classes first, then by decreasing max score."""
    score = max_score(result)
    return (not result.flagged, -score if not math.isnan(score) else math.inf, int(result.class_index))


def conservation_stats(conservation: np.ndarray) -> dict[str, Any]:
    """Median, range and count of the finite per-sample conservation ratios (None when none is finite)."""
    values = np.asarray(conservation, dtype=np.float64).ravel()
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return {"median": None, "min": None, "max": None, "n": 0, "n_missing": int(values.size)}
    return {
        "median": float(np.median(finite)),
        "min": float(finite.min()),
        "max": float(finite.max()),
        "n": int(finite.size),
        "n_missing": int(values.size - finite.size),
    }


def cluster_summary(cluster: ClusterResult) -> dict[str, Any]:
    """One cluster's entry of summary.json."""
    return {
        "id": int(cluster.id),
        "size": int(cluster.size),
        "members": [str(member) for member in cluster.members],
        "score": to_jsonable(cluster.score),
        "flagged": bool(cluster.flagged),
        "evidence": to_jsonable(cluster.evidence.to_dict()),
        "prototypes": [str(sample) for sample in cluster.prototypes],
        "neon": neon_summary(cluster.neon),
        "faithfulness": faithfulness_summary(cluster.faithfulness),
    }


def finding_summary(finding: FindingResult) -> dict[str, Any]:
    """One finding's entry of summary.json: the flagged cluster it is listed under, the spectral clusters its
    members came from, the groups merged into it, whether it moves, its members, its prototype (h x w x C
    in 0-255, -1 outside the pattern's pixels) and the strongest group's evidence."""
    return {
        "cluster": int(finding.cluster),
        "size": int(finding.size),
        "clusters": {str(cluster): int(count) for cluster, count in sorted(finding.clusters.items())},
        "groups": [int(group) for group in finding.groups],
        "anywhere": bool(finding.anywhere),
        "position_spread": to_jsonable(finding.position_spread),
        "score": to_jsonable(finding.score),
        "members": [str(member) for member in finding.members],
        "prototype": np.where(np.isfinite(finding.prototype),
                              np.round(np.clip(np.nan_to_num(finding.prototype), 0, 1) * 255), -1).astype(int).tolist(),
        "evidence": to_jsonable(finding.evidence.to_dict()),
    }


def neon_summary(neon: ClusterNeon | None) -> dict[str, Any] | None:
    """A cluster's ``neon`` entry: its nearest competitor cluster, the members' mean membership logit, the
    share of the mean membership map's positive relevance inside the cluster's region (null without one),
    the share of that positive relevance from what the members have, and the share of the latter inside the
    region (both null with the deep-feature lens); null for a class with a single cluster."""
    if neon is None:
        return None
    return {"competitor": int(neon.competitor), "mean_logit": to_jsonable(neon.mean_logit),
            "positive_share_in_region": to_jsonable(neon.positive_share_in_region), "layer": neon.layer,
            "present_share": to_jsonable(neon.present_share),
            "present_share_in_region": to_jsonable(neon.present_share_in_region)}


def faithfulness_summary(faithfulness: FaithfulnessSummary | None) -> dict[str, Any] | None:
    """``{"aopc_morf", "aopc_random", "aopc_gain", "n"}`` in logits over the ``n`` sampled samples; null when
    the evaluation is off or no sample was measured."""
    if faithfulness is None:
        return None
    return {"aopc_morf": to_jsonable(faithfulness.aopc_morf), "aopc_random": to_jsonable(faithfulness.aopc_random),
            "aopc_gain": to_jsonable(faithfulness.aopc_gain), "n": int(faithfulness.n)}


def class_summary(result: ClassResult) -> dict[str, Any]:
    """One audited class's entry of summary.json."""
    clusters = sorted(result.clusters, key=cluster_order_key)
    return {
        "class": int(result.class_index),
        "name": str(result.class_name),
        "n_samples": int(result.n_samples),
        "eigenvalues": to_jsonable(np.asarray(result.eigenvalues, dtype=np.float64)),
        "n_clusters": int(result.n_clusters),
        "flagged": bool(result.flagged),
        "max_score": to_jsonable(max_score(result)),
        "conservation": conservation_stats(result.conservation),
        "embeddings": sorted(str(name) for name in result.embeddings),
        "notes": [str(note) for note in result.notes],
        "clusters": [cluster_summary(cluster) for cluster in clusters],
        "findings": [finding_summary(finding) for finding in result.findings],
        "faithfulness": faithfulness_summary(result.faithfulness.summary if result.faithfulness else None),
    }


def run_summary(run: RunInfo) -> dict[str, Any]:
    """The run metadata of summary.json (everything in RunInfo except the skipped lists, kept top-level)."""
    return {
        "config_path": str(run.config_path),
        "config": to_jsonable(run.config),
        "model": str(run.model),
        "data": str(run.data),
        "versions": to_jsonable(run.versions),
        "started": str(run.started),
        "duration_s": to_jsonable(run.duration_s),
        "device": str(run.device),
        "stages": to_jsonable(run.stages),
    }


def build_summary(classes: list[ClassResult], run: RunInfo) -> dict[str, Any]:
    """The whole summary.json document, JSON-safe (``json.dumps(..., allow_nan=False)`` succeeds)."""
    flagged_clusters = sum(cluster.flagged for result in classes for cluster in result.clusters)
    return {
        "schema_version": SCHEMA_VERSION,
        "classes": [class_summary(result) for result in classes],
        "skipped_classes": [
            {"class": int(skipped.class_index), "name": str(skipped.class_name), "reason": str(skipped.reason)}
            for skipped in run.skipped_classes
        ],
        "skipped_samples": [
            {"id": str(sample_id), "reason": str(reason)} for sample_id, reason in run.skipped_samples
        ],
        "flagged": bool(flagged_clusters),
        "n_flagged_clusters": int(flagged_clusters),
        "label_mapping": label_mapping_summary(run),
        "run": run_summary(run),
    }


def label_mapping_summary(run: RunInfo) -> dict[str, Any]:
    """``{"source": how labels were mapped, "outputs": [{"output", "name"}]}``: the class behind each output."""
    return {
        "source": str(run.label_source),
        "outputs": [{"output": index, "name": str(name)} for index, name in enumerate(run.label_names)],
    }


def cross_class_clusters(result: CrossClassResult) -> list[dict[str, Any]]:
    """Per cross-class cluster, by id: its size and how many of its samples each class gave, largest first."""
    labels = np.asarray(result.cluster_labels)
    classes = np.asarray(result.classes)
    clusters = []
    for cluster in np.unique(labels):
        member_classes, counts = np.unique(classes[labels == cluster], return_counts=True)
        order = np.argsort(-counts, kind="stable")
        clusters.append({
            "id": int(cluster),
            "size": int(counts.sum()),
            "classes": [{"class": int(member_classes[i]), "name": str(result.class_names.get(int(member_classes[i]), "")),
                         "count": int(counts[i])} for i in order],
        })
    return clusters


def cross_class_summary(result: CrossClassResult) -> dict[str, Any]:
    """The ``cross_class`` entry of summary.json: the analysis of every audited class's heatmaps together."""
    return {
        "n_samples": int(result.n_samples),
        "classes": sorted(int(index) for index in result.class_names),
        "eigenvalues": to_jsonable(np.asarray(result.eigenvalues, dtype=np.float64)),
        "n_clusters": int(result.n_clusters),
        "notes": [str(note) for note in result.notes],
        "clusters": cross_class_clusters(result),
    }
