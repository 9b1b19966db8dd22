"""Cached entries of one class -> the ``spray.results`` dataclasses the report is drawn from: prototypes,
the members' gallery of flagged clusters, every cluster's typed evidence, its NEON explanation (what sets it
apart from its nearest cluster) and the faithfulness of the heatmaps per class and cluster."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from spray.analysis.features import lens_neon
from spray.cache import Entry
from spray.config import ImageConfig, SprayConfig
from spray.data import Dataset, Sample, read_pixels
from spray.faithfulness import read_evaluated
from spray.flag import ClusterEvidence, Finding, read_flagged
from spray.flag.findings import same_pattern
from spray.flag.plan import resize_mask
from spray.neon import ClusterMembership, cluster_memberships, positive_share_in_region
from spray.results import (
    ClassFaithfulness,
    ClassResult,
    ClusterNeon,
    ClusterResult,
    FaithfulnessSummary,
    FindingResult,
    Thumbnail,
)

# Members of a flagged cluster shown in the report's gallery, and their side in pixels: a reviewer checks
# that every member carries the pattern; the ids of all members are in summary.json and samples.csv.
MAX_MEMBERS_SHOWN = 2000
MEMBER_SIDE = 48

RelevanceLookup = Callable[[str], np.ndarray]
"""sample id -> (H, W) channel-summed full-resolution input relevance."""


def assemble_class(config: SprayConfig, dataset: Dataset, index: int, samples: list[Sample],
                   tasks: dict[str, Any]) -> ClassResult:
    """Read one class's entries back (``samples``: the class's samples, in shard order; ``tasks``: its
    entries by stage, the attribution shards under "shards") and build the ClassResult of the report."""
    pre_arrays, pre_meta = tasks["preprocess"].read()
    analysis_arrays, analysis_meta = tasks["analyse"].read()
    embeddings, _ = tasks["embed"].read()
    flagged = read_flagged(tasks["flag"])
    ids, maps, logits = pre_meta["ids"], pre_arrays["maps"], pre_arrays["logits"]
    samples_by_id = {s.id: s for s in samples}
    relevance_by_id = relevance_lookup(tasks["shards"], samples, config.attribution.shard_size)
    clusters = []
    notes = list(analysis_meta.get("notes", []))
    # the deep-feature lens explains membership at its layer, through the network (spray.analysis.features)
    neon, membership_maps = (lens_neon(tasks["lens"], flagged.labels) if "lens" in tasks
                             else _neon(maps, flagged.labels, config.flagging.min_cluster_size))
    position = {sample_id: i for i, sample_id in enumerate(ids)}
    for cluster in flagged.clusters:
        # flagged.labels: the spectral clusters, with pattern carriers moved into flagged ones
        member_index = np.flatnonzero(flagged.labels == cluster.id)
        if not len(member_index):
            notes.append(_absorbed_note(cluster.id, analysis_arrays["labels"], flagged.labels))
            continue
        result = _cluster_result(cluster, member_index, ids, maps, samples_by_id, relevance_by_id,
                                 config.data.image, config.flagging.prototypes)
        result.neon = _cluster_neon(neon.get(cluster.id), cluster.region,
                                    config.analysis.layer if "lens" in tasks else None)
        if result.neon is not None:
            result.prototype_neon_maps = [membership_maps[position[i]] for i in result.prototypes]
        clusters.append(result)
    clusters.sort(key=lambda c: (not c.flagged, -c.score))
    faithfulness = _class_faithfulness(tasks["evaluate"], ids) if "evaluate" in tasks else None
    if faithfulness is not None:
        for result in clusters:
            result.faithfulness = _mean_faithfulness(faithfulness, np.isin(ids, result.members))
    return ClassResult(
        class_index=index, class_name=dataset.class_names[index], ids=ids,
        labels=np.full(len(ids), index), predictions=logits.argmax(1) if len(logits) else np.zeros(0, int),
        logits=logits[:, index] if len(logits) else np.zeros(0), conservation=pre_arrays["conservation"],
        eigenvalues=analysis_arrays["eigenvalues"], n_clusters=int(analysis_meta["n_clusters"]),
        cluster_labels=flagged.labels, embeddings=dict(embeddings), clusters=clusters,
        class_mean_map=maps.mean(0), notes=notes,
        skipped_samples=[(str(i), str(r)) for i, r in pre_meta["skipped"]], faithfulness=faithfulness,
        findings=[finding_result(f, ids, flagged.labels, config.data.image) for f in flagged.findings])


def finding_result(finding: Finding, ids: list[str], labels: np.ndarray, image: ImageConfig) -> FindingResult:
    """A stored finding with its members' ids, where its pattern lies (coverage: the prototype's pixels, a
    frame as a frame, placed in each member's window) and how far the windows spread."""
    height, width = int(image.size[0]), int(image.size[1])
    coverage = np.zeros((height, width), np.float32)
    prototype = np.asarray(finding.prototype)
    pattern = np.isfinite(prototype).all(-1) if prototype.size else np.ones((1, 1), bool)
    if not pattern.any():
        pattern = np.ones_like(pattern)
    for top, left, h, w in finding.windows:
        window = coverage[top : top + h, left : left + w]
        window += resize_mask(pattern, (h, w))[: window.shape[0], : window.shape[1]]
    windows = finding.windows.astype(np.float64)
    spread = 0.0
    if len(windows):
        centres = np.stack([windows[:, 0] + windows[:, 2] / 2, windows[:, 1] + windows[:, 3] / 2], 1)
        spread = float(np.linalg.norm(centres - centres.mean(0), axis=1).mean() / np.hypot(height, width))
    return FindingResult(
        cluster=finding.cluster, members=[ids[i] for i in np.flatnonzero(labels == finding.cluster)],
        clusters=dict(finding.clusters), groups=list(finding.groups), anywhere=finding.anywhere,
        evidence=finding.evidence, prototype=np.asarray(finding.prototype, np.float32),
        coverage=coverage / max(len(finding.windows), 1), position_spread=spread)


