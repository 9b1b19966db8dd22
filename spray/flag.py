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

from dataclasses import dataclass
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

    def masked(self, pixels: np.ndarray, mask: np.ndarray, replacement: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Audited logits with the ``mask`` (H, W) pixels replaced from ``replacement`` ((H, W, C) or like
        ``pixels``), one batch at a time so that no masked copy of the whole class is held."""
        logits = []
        for start in range(0, len(pixels), batch_size):
            batch = pixels[start : start + batch_size].copy()
            source = replacement if replacement.ndim == 3 else replacement[start : start + batch_size]
            batch[:, mask, :] = source[..., mask, :]
            logits.append(self(batch, batch_size)[0])
        return np.concatenate(logits) if logits else np.zeros(0, np.float32)


def score_clusters(
    model: torch.nn.Module,
    class_index: int,
    pixels: np.ndarray,
    maps: np.ndarray,
    cluster_labels: np.ndarray,
    recipients: np.ndarray,
    background: np.ndarray,
    image: ImageConfig,
    config: FlaggingConfig,
    device: torch.device | str = "cpu",
) -> list[ClusterEvidence]:
    """Evidence, score and flag for every cluster of one class.

    pixels: (N, H, W, C) the class's images in [0, 1]; maps: (N, h, w) preprocessed relevance;
    cluster_labels: (N,) int; recipients: (M, H, W, C) images of other classes (M may be 0: no transplant
    test, so nothing can be flagged); background: (H, W, C) the mean image used to fill masked regions.
    """
    device = torch.device(device)
    model = model.to(device).eval()
    scorer = _Scorer(model, class_index, image, device)
    rng = np.random.default_rng(config.seed)
    logits, _ = scorer(pixels)
    scale = float(np.median(np.abs(logits))) or 1.0
    recipient_logits, recipient_is_class = scorer(recipients) if len(recipients) else (np.zeros(0), np.zeros(0, bool))
    size = pixels.shape[1:3]
    replacement = background if config.fill == "mean" else _blurred(pixels)
    results = []
    for cluster in np.unique(cluster_labels):
        members = cluster_labels == cluster
        n_members = int(members.sum())
        if n_members < config.min_cluster_size or n_members == len(members):
            reason = "smaller than flagging.min_cluster_size" if n_members < config.min_cluster_size else (
                "the whole class: nothing to compare with"
            )
            results.append(ClusterEvidence(int(cluster), n_members, 0.0, False, {"not_scored": reason}, None))
            continue
        region = distinctive_region(maps, members, config.region_fraction)
        mask = to_image_mask(region, size)
        evidence: dict[str, Any] = {"region_area": float(mask.mean())}

        absolute = np.abs(maps).reshape(len(maps), -1)
        in_region = absolute[:, region.ravel()].sum(1) / np.maximum(absolute.sum(1), 1e-12)
        evidence["relevance_in_region"] = float(in_region[members].mean())
        evidence["relevance_in_region_rest"] = float(in_region[~members].mean())

        patterns = pixels[:, mask, :].reshape(len(pixels), -1)
        mean_pattern = patterns[members].mean(0)
        spread = ((patterns - mean_pattern) ** 2).mean(1)
        spread_rest = float(spread[~members].mean())
        evidence["consistency"] = float(1.0 - spread[members].mean() / spread_rest) if spread_rest > 0 else 0.0

        drop = (logits - scorer.masked(pixels, mask, replacement)) / scale
        evidence["masking_drop"] = float(drop[members].mean())
        evidence["masking_drop_rest"] = float(drop[~members].mean())
        evidence["necessity"] = evidence["masking_drop"] - evidence["masking_drop_rest"]

        if len(recipients):
            member_donors = rng.choice(np.flatnonzero(members), size=len(recipients))
            control_donors = rng.choice(np.flatnonzero(~members), size=len(recipients))
            gains, flips = [], []
            for donors in (member_donors, control_donors):
                pasted = recipients.copy()
                pasted[:, mask, :] = pixels[donors][:, mask, :]
                pasted_logits, pasted_is_class = scorer(pasted)
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
        weakest = min(ratios, key=ratios.get)
        score = float(ratios[weakest])
        evidence["weakest_evidence"] = weakest
        evidence["thresholds"] = {"consistency": CONSISTENCY, "necessity": NECESSITY, "sufficiency": SUFFICIENCY}
        results.append(ClusterEvidence(int(cluster), n_members, score, score >= config.threshold, evidence, region))
    return results


def join_pattern_carriers(
    pixels: np.ndarray, cluster_labels: np.ndarray, scored: list[ClusterEvidence]
) -> np.ndarray:
    """Move samples that carry a flagged cluster's pattern into that cluster; returns new (N,) labels.

    Spectral clustering groups samples by *where the model looks*; a few samples that carry the artifact can
    still land in other clusters when the model also reads their object well. A sample of an unflagged
    cluster joins a flagged one when, inside the flagged region, its pixels are closer to the flagged
    members' mean pattern than to the rest of the class's mean pattern, and no farther from it than 95 % of
    the members are. The number that joined is recorded in the cluster's evidence (``joined_by_pattern``).
    """
    labels = cluster_labels.copy()
    size = pixels.shape[1:3]
    flagged = [s for s in sorted(scored, key=lambda s: -s.score) if s.flagged and s.region is not None]
    taken = np.isin(cluster_labels, [s.id for s in flagged])
    for cluster in flagged:
        members = cluster_labels == cluster.id
        mask = to_image_mask(cluster.region, size)
        patterns = pixels[:, mask, :].reshape(len(pixels), -1)
        to_members = ((patterns - patterns[members].mean(0)) ** 2).mean(1)
        to_rest = ((patterns - patterns[~members].mean(0)) ** 2).mean(1)
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
    """(N, H, W, C) pixels blurred with a Gaussian of 1/16 of the image side: what ``fill: blur`` masks with."""
    from scipy.ndimage import gaussian_filter

    sigma = max(pixels.shape[1], pixels.shape[2]) / 16
    return gaussian_filter(pixels, sigma=(0, sigma, sigma, 0))
