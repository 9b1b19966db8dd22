"""Stage 4a: measure Clever Hans evidence for every cluster and flag the clusters that pass.

The eigengap finds several clusters in every class, clean or not, so a cluster is flagged only on evidence
that a reviewer can check in the report. For each cluster we locate its *distinctive region*: the smallest
set of pixels that holds half of the positive difference between the cluster's mean relevance map and the
rest of the class's (capped at ``flagging.region_fraction`` of the image). Three measurements on that region:

consistency
    Do the members show the *same pattern* there? ``1 - spread_members / spread_rest``, where a spread is the
    mean squared distance of a group's region pixels to the members' mean region pattern. A watermark, tag or
    frame is drawn the same way in every image (consistency near 1); the strokes of a handwriting style, or
    any natural part of an object, vary from image to image (measured on clean digit models: at most 0.75).
necessity
    Does the model *need* it for the members? The region is filled with the dataset's mean image (or blurred),
    and the drop of the audited logit, in units of the class's median logit, is averaged over the members
    minus the same average over the rest of the class.
sufficiency
    Does it *carry* the class by itself? The members' region is pasted into images of other classes; the
    mean rise of the audited logit (same units) minus the rise when the region is pasted from the rest of the
    class instead (a control for "any piece of this class adds some evidence"). The share of images that
    then turn into the audited class is reported next to it.

A cluster is flagged when all three pass their documented thresholds (``CONSISTENCY``, ``NECESSITY``,
``SUFFICIENCY``). Its score is the weakest of the three ratios measured / threshold, so ``score >= 1``
exactly when the cluster is flagged, and the report shows which line of evidence is the weakest. Samples of
other clusters that carry a flagged cluster's pattern then join it (``join_pattern_carriers``).

The thresholds were set from measurements on planted-artifact digit models (``benchmarks/planted_artifacts.py``:
watermark, tag, stripe, frame; 15-35 % of one class; any corner; with and without BatchNorm): planted clusters
measured consistency 0.96-0.99, while no clean cluster, of planted or of clean models, exceeded 0.81.
Necessity and sufficiency separate less (clean clusters reach 0.75 and 0.5: the model needs its strokes,
and pasting strokes adds some evidence), so they guard against a shared pattern the model does not use.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from spray.config import FlaggingConfig, ImageConfig
from spray.data import to_model_input

CONSISTENCY = 0.9  # members' region pixels at most a tenth as spread as the rest of the class's
NECESSITY = 0.15  # masking costs members 0.15 median logits more than the rest of the class
SUFFICIENCY = 0.15  # pasting the members' region raises the class 0.15 median logits more than the control
REGION_MASS = 0.5  # share of the positive mean-map difference the region must hold


@dataclass
class ClusterEvidence:
    """The evidence of one cluster; ``region`` is (h, w) bool at preprocessing resolution or None."""

    id: int
    size: int
    score: float
    flagged: bool
    evidence: dict[str, Any]
    region: np.ndarray | None
    # (N,) mean squared distance of each sample's region pattern to the members' and to the rest's mean
    # pattern; what join_pattern_carriers decides from. None when the cluster was not scored.
    distance_to_members: np.ndarray | None = field(default=None, repr=False)
    distance_to_rest: np.ndarray | None = field(default=None, repr=False)


def distinctive_region(maps: np.ndarray, members: np.ndarray, max_fraction: float) -> np.ndarray:
    """Pixels where the members' mean map exceeds the rest's most: (h, w) bool.

    maps: (N, h, w) preprocessed relevance; members: (N,) bool. The region is the smallest set holding
    ``REGION_MASS`` of the positive difference, at most ``max_fraction`` of the pixels and at least one.
    """
    rest = ~members
    difference = maps[members].mean(0) - (maps[rest].mean(0) if rest.any() else 0.0)
    positive = np.clip(difference, 0, None).ravel()
    order = np.argsort(-positive, kind="stable")
    total = positive.sum()
    if total <= 0:
        count = 1
    else:
        count = int(np.searchsorted(np.cumsum(positive[order]) / total, REGION_MASS)) + 1
    count = max(1, min(count, int(max_fraction * positive.size)))
    region = np.zeros(positive.size, dtype=bool)
    region[order[:count]] = True
    return region.reshape(difference.shape)


def to_image_mask(region: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour upsampling of an (h, w) region to the image's (H, W)."""
    if region.shape == tuple(size):
        return region
    image = Image.fromarray(region.astype(np.uint8) * 255)
    return np.asarray(image.resize((size[1], size[0]), Image.NEAREST)) > 127