def _neon(maps: np.ndarray, labels: np.ndarray,
          min_competitor_size: int) -> tuple[dict[int, ClusterMembership], np.ndarray]:
    """NEON of the final clusters (after joining) over the preprocessed maps: per cluster id, and per sample
    ``(N, h, w)`` the part of its own membership map from what it has (``spray.neon``: what a prototype's tile
    shows); clusters too small to be scored are no competitors. No clusters (an empty class): nothing."""
    if not len(maps):
        return {}, np.zeros_like(maps)
    memberships, _, present = cluster_memberships(maps, labels, min_competitor_size=min_competitor_size)
    return {m.cluster: m for m in memberships}, present.astype(np.float32)


def _cluster_neon(membership: ClusterMembership | None, region: np.ndarray | None,
                  layer: str | None) -> ClusterNeon | None:
    if membership is None or membership.competitor < 0:
        return None
    present = membership.present_map
    return ClusterNeon(competitor=membership.competitor, mean_logit=membership.mean_logit,
                       mean_map=membership.mean_map.astype(np.float32),
                       positive_share_in_region=positive_share_in_region(membership.mean_map, region), layer=layer,
                       present_map=None if present is None else present.astype(np.float32),
                       present_share=membership.present_share,
                       present_share_in_region=None if present is None else positive_share_in_region(present, region))


def _class_faithfulness(entry: Entry, ids: list[str]) -> ClassFaithfulness | None:
    """The evaluate entry aligned with the class's ids (NaN where a sample was not sampled); None when no
    sample was measured."""
    evaluated = read_evaluated(entry)
    if not evaluated.ids:
        return None
    row_of = {sample_id: row for row, sample_id in enumerate(evaluated.ids)}
    rows = np.array([row_of.get(sample_id, -1) for sample_id in ids], dtype=np.int64)

    def aligned(values: np.ndarray) -> np.ndarray:
        return np.where(rows >= 0, values[np.maximum(rows, 0)], np.nan) if len(values) else np.full(len(ids), np.nan)

    summary = FaithfulnessSummary(float(evaluated.aopc_morf.mean()), float(evaluated.aopc_random.mean()),
                                  float(evaluated.aopc_gain.mean()), len(evaluated.ids))
    return ClassFaithfulness(summary=summary, morf_curve=evaluated.morf.mean(0), random_curve=evaluated.random.mean(0),
                             aopc_morf=aligned(evaluated.aopc_morf), aopc_random=aligned(evaluated.aopc_random),
                             aopc_gain=aligned(evaluated.aopc_gain), patch_size=evaluated.patch_size,
                             perturbation=evaluated.perturbation)


def _mean_faithfulness(faithfulness: ClassFaithfulness, members: np.ndarray) -> FaithfulnessSummary | None:
    """The mean over ``members (N,)`` bool that were sampled; None when none was."""
    measured = members & np.isfinite(faithfulness.aopc_gain)
    if not measured.any():
        return None
    return FaithfulnessSummary(float(faithfulness.aopc_morf[measured].mean()),
                               float(faithfulness.aopc_random[measured].mean()),
                               float(faithfulness.aopc_gain[measured].mean()), int(measured.sum()))


