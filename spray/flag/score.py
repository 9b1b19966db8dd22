"""Score every cluster of one class and every pattern found anywhere in it (search, plan, pass one, pass two,
weigh)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from spray.config import FlaggingConfig, ImageConfig
from spray.flag.evidence import Measured, Transplant, decision_statistic, not_scored, weigh
from spray.flag.findings import ClusterEvidence
from spray.flag.passes import LogitScorer, Pasted, PixelBatches, SecondPass, first_pass, scan, second_pass
from spray.flag.patterns import plan_patterns
from spray.flag.plan import ClusterPlan, Windows, grow_region, plan_clusters

IN_PLACE = -101  # ids of patterns' carriers measured at one place: -101, -102, ...


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
    """Evidence, score and flag for every cluster of one class, by cluster id, then for every pattern found
    anywhere in it (ids -1, -2, ...: ``spray.flag.patterns``), then for every pattern's carriers as a group at one
    place (ids -101, -102, ...: ``IN_PLACE``).

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
    searched = scan(batches, n, size)
    grey = searched.searched[:, 0].numpy()
    plans = [grow_region(plan, grey) for plan in plans]
    patterns = plan_patterns(searched, maps, len(recipients), config)
    plans += patterns + [grow_region(plan, grey) for plan in _in_place(patterns, maps, size, config)]
    first = first_pass(plans, batches, scorer, recipients, n, (*size, image.channels))
    scale = float(np.median(np.abs(first.logits))) or 1.0
    baseline = scorer(recipients) if len(recipients) else None
    second = second_pass(plans, batches, scorer, first, n, config.fill)
    absolute = np.abs(maps).reshape(n, -1)
    results = {skip.cluster: ClusterEvidence(skip.cluster, skip.size, not_scored(skip.reason), None)
               for skip in unscored}
    for plan, pasted, tally, prototype in zip(plans, first.pasted, second, first.member_patterns):
        measured = measure(plan, first.logits, pasted, tally, absolute, scale, baseline, image.channels >= 3)
        results[plan.cluster] = ClusterEvidence(
            plan.cluster, int(plan.members.sum()), weigh(measured, config.threshold), plan.region,
            tally.to_members, tally.to_rest, plan.members if plan.cluster < 0 else None, plan.windows,
            _prototype(prototype, plan.template, image.channels), plan.anywhere, plan.match_score)
    return [results[cluster] for cluster in sorted(results, key=lambda c: (c < 0, abs(c)))]


def _in_place(patterns: list[ClusterPlan], maps: np.ndarray, size: tuple[int, int],
              config: FlaggingConfig) -> list[ClusterPlan]:
    """Each pattern's carriers once more, as a group at one place: the distinctive region of their maps,
    grown at image resolution. A pattern found anywhere is measured at each carrier's best-matching window,
    a piece of the pattern's size; a thin frame around the whole image is found by its corners or sides, and
    masking or transplanting one corner of a frame tests too little of it. Planned as the two clusters
    "carriers" (1) and "the rest" (0), so that the carriers' donors are drawn as for any cluster."""
    out = []
    for number, pattern in enumerate(patterns):
        labels = pattern.members.astype(np.int64)
        plans, _ = plan_clusters(maps, labels, len(pattern.donors[0]), size, config)
        out += [replace(plan, cluster=IN_PLACE - number) for plan in plans if plan.cluster == 1]
    return out


def _prototype(pattern: np.ndarray, template: np.ndarray, channels: int) -> np.ndarray:
    """(h0, w0, C) the members' mean pattern laid out in its template (NaN outside the template)."""
    out = np.full((*template.shape, channels), np.nan, np.float32)
    out[template] = pattern.reshape(-1, channels)
    return out


def measure(plan: ClusterPlan, logits: np.ndarray, pasted: tuple[Pasted, Pasted], second: SecondPass,
            absolute: np.ndarray, scale: float, baseline: tuple[np.ndarray, np.ndarray] | None,
            colour_images: bool = True) -> Measured:
    """The numbers of one scored cluster from the two passes.

    logits: (N,) the class's audited logits (pass one); pasted: the recipients with the members' region and
    with the rest's (pass one); second: this plan's pass two; absolute: (N, h*w) |preprocessed relevance|;
    scale: the class's median |logit|, the unit of logit changes; baseline: the recipients' (M,) logits and
    whether they are the class as they are, None without recipients. The shape consistency counts for
    ``colour_images`` only (None otherwise).
    """
    members = plan.members
    region = plan.region if plan.region is not None else _map_region(plan.windows, absolute.shape[1], plan.mask)
    in_region = _in_region(absolute, region)
    # medians: a cluster with a few members that lack the pattern is still judged by the pattern
    spread_rest = float(np.median(second.to_members[~members]))
    colour = float(1.0 - np.median(second.to_members[members]) / spread_rest) if spread_rest > 0 else 0.0
    match_rest = float(np.median(second.shape_match[~members]))
    # in grey images the grey levels are the pixels themselves: there the contrast-free NCC would only let
    # the strokes of one handwriting style pass
    shape = float((np.median(second.shape_match[members]) - match_rest) / max(1.0 - match_rest, 1e-6)) \
        if colour_images else None
    drop = (logits - second.masked_logits) / scale
    transplant = None
    if baseline is not None:
        recipient_logits, is_class = baseline
        gains = [float(((group.logits - recipient_logits) / scale).mean()) for group in pasted]
        turned = [group.is_class & ~is_class for group in pasted]
        transplant = Transplant(gains[0], gains[1], float(turned[0].mean()), float(turned[1].mean()),
                                decision_statistic(turned[0], turned[1]))
    return Measured(
        region_area=float(plan.mask.mean()), relevance_in_region=float(in_region[members].mean()),
        relevance_in_region_rest=float(in_region[~members].mean()), consistency=colour if shape is None else max(colour, shape),
        consistency_colour=colour, consistency_shape=shape,
        masking_drop=float(drop[members].mean()), masking_drop_rest=float(drop[~members].mean()),
        transplant=transplant,
    )


def _map_region(windows: Windows, pixels: int, mask: np.ndarray) -> np.ndarray | list[np.ndarray]:
    """A pattern found anywhere has a region per sample: its window scaled to the (h, w) map of ``pixels``
    pixels, one (h * w,) bool row per sample."""
    height, width = mask.shape
    side = round(np.sqrt(pixels * height / width))
    map_size = (side, pixels // side)
    scaled = windows.scaled(map_size[0] / height, map_size)
    rows = np.zeros((len(windows), map_size[0], map_size[1]), bool)
    for i in range(len(windows)):
        top, left, h, w = scaled.box(i)
        rows[i, top : top + max(h, 1), left : left + max(w, 1)] = True
    return list(rows.reshape(len(windows), -1))


def _in_region(absolute: np.ndarray, region: np.ndarray | list[np.ndarray]) -> np.ndarray:
    """(N,) share of each sample's |relevance| (N, h * w) inside the region (one, or one per sample)."""
    total = np.maximum(absolute.sum(1), 1e-12)
    if isinstance(region, np.ndarray):
        return absolute[:, region.ravel()].sum(1) / total
    return np.array([row[inside].sum() for row, inside in zip(absolute, region)]) / total
