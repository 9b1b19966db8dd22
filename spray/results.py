"""What an audit produces, as plain data: the report and summary are drawn from these and nothing else."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from spray.flag.evidence import Evidence, Judged


@dataclass
class Thumbnail:
    """One member of a flagged cluster, small, for the report's gallery of all members."""

    id: str  # sample id
    image: np.ndarray  # (h, w, 3) uint8, as the model saw it, shrunk to at most MEMBER_SIDE pixels
    heatmap: np.ndarray  # (h, w) float32, channel-summed input relevance resized to the image


@dataclass(frozen=True)
class ClusterNeon:
    """What sets a cluster apart, by NEON over the preprocessed heatmap grid (``spray.neon``).

    The centroids are the clusters' mean preprocessed maps; a member's membership logit is the soft minimum
    over the other clusters of ``||x - mu_k||^2 - ||x - mu_c||^2`` (squared-distance units of the maps), and
    its relevance splits that logit over the map's cells (summing to it).
    """

    competitor: int  # the cluster its members are most often nearest to after their own; -1 when alone
    mean_logit: float  # the members' mean membership logit
    mean_map: np.ndarray  # (h, w) the members' mean membership relevance
    positive_share_in_region: float | None  # share of mean_map's positive relevance inside the region; None: no region
    layer: str | None = None  # None: over the heatmap grid; the deep-feature lens's layer (spray.analysis.features)
    # the part of mean_map from what the members have (spray.neon); None where not split (the lens)
    present_map: np.ndarray | None = None
    present_share: float | None = None  # share of mean_map's positive relevance from what the members have
    present_share_in_region: float | None = None  # share of present_map's positive relevance inside the region


@dataclass(frozen=True)
class FaithfulnessSummary:
    """Region perturbation (``spray.evaluate``) of ``n`` sampled samples: mean areas over the perturbation
    curves, in logits. ``aopc_gain`` = ``aopc_morf - aopc_random``; a gain not above 0 means the heatmaps
    point at pixels the model does not need more than random patches do."""

    aopc_morf: float
    aopc_random: float
    aopc_gain: float
    n: int

    @property
    def trusted(self) -> bool:
        """Whether destroying the most relevant patches first lowers the logit more than a random order."""
        return self.aopc_gain > 0


@dataclass(frozen=True)
class ClassFaithfulness:
    """The faithfulness of one class's heatmaps, from its evaluate entry.

    ``morf_curve``, ``random_curve`` ``(L + 1,)``: the sampled samples' mean logit after ``0..L`` destroyed
    patches; ``aopc_morf``, ``aopc_random``, ``aopc_gain`` ``(N,)`` aligned with the class's ids, NaN where a
    sample was not sampled.
    """

    summary: FaithfulnessSummary
    morf_curve: np.ndarray
    random_curve: np.ndarray
    aopc_morf: np.ndarray
    aopc_random: np.ndarray
    aopc_gain: np.ndarray
    patch_size: int
    perturbation: str


@dataclass
class FindingResult(Judged):
    """One shortcut found in a class: the samples that carry one pattern, wherever it sits
    (``spray.flag.findings``), listed under one flagged cluster."""

    cluster: int  # the flagged cluster its members are listed under
    members: list[str]  # sample ids
    clusters: dict[int, int]  # spectral cluster -> members it gave
    groups: list[int]  # flagged groups merged into it: spectral cluster ids, -1, -2, ... for patterns found anywhere, -101, -102, ... for their carriers at one place
    anywhere: bool  # found at each member's own place (a pattern that moves), not at one place
    evidence: Evidence  # of the strongest group
    prototype: np.ndarray  # (h, w, C) float32 in [0, 1]: the members' mean pattern
    coverage: np.ndarray  # (H, W) float32 in [0, 1]: share of the members whose pattern (in its window) covers each pixel
    position_spread: float  # mean distance of the members' window centres from their mean / image diagonal

    @property
    def size(self) -> int:
        return len(self.members)