PixelBatches = Callable[[], Iterable[np.ndarray]]
"""Called once per pass over a class: yields its images in order as (n, H, W, C) float32 batches in [0, 1]."""


def array_batches(pixels: np.ndarray, batch_size: int = 256) -> PixelBatches:
    """PixelBatches over an (N, H, W, C) array already in memory (small classes, tests)."""
    return lambda: (pixels[start : start + batch_size] for start in range(0, len(pixels), batch_size))


class _Scorer:
    """Batched audited-class logits of pixel images (n, H, W, C) in [0, 1]."""

    def __init__(self, model: torch.nn.Module, class_index: int, image: ImageConfig, device: torch.device):
        self.model, self.class_index, self.image, self.device = model, class_index, image, device

    @torch.no_grad()
    def __call__(self, pixels: np.ndarray, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
        logits = []
        for start in range(0, len(pixels), batch_size):
            x = to_model_input(pixels[start : start + batch_size], self.image).to(self.device)
            logits.append(self.model(x).float().cpu())
        out = torch.cat(logits).numpy() if logits else np.zeros((0, 1), np.float32)
        return out[:, self.class_index], out.argmax(1) == self.class_index


@dataclass
class _Plan:
    """One scorable cluster while the class streams past: its region and what the passes accumulate."""

    cluster: int
    members: np.ndarray  # (N,) bool
    region: np.ndarray  # (h, w) bool, preprocessing resolution
    mask: np.ndarray  # (H, W) bool, image resolution
    donors: tuple[np.ndarray, np.ndarray]  # (M,) sample positions: members', the rest's (the control)
    member_pattern: np.ndarray  # the members' mean region pattern (summed in float64 during pass 1, then divided)
    rest_pattern: np.ndarray  # the rest of the class's, likewise
    pasted_logits: tuple[np.ndarray, np.ndarray]  # (M,) recipients' logits with the donors' region pasted
    pasted_is_class: tuple[np.ndarray, np.ndarray]  # (M,) ... and whether they then are the audited class
    to_members: np.ndarray  # (N,) mean squared distance of each sample's pattern to the members' mean
    to_rest: np.ndarray  # (N,) ... to the rest's mean
    masked_logits: np.ndarray  # (N,) audited logit with the region filled


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
    """Evidence, score and flag for every cluster of one class.

    batches: the class's images, streamed twice (see ``PixelBatches``), so memory holds a batch and a few
    (N,) arrays per cluster, never the class; maps: (N, h, w) preprocessed relevance; cluster_labels: (N,)
    int; recipients: (M, H, W, C) images of other classes (M may be 0: no transplant test, so nothing can be
    flagged). Masked regions are filled with the mean image of the class and the recipients
    (``fill: mean``) or with each image blurred (``fill: blur``).

    Raises ValueError when ``batches`` yields a different number of images than ``maps`` holds.
    """
    device = torch.device(device)
    model = model.to(device).eval()
    scorer = _Scorer(model, class_index, image, device)
    rng = np.random.default_rng(config.seed)
    n = len(maps)
    size = tuple(image.size)
    results: dict[int, ClusterEvidence] = {}
    plans: list[_Plan] = []
    for cluster in np.unique(cluster_labels):
        members = cluster_labels == cluster
        n_members = int(members.sum())
        reason = _not_scored_reason(maps[members], n, config.min_cluster_size)
        if reason is not None:
            results[int(cluster)] = ClusterEvidence(int(cluster), n_members, 0.0, False, {"not_scored": reason}, None)
            continue
        region = distinctive_region(maps, members, config.region_fraction)
        mask = to_image_mask(region, size)
        donors = (
            rng.choice(np.flatnonzero(members), size=len(recipients)),
            rng.choice(np.flatnonzero(~members), size=len(recipients)),
        ) if len(recipients) else (np.zeros(0, int), np.zeros(0, int))
        pattern_size = int(mask.sum()) * image.channels
        m = len(recipients)
        plans.append(_Plan(int(cluster), members, region, mask, donors, np.zeros(pattern_size), np.zeros(pattern_size),
                           (np.zeros(m, np.float32), np.zeros(m, np.float32)), (np.zeros(m, bool), np.zeros(m, bool)),
                           np.zeros(n, np.float32), np.zeros(n, np.float32), np.zeros(n, np.float32)))

    # Pass 1: logits, the mean image, the members' and the rest's mean region patterns, and the transplants:
    # each recipient gets its donor's region when the donor's batch passes, so no donor is held.
    logits = np.zeros(n, np.float32)
    image_sum = np.zeros((*size, image.channels))
    seen = 0
    for pixels in batches():
        positions = np.arange(seen, seen + len(pixels))
        seen += len(pixels)
        if seen > n:
            break  # reported below
        logits[positions] = scorer(pixels)[0]
        image_sum += pixels.sum(0, dtype=np.float64)
        for plan in plans:
            patterns = pixels[:, plan.mask, :].reshape(len(pixels), -1)
            inside = plan.members[positions]
            plan.member_pattern += patterns[inside].sum(0, dtype=np.float64)
            plan.rest_pattern += patterns[~inside].sum(0, dtype=np.float64)
            for donors, pasted_logits, pasted_is_class in zip(plan.donors, plan.pasted_logits, plan.pasted_is_class):
                slots = np.flatnonzero((donors >= positions[0]) & (donors <= positions[-1]))
                if len(slots):
                    pasted = recipients[slots]
                    pasted[:, plan.mask, :] = pixels[donors[slots] - positions[0]][:, plan.mask, :]
                    pasted_logits[slots], pasted_is_class[slots] = scorer(pasted)
    if seen != n:
        raise ValueError(f"{'more' if seen > n else 'fewer'} images ({seen}{'+' if seen > n else ''}) than "
                         f"relevance maps ({n}): they must be the same samples, in the same order")
    scale = float(np.median(np.abs(logits))) or 1.0
    recipient_logits, recipient_is_class = scorer(recipients) if len(recipients) else (np.zeros(0), np.zeros(0, bool))
    background = ((image_sum + recipients.sum(0, dtype=np.float64)) / (n + len(recipients))).astype(np.float32)
    for plan in plans:
        plan.member_pattern = (plan.member_pattern / plan.members.sum()).astype(np.float32)
        plan.rest_pattern = (plan.rest_pattern / (~plan.members).sum()).astype(np.float32)

    # Pass 2: each sample's distances to those mean patterns, and its logit with each cluster's region filled.
    seen = 0
    for pixels in batches():
        positions = slice(seen, seen + len(pixels))
        seen += len(pixels)
        replacement = np.broadcast_to(background, pixels.shape) if config.fill == "mean" else _blurred(pixels)
        for plan in plans:
            patterns = pixels[:, plan.mask, :].reshape(len(pixels), -1)
            plan.to_members[positions] = ((patterns - plan.member_pattern) ** 2).mean(1)
            plan.to_rest[positions] = ((patterns - plan.rest_pattern) ** 2).mean(1)
            masked = pixels.copy()
            masked[:, plan.mask, :] = replacement[:, plan.mask, :]
            plan.masked_logits[positions] = scorer(masked)[0]

    absolute = np.abs(maps).reshape(n, -1)
    for plan in plans:
        members = plan.members
        evidence: dict[str, Any] = {"region_area": float(plan.mask.mean())}
        in_region = absolute[:, plan.region.ravel()].sum(1) / np.maximum(absolute.sum(1), 1e-12)
        evidence["relevance_in_region"] = float(in_region[members].mean())
        evidence["relevance_in_region_rest"] = float(in_region[~members].mean())

        spread_rest = float(plan.to_members[~members].mean())
        evidence["consistency"] = float(1.0 - plan.to_members[members].mean() / spread_rest) if spread_rest > 0 else 0.0

        drop = (logits - plan.masked_logits) / scale
        evidence["masking_drop"] = float(drop[members].mean())
        evidence["masking_drop_rest"] = float(drop[~members].mean())
        evidence["necessity"] = evidence["masking_drop"] - evidence["masking_drop_rest"]

        if len(recipients):
            gains, flips = [], []
            for pasted_logits, pasted_is_class in zip(plan.pasted_logits, plan.pasted_is_class):
                gains.append(float(((pasted_logits - recipient_logits) / scale).mean()))
                flips.append(float((pasted_is_class & ~recipient_is_class).mean()))
            evidence["transplant_gain"], evidence["transplant_gain_control"] = gains
            evidence["transplant_flip_rate"], evidence["transplant_flip_rate_control"] = flips
            evidence["sufficiency"] = gains[0] - gains[1]
        else:
            evidence["sufficiency"] = 0.0
            evidence["not_scored"] = "no images of other classes to transplant the region into"

        ratios = {
            "consistency": evidence["consistency"] / CONSISTENCY,
            "necessity": evidence["necessity"] / NECESSITY,
            "sufficiency": evidence["sufficiency"] / SUFFICIENCY,
        }
        weakest, score = weakest_evidence(ratios)
        if not np.isfinite(ratios[weakest]):
            evidence["not_scored"] = f"the {weakest} evidence is not a finite number (NaN or inf)"
        evidence["weakest_evidence"] = weakest
        evidence["thresholds"] = {"consistency": CONSISTENCY, "necessity": NECESSITY, "sufficiency": SUFFICIENCY}
        results[plan.cluster] = ClusterEvidence(plan.cluster, int(members.sum()), score, score >= config.threshold,
                                                evidence, plan.region, plan.to_members, plan.to_rest)
    return [results[cluster] for cluster in sorted(results)]


def weakest_evidence(ratios: dict[str, float]) -> tuple[str, float]:
    """The weakest line of evidence and the score it gives (its ratio measured / threshold).

    A ratio that is not finite (NaN from an empty or degenerate measurement, inf from a division by zero)
    is never passing evidence: it is the weakest line, and the score is 0, so the cluster is not flagged.
    """
    broken = [name for name, ratio in ratios.items() if not np.isfinite(ratio)]
    if broken:
        return broken[0], 0.0
    weakest = min(ratios, key=ratios.get)
    return weakest, float(ratios[weakest])


def _not_scored_reason(member_maps: np.ndarray, n_class: int, min_cluster_size: int) -> str | None:
    """Why a cluster with maps ``member_maps`` (k, h, w) is not scored, or None. Copies of one image (identical
    heatmaps) are one sample of evidence: a cluster of repeated images would otherwise show a perfectly
    consistent "pattern" that is only the image itself."""
    n_members = len(member_maps)
    if n_members == n_class:
        return "the whole class: nothing to compare with"
    if n_members < min_cluster_size:
        return "smaller than flagging.min_cluster_size"
    n_distinct = len(np.unique(member_maps.reshape(n_members, -1), axis=0))
    if n_distinct < min_cluster_size:
        return (f"only {n_distinct} distinct heatmaps among its {n_members} members (repeated images): fewer "
                "than flagging.min_cluster_size")
    return None


def join_pattern_carriers(cluster_labels: np.ndarray, scored: list[ClusterEvidence]) -> np.ndarray:
    """Move samples that carry a flagged cluster's pattern into that cluster; returns new (N,) labels.

    Spectral clustering groups samples by *where the model looks*; a few samples that carry the artifact can
    still land in other clusters when the model also reads their object well. A sample of an unflagged
    cluster joins a flagged one when, inside the flagged region, its pixels are closer to the flagged
    members' mean pattern than to the rest of the class's mean pattern, and no farther from it than 95 % of
    the members are (distances measured by ``score_clusters``). The number that joined is recorded in the
    cluster's evidence (``joined_by_pattern``).
    """
    labels = cluster_labels.copy()
    flagged = [s for s in sorted(scored, key=lambda s: -s.score) if s.flagged and s.region is not None]
    taken = np.isin(cluster_labels, [s.id for s in flagged])
    for cluster in flagged:
        members = cluster_labels == cluster.id
        to_members, to_rest = cluster.distance_to_members, cluster.distance_to_rest
        carriers = ~taken & (to_members < to_rest) & (to_members <= np.quantile(to_members[members], 0.95))
        labels[carriers] = cluster.id
        taken |= carriers
        cluster.evidence["joined_by_pattern"] = int(carriers.sum())
        cluster.evidence["spectral_size"] = cluster.size
        cluster.size += int(carriers.sum())
    for cluster in scored:
        if not cluster.flagged:
            cluster.size = int((labels == cluster.id).sum())
    return labels


def _blurred(pixels: np.ndarray) -> np.ndarray:
    """(n, H, W, C) pixels, each image blurred with a Gaussian of 1/16 of the image side: what ``fill: blur`` masks with."""
    from scipy.ndimage import gaussian_filter

    sigma = max(pixels.shape[1], pixels.shape[2]) / 16
    return gaussian_filter(pixels, sigma=(0, sigma, sigma, 0))
