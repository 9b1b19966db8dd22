"""Score every cluster of one class (plan, pass one, pass two, weigh) and let pattern carriers join the
flagged ones."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch

from spray.config import FlaggingConfig, ImageConfig
from spray.flag.evidence import Evidence, Measured, Transplant, not_scored, weigh
from spray.flag.passes import LogitScorer, Pasted, PixelBatches, SecondPass, first_pass, second_pass
from spray.flag.plan import ClusterPlan, plan_clusters


@dataclass(frozen=True, eq=False)
class ClusterEvidence:
    """The evidence of one cluster; ``region`` is (h, w) bool at preprocessing resolution or None."""

    id: int
    size: int
    evidence: Evidence
    region: np.ndarray | None
    # (N,) mean squared distance of each sample's region pattern to the members' and to the rest's mean
    # pattern; what join_pattern_carriers decides from. None when the cluster was not scored.
    distance_to_members: np.ndarray | None = field(default=None, repr=False)
    distance_to_rest: np.ndarray | None = field(default=None, repr=False)

    @property
    def score(self) -> float:
        return self.evidence.score

    @property
    def flagged(self) -> bool:
        return self.evidence.flagged


def score_clusters(
    model: torch.nn.Module,
    class_index: int,
    batches: PixelBatches,
    maps: np.ndarray,
    cluster_labels: np.ndarray,
    recipients: np.ndarray,
    image: ImageConfig,
    config: FlaggingConfig,
    device: torch.device | str = "cpu",
) -> list[ClusterEvidence]:
    """Evidence, score and flag for every cluster of one class, by cluster id.

    batches: the class's images, streamed twice (see ``PixelBatches``), so memory holds a batch and a few
    (N,) arrays per cluster, never the class; maps: (N, h, w) preprocessed relevance; cluster_labels: (N,)
    int; recipients: (M, H, W, C) images of other classes (M may be 0: no transplant test, so nothing can be
    flagged). Masked regions are filled with the mean image of the class and the recipients
    (``fill: mean``) or with each image blurred (``fill: blur``).

    Raises ValueError when ``batches`` yields a different number of images than ``maps`` holds.
    """
    device = torch.device(device)
    scorer = LogitScorer(model.to(device).eval(), class_index, image, device)
    n = len(maps)
    size = (int(image.size[0]), int(image.size[1]))
    plans, unscored = plan_clusters(maps, cluster_labels, len(recipients), size, config)
    first = first_pass(plans, batches, scorer, recipients, n, (*size, image.channels))
    scale = float(np.median(np.abs(first.logits))) or 1.0
    baseline = scorer(recipients) if len(recipients) else None
    second = second_pass(plans, batches, scorer, first, n, config.fill)
    absolute = np.abs(maps).reshape(n, -1)
    results = {skip.cluster: ClusterEvidence(skip.cluster, skip.size, not_scored(skip.reason), None)
               for skip in unscored}
    for plan, pasted, tally in zip(plans, first.pasted, second):
        measured = measure(plan, first.logits, pasted, tally, absolute, scale, baseline)
        results[plan.cluster] = ClusterEvidence(plan.cluster, int(plan.members.sum()),
                                                weigh(measured, config.threshold), plan.region,
                                                tally.to_members, tally.to_rest)
    return [results[cluster] for cluster in sorted(results)]


def measure(plan: ClusterPlan, logits: np.ndarray, pasted: tuple[Pasted, Pasted], second: SecondPass,
            absolute: np.ndarray, scale: float, baseline: tuple[np.ndarray, np.ndarray] | None) -> Measured:
    """The numbers of one scored cluster from the two passes.

    logits: (N,) the class's audited logits (pass one); pasted: the recipients with the members' region and
    with the rest's (pass one); second: this plan's pass two; absolute: (N, h*w) |preprocessed relevance|;
    scale: the class's median |logit|, the unit of logit changes; baseline: the recipients' (M,) logits and
    whether they are the class as they are, None without recipients.
    """
    members = plan.members
    in_region = absolute[:, plan.region.ravel()].sum(1) / np.maximum(absolute.sum(1), 1e-12)
    spread_rest = float(second.to_members[~members].mean())
    consistency = float(1.0 - second.to_members[members].mean() / spread_rest) if spread_rest > 0 else 0.0
    drop = (logits - second.masked_logits) / scale
    transplant = None
    if baseline is not None:
        recipient_logits, is_class = baseline
        gains = [float(((group.logits - recipient_logits) / scale).mean()) for group in pasted]
        flips = [float((group.is_class & ~is_class).mean()) for group in pasted]
        transplant = Transplant(gains[0], gains[1], flips[0], flips[1])
    return Measured(
        region_area=float(plan.mask.mean()), relevance_in_region=float(in_region[members].mean()),
        relevance_in_region_rest=float(in_region[~members].mean()), consistency=consistency,
        masking_drop=float(drop[members].mean()), masking_drop_rest=float(drop[~members].mean()),
        transplant=transplant,
    )


def join_pattern_carriers(cluster_labels: np.ndarray,
                          scored: list[ClusterEvidence]) -> tuple[np.ndarray, list[ClusterEvidence]]:
    """Move samples that carry a flagged cluster's pattern into that cluster.

    Returns new (N,) labels and the clusters of ``scored`` (same order) with their new sizes; a flagged
    cluster's evidence records how many joined (``joined_by_pattern``) and its size before
    (``spectral_size``). The inputs are not changed.

    Spectral clustering groups samples by *where the model looks*; a few samples that carry the artifact can
    still land in other clusters when the model also reads their object well. A sample of an unflagged
    cluster joins a flagged one when, inside the flagged region, its pixels are closer to the flagged
    members' mean pattern than to the rest of the class's mean pattern, and no farther from it than 95 % of
    the members are (distances measured by ``score_clusters``). Stronger flags take their carriers first.
    """
    labels = cluster_labels.copy()
    flagged = [s for s in sorted(scored, key=lambda s: -s.score) if s.flagged and s.region is not None]
    taken = np.isin(cluster_labels, [s.id for s in flagged])
    joined: dict[int, ClusterEvidence] = {}
    for cluster in flagged:
        to_members, to_rest = cluster.distance_to_members, cluster.distance_to_rest
        assert to_members is not None and to_rest is not None  # a scored cluster has both
        members = cluster_labels == cluster.id
        carriers = ~taken & (to_members < to_rest) & (to_members <= np.quantile(to_members[members], 0.95))
        labels[carriers] = cluster.id
        taken |= carriers
        count = int(carriers.sum())
        joined[cluster.id] = replace(cluster, size=cluster.size + count,
                                     evidence=cluster.evidence.joined(count, cluster.size))
    return labels, [joined.get(s.id) or (s if s.flagged else replace(s, size=int((labels == s.id).sum())))
                    for s in scored]