@dataclass
class ClusterResult(Judged):
    """One spectral cluster of one audited class.

    ``evidence`` holds the measured numbers behind the score and the verdict (their meaning is documented
    in ``spray.flag``); ``region`` is the cluster's distinctive relevance region at preprocessing
    resolution, or None when the cluster was not scored.
    """

    id: int
    members: list[str]
    evidence: Evidence
    mean_map: np.ndarray  # (h, w) mean preprocessed relevance of the members
    region: np.ndarray | None  # (h, w) bool
    prototypes: list[str]  # sample ids, most typical first
    prototype_images: list[np.ndarray]  # (H, W, 3) uint8 each, as the model saw them (resized)
    prototype_heatmaps: list[np.ndarray]  # (H, W) float32 each, channel-summed input relevance
    members_shown: list[Thumbnail] = field(default_factory=list)  # flagged clusters: every member (capped)
    neon: ClusterNeon | None = None  # what sets it apart from its nearest cluster; None with a single cluster
    # (h, w) each prototype's membership map (the part from what it has, where neon.present_map is set)
    prototype_neon_maps: list[np.ndarray] = field(default_factory=list)
    faithfulness: FaithfulnessSummary | None = None  # over its sampled members; None when none was sampled

    @property
    def size(self) -> int:
        return len(self.members)


@dataclass
class ClassResult:
    """The SpRAY analysis of one class: per-sample arrays are aligned with ``ids``."""

    class_index: int
    class_name: str
    ids: list[str]  # (N,) sample ids
    labels: np.ndarray  # (N,) int, the label column (equals class_index)
    predictions: np.ndarray  # (N,) int, argmax of the logits
    logits: np.ndarray  # (N,) float, the audited class's logit
    conservation: np.ndarray  # (N,) float, sum of input relevance / explained logit
    eigenvalues: np.ndarray  # (m,) ascending eigenvalues of the normalised Laplacian
    n_clusters: int  # chosen by the eigengap
    cluster_labels: np.ndarray  # (N,) int in [0, n_clusters)
    embeddings: dict[str, np.ndarray]  # name -> (N, 2)
    clusters: list[ClusterResult]  # flagged first, then by score
    class_mean_map: np.ndarray  # (h, w) mean preprocessed relevance of the whole class
    notes: list[str] = field(default_factory=list)  # what a reviewer should know (e.g. components)
    skipped_samples: list[tuple[str, str]] = field(default_factory=list)  # (id, reason): not explained
    faithfulness: ClassFaithfulness | None = None  # None when evaluation is off or no sample was measured
    findings: list[FindingResult] = field(default_factory=list)  # one per shortcut, strongest first

    @property
    def n_samples(self) -> int:
        return len(self.ids)

    @property
    def flagged(self) -> bool:
        return any(cluster.flagged for cluster in self.clusters)


@dataclass
class CrossClassResult:
    """One spectral analysis of the heatmaps of every audited class together (``audit.cross_class``).

    Per-sample arrays are aligned with ``ids``. A cluster that gathers samples of many classes around one
    relevance pattern points at a strategy the model shares across classes (a watermark in every class);
    it is described, not scored: the evidence of ``spray.flag`` is measured per class.
    """

    ids: list[str]  # (N,) sample ids, class by class
    classes: np.ndarray  # (N,) int, the audited class of each sample
    class_names: dict[int, str]  # class index -> name
    eigenvalues: np.ndarray  # (m,) ascending
    n_clusters: int
    cluster_labels: np.ndarray  # (N,) int in [0, n_clusters), by decreasing size
    embeddings: dict[str, np.ndarray]  # name -> (N, 2)
    notes: list[str] = field(default_factory=list)

    @property
    def n_samples(self) -> int:
        return len(self.ids)


@dataclass
class SkippedClass:
    class_index: int
    class_name: str
    reason: str


@dataclass
class RunInfo:
    """Metadata shown in the report and written to summary.json."""

    config_path: str
    config: dict[str, Any]  # the validated config, paths as strings
    model: str  # factory and weights
    data: str  # manifest or root, number of samples
    versions: dict[str, str]  # package -> version
    started: str  # ISO 8601
    duration_s: float
    device: str
    skipped_samples: list[tuple[str, str]]  # (sample id, reason) for missing or unreadable images
    skipped_classes: list[SkippedClass]
    stages: dict[str, dict[str, int]]  # stage -> {"computed": n, "cached": n}
    label_names: list[str] = field(default_factory=list)  # (K,) the class audited against each model output
    label_source: str = ""  # how labels were mapped onto outputs (a key of spray.checks.LABEL_SOURCES)
