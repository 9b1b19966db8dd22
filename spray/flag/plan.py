"""What the passes over a class will measure: per scorable cluster its distinctive region (at preprocessing
and at image resolution), per pattern found anywhere its carriers and each sample's window, and for both the
donors whose pattern is pasted into images of other classes."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

from spray.config import FlaggingConfig

REGION_MASS = 0.5  # share of the positive mean-map difference the region must hold
# A pixel joins a cluster's region when its members' spread there is at most this share of the rest of the
# class's (the square root of CONSISTENCY's 1 - 0.9, as a spread is a deviation, not a variance) and it touches
# the region: a frame, a line or a plate drawn the same way in every member grows to its whole extent.
GROW_SPREAD = 0.32
MIN_SPREAD = 0.01  # pixels that hardly vary in the rest of the class either (a flat background) never join
# A grown region covering more than this share of the image is not kept (the ungrown region is measured
# instead): an artifact is drawn onto a part of the image, while members agreeing almost everywhere are crops
# of one scene, and masking or transplanting most of an image tests the scene, not something added to it.
MAX_GROWN_AREA = 0.5


@dataclass(frozen=True)
class Windows:
    """One window per sample, in image pixels: (N,) int arrays ``top``, ``left``, ``height``, ``width``."""

    top: np.ndarray
    left: np.ndarray
    height: np.ndarray
    width: np.ndarray

    @classmethod
    def fixed(cls, n: int, top: int, left: int, height: int, width: int) -> Windows:
        """The same window in all ``n`` images (a pattern tied to its place)."""
        return cls(*(np.full(n, value, np.int64) for value in (top, left, height, width)))

    def __len__(self) -> int:
        return len(self.top)

    def box(self, i: int) -> tuple[int, int, int, int]:
        return int(self.top[i]), int(self.left[i]), int(self.height[i]), int(self.width[i])

    def take(self, index: np.ndarray | slice) -> Windows:
        return Windows(self.top[index], self.left[index], self.height[index], self.width[index])

    def scaled(self, factor: float, size: tuple[int, int]) -> Windows:
        """The windows in an image resized by ``factor`` to ``size`` (h, w)."""
        height = np.clip(np.round(self.height * factor).astype(np.int64), 1, size[0])
        width = np.clip(np.round(self.width * factor).astype(np.int64), 1, size[1])
        top = np.clip(np.round(self.top * factor).astype(np.int64), 0, size[0] - height)
        left = np.clip(np.round(self.left * factor).astype(np.int64), 0, size[1] - width)
        return Windows(top, left, height, width)


@dataclass(frozen=True)
class ClusterPlan:
    """One scorable group: who its members are, where each sample's pattern window is, whose pattern is
    transplanted and where to.

    A spectral cluster's pattern is its distinctive region, at the same place in every image (``windows``
    all alike, ``places`` None: transplanted to the donor's own place). A pattern found anywhere
    (``spray.flag.patterns``) has a window per sample where that sample matches it best, and is transplanted
    at ``places``: random positions, as fractions of the room left in the recipient.
    """

    cluster: int  # the spectral cluster's id; a pattern found anywhere: -1, -2, ...; its carriers at one place: -101, ...
    members: np.ndarray  # (N,) bool
    region: np.ndarray | None  # (h, w) bool, preprocessing resolution; None for a pattern found anywhere
    mask: np.ndarray  # (H, W) bool, image resolution: where the pattern is in the image (a pattern's seed)
    # (M,) sample positions, one per recipient: the members' donors, and the rest of the class's (the control)
    donors: tuple[np.ndarray, np.ndarray]
    windows: Windows  # (N,) each sample's window at image resolution
    template: np.ndarray  # (h0, w0) bool: the pattern's pixels within a window, resized to each window
    places: np.ndarray | None = None  # (M, 2) fractions in [0, 1]: where in each recipient a donor goes
    match_score: np.ndarray | None = None  # (N,) a pattern found anywhere: each sample's best NCC with it

    @property
    def anywhere(self) -> bool:
        return self.places is not None


@dataclass(frozen=True)
class Unscored:
    """A cluster that is not scored, and why."""

    cluster: int
    size: int
    reason: str


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
    return np.asarray(image.resize((size[1], size[0]), Image.Resampling.NEAREST)) > 127


def plan_clusters(maps: np.ndarray, cluster_labels: np.ndarray, n_recipients: int, size: tuple[int, int],
                  config: FlaggingConfig) -> tuple[list[ClusterPlan], list[Unscored]]:
    """Plans of the scorable clusters and the unscored ones with their reasons, both by cluster id.

    maps: (N, h, w) preprocessed relevance; cluster_labels: (N,) int; size: the images' (H, W). Donors are
    drawn with ``config.seed``, cluster by cluster, so the same inputs give the same transplants.
    """
    rng = np.random.default_rng(config.seed)
    plans, unscored = [], []
    for cluster in np.unique(cluster_labels):
        members = cluster_labels == cluster
        reason = _not_scored_reason(maps[members], len(maps), config.min_cluster_size)
        if reason is not None:
            unscored.append(Unscored(int(cluster), int(members.sum()), reason))
            continue
        region = distinctive_region(maps, members, config.region_fraction)
        mask = to_image_mask(region, size)
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        top, left = int(rows[0]), int(cols[0])
        height, width = int(rows[-1]) + 1 - top, int(cols[-1]) + 1 - left
        plans.append(ClusterPlan(int(cluster), members, region, mask, draw_donors(members, n_recipients, rng),
                                 Windows.fixed(len(maps), top, left, height, width),
                                 mask[top : top + height, left : left + width].copy()))
    return plans, unscored


def grow_region(plan: ClusterPlan, grey: np.ndarray) -> ClusterPlan:
    """The plan with its image-resolution region grown over the touching pixels at which the members agree:
    a thin frame or line found in part by the downsized relevance, whole.

    grey: (N, h', w') the class's grey images at the search resolution (``spray.flag.patterns``), where a
    pixel joins when the members' median absolute deviation there is at most ``GROW_SPREAD`` of the rest's
    (medians: a few members without the pattern do not stop it) and the rest varies at all
    (``MIN_SPREAD``). The grown pixels are scaled back to the image; the preprocessing-resolution ``region``
    (what the report outlines) is kept. A region that would grow over more than ``MAX_GROWN_AREA`` of the
    image is not grown.
    """
    from scipy import ndimage

    members, rest = grey[plan.members], grey[~plan.members]
    if len(members) < 2 or len(rest) < 2:
        return plan
    spread_members = np.median(np.abs(members - np.median(members, 0)), 0)
    spread_rest = np.median(np.abs(rest - np.median(rest, 0)), 0)
    consistent = (spread_members <= GROW_SPREAD * spread_rest) & (spread_rest > MIN_SPREAD)
    size = plan.mask.shape
    seed = resize_mask(plan.mask, consistent.shape)
    pieces, _ = ndimage.label(consistent | seed, structure=np.ones((3, 3), bool))
    touching = np.unique(pieces[seed])
    grown = plan.mask | resize_mask(np.isin(pieces, touching[touching > 0]), size)
    if grown.mean() > MAX_GROWN_AREA:
        return plan
    rows, cols = np.flatnonzero(grown.any(1)), np.flatnonzero(grown.any(0))
    top, left = int(rows[0]), int(cols[0])
    height, width = int(rows[-1]) + 1 - top, int(cols[-1]) + 1 - left
    return replace(plan, mask=grown, windows=Windows.fixed(len(plan.members), top, left, height, width),
                   template=grown[top : top + height, left : left + width].copy())


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a bool mask to ``size`` (h, w)."""
    rows = np.minimum(np.arange(size[0]) * mask.shape[0] // size[0], mask.shape[0] - 1)
    cols = np.minimum(np.arange(size[1]) * mask.shape[1] // size[1], mask.shape[1] - 1)
    return mask[rows][:, cols]


def draw_donors(members: np.ndarray, n_recipients: int,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(M,) donors drawn from the members and (M,) from the rest of the class, one per recipient."""
    if not n_recipients:
        return np.zeros(0, int), np.zeros(0, int)
    return rng.choice(np.flatnonzero(members), size=n_recipients), rng.choice(np.flatnonzero(~members),
                                                                              size=n_recipients)


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