def _absorbed_note(cluster: int, spectral: np.ndarray, labels: np.ndarray) -> str:
    """Why a spectral cluster is missing from the report: every member carried a flagged cluster's pattern."""
    former = spectral == cluster
    into = ", ".join(str(c) for c in np.unique(labels[former]))
    return (f"spectral cluster {cluster} ({int(former.sum())} samples) is not listed: every member carries the "
            f"pattern of flagged cluster {into} and was joined to it")


def _cluster_result(cluster: ClusterEvidence, member_index: np.ndarray, ids: list[str], maps: np.ndarray,
                    samples_by_id: dict[str, Sample], relevance_by_id: RelevanceLookup, image: ImageConfig,
                    prototypes: int) -> ClusterResult:
    """One cluster for the report: its ``prototypes`` most typical members (closest to the members' mean
    map), and for a flagged cluster the gallery of its members."""
    mean_map = maps[member_index].mean(0)
    distance = ((maps[member_index] - mean_map) ** 2).reshape(len(member_index), -1).sum(1)
    typical = [ids[i] for i in member_index[np.argsort(distance)][:prototypes]]
    members = [ids[i] for i in member_index]
    shown = (member_thumbnails(members[:MAX_MEMBERS_SHOWN], samples_by_id, relevance_by_id, image)
             if cluster.flagged else [])
    return ClusterResult(
        id=cluster.id, members=members, evidence=cluster.evidence, mean_map=mean_map, region=cluster.region,
        prototypes=typical, prototype_images=[display(read_pixels(samples_by_id[i].path, image)) for i in typical],
        prototype_heatmaps=[relevance_by_id(i) for i in typical], members_shown=shown)


def member_thumbnails(ids: list[str], samples_by_id: dict[str, Sample], relevance_by_id: RelevanceLookup,
                      image: ImageConfig) -> list[Thumbnail]:
    """Small image + relevance of each sample id, for the gallery (at most MEMBER_SIDE pixels a side)."""
    from spray.report.images import resize_float, shrink

    thumbnails = []
    for sample_id in ids:
        pixels = shrink(display(read_pixels(samples_by_id[sample_id].path, image)), MEMBER_SIDE)
        heatmap = resize_float(np.asarray(relevance_by_id(sample_id), dtype=np.float64), *pixels.shape[:2])
        thumbnails.append(Thumbnail(sample_id, pixels, heatmap.astype(np.float32)))
    return thumbnails


def relevance_lookup(shards: list[Entry], samples: list[Sample], shard_size: int) -> RelevanceLookup:
    """sample id -> (H, W) channel-summed full-resolution relevance, reading only that sample's chunk.

    shards: the class's attribution entries, ``shard_size`` samples each, in the order of ``samples``."""
    position_of = {s.id: i for i, s in enumerate(samples)}
    opened: dict[int, tuple[dict[int, int], Any]] = {}

    def lookup(sample_id: str) -> np.ndarray:
        number, offset = divmod(position_of[sample_id], shard_size)
        if number not in opened:
            arrays, _ = shards[number].read()
            opened[number] = ({int(i): row for row, i in enumerate(arrays["index"])},
                              shards[number].open_array("relevance"))
        rows, relevance = opened[number]
        row = rows[offset]
        return np.asarray(relevance[row : row + 1])[0].sum(0)

    return lookup


def display(pixels: np.ndarray) -> np.ndarray:
    """(H, W, C) in [0, 1] -> (H, W, 3) uint8 for the report."""
    rgb = np.repeat(pixels, 3, axis=2) if pixels.shape[2] == 1 else pixels
    return (np.clip(rgb, 0, 1) * 255).round().astype(np.uint8)


def note_shared_patterns(results: list[ClassResult]) -> None:
    """Note in each class whose finding shows the same pattern as another class's finding (prototypes
    matched as ``spray.flag.findings.same_pattern`` merges a class's groups): one pattern that drives
    several classes is one shortcut of the model, not several."""
    for result in results:
        for finding in result.findings:
            others = [f"class {other.class_name} (cluster {theirs.cluster})" for other in results
                      if other is not result for theirs in other.findings
                      if same_pattern(finding.prototype, theirs.prototype)]
            if others:
                result.notes.append(f"the pattern of flagged cluster {finding.cluster} is also a finding in "
                                    f"{', '.join(others)}: one pattern drives several classes")
