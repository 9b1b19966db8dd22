"""Patterns that move: the same small picture at different places and sizes in the images of one class.

SpRAY's clusters group samples by *where* the model looks, so an artifact that sits at a different place in
every image (a logo in a random corner, a stamp anywhere) spreads over several clusters or none, and a
region fixed per cluster cannot describe it. This module looks for it by *what* the model looks at:

1. ``hotspots``: each sample's most relevant square window (side ``HOTSPOT_SIDE`` of the image side) from its
   own preprocessed relevance map, and the image pixels there.
2. ``seed_order``: the hotspots whose content recurs most in the class (normalised cross-correlation of the
   aligned hotspot contents, a cheap (N, N) product) go first: an artifact is drawn the same way in every
   image it is on, while a natural part of a scene only looks alike.
3. ``match``: a seed's hotspot is looked for in every image of the class at every position and at the
   scales in ``SCALES``, by normalised cross-correlation (NCC) of grey levels. NCC is the similarity a
   reviewer means by "the same pattern": 1 for an exact copy whatever the brightness, contrast or colour of
   the copy (grey levels: a logo drawn in another colour keeps its shape), near 0 for unrelated content, and
   its best value over positions is tolerant to translation by construction. Samples whose best match
   reaches ``MATCH`` carry the pattern, each at its own place and scale. A pattern whose copies vary in
   size beyond ``SCALES`` comes out as several patterns, one per size band; flagged ones are merged into
   one finding when each matches the other's carriers well (``spray.flag.findings``).

Images are searched at most ``SEARCH_SIDE`` pixels wide (larger images are shrunk for the search only), so
the cost per seed is that of a few small convolutions whatever the input size. At most ``MAX_PATTERNS``
patterns are measured per class; a pattern's carriers are then measured like a cluster (``spray.flag``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from spray.config import FlaggingConfig
from spray.flag.plan import GROW_SPREAD, MIN_SPREAD, ClusterPlan, Windows, draw_donors, resize_mask

HOTSPOT_SIDE = 0.2  # side of a sample's most relevant window, as a share of the image side
SCALES = (0.67, 0.8, 1.0, 1.25, 1.5)  # pattern sides tried, relative to the seed's window
MATCH = 0.85  # best NCC from which a sample carries a pattern
MIN_RECUR = 0.9  # hotspot NCC at which two hotspots count as the same content when ordering seeds
SEARCH_SIDE = 64  # images are searched at most this many pixels wide
MAX_PATTERNS = 8  # patterns measured per class
MIN_CONTRAST = 0.02  # a seed window whose grey levels vary less (std, in [0, 1] units) is not a pattern
MIN_SIDE = 4  # a scaled pattern narrower than this (search pixels) is not tried: tiny patches match anything


@dataclass(frozen=True)
class Matches:
    """The best match of one pattern in each of N images: ``score`` (N,) NCC in [-1, 1] and where, as the
    scaled pattern's window in image pixels."""

    score: np.ndarray
    windows: Windows


def grey(pixels: np.ndarray) -> np.ndarray:
    """(n, H, W) grey levels of (n, H, W, C) pixels: the mean over channels."""
    return pixels.mean(-1, dtype=np.float32)


def hotspots(maps: np.ndarray, image_size: tuple[int, int]) -> Windows:
    """Each sample's most relevant square window: side ``HOTSPOT_SIDE`` of the image's shorter side.

    maps: (N, h, w) preprocessed relevance (any normalisation; only positive relevance counts); the window
    is found on the map and scaled to the image's (H, W).
    """
    n, h, w = maps.shape
    side = max(1, round(HOTSPOT_SIDE * min(h, w)))
    positive = torch.from_numpy(np.clip(maps, 0, None).astype(np.float32))[:, None]
    mass = F.avg_pool2d(positive, side, stride=1)[:, 0].reshape(n, -1)
    where = mass.argmax(1).numpy()
    out_w = w - side + 1
    rows, cols = where // out_w, where % out_w
    height, width = image_size
    scale_y, scale_x = height / h, width / w
    side_y, side_x = max(3, round(side * scale_y)), max(3, round(side * scale_x))
    top = np.clip(np.round(rows * scale_y).astype(np.int64), 0, height - side_y)
    left = np.clip(np.round(cols * scale_x).astype(np.int64), 0, width - side_x)
    return Windows(top, left, np.full(n, side_y, np.int64), np.full(n, side_x, np.int64))


def cut(images: np.ndarray, windows: Windows, size: tuple[int, int]) -> np.ndarray:
    """Each image's window resized to ``size`` (h, w): (n, h, w, C) from (n, H, W, C) images (bilinear)."""
    out = np.empty((len(images), *size, images.shape[-1]), np.float32)
    for i, image in enumerate(images):
        top, left, height, width = windows.box(i)
        patch = torch.from_numpy(np.ascontiguousarray(image[top : top + height, left : left + width]))
        if (height, width) != tuple(size):
            patch = F.interpolate(patch.permute(2, 0, 1)[None], size=size, mode="bilinear",
                                  align_corners=False)[0].permute(1, 2, 0)
        out[i] = patch.numpy()
    return out


def ncc_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """NCC of matching rows: a, b (n, P) -> (n,); 0 where either row is flat."""
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    norm = np.sqrt((a * a).sum(1) * (b * b).sum(1))
    return np.where(norm > 1e-9, (a * b).sum(1) / np.maximum(norm, 1e-9), 0.0)


def seed_order(patches: np.ndarray) -> np.ndarray:
    """Sample positions, the hotspot whose content recurs most in the class first.

    patches: (N, h, w) grey hotspot contents. A hotspot's recurrence is the number of other hotspots with
    NCC >= ``MIN_RECUR``; flat hotspots (std < ``MIN_CONTRAST``) go last.
    """
    flat = patches.reshape(len(patches), -1).astype(np.float64)
    centred = flat - flat.mean(1, keepdims=True)
    norms = np.linalg.norm(centred, axis=1)
    unit = centred / np.maximum(norms, 1e-9)[:, None]
    similar = (unit @ unit.T) >= MIN_RECUR
    recurrence = similar.sum(1) - 1
    recurrence[flat.std(1) < MIN_CONTRAST] = -1
    return np.argsort(-recurrence, kind="stable")


def search_scale(image_size: tuple[int, int]) -> float:
    """The factor images are shrunk by for the search (1 when they are at most ``SEARCH_SIDE`` wide)."""
    return min(1.0, SEARCH_SIDE / max(image_size))


def shrink(grey_images: np.ndarray, factor: float) -> torch.Tensor:
    """(n, 1, h, w) float32 grey images shrunk by ``factor`` (area averaging) for the search."""
    x = torch.from_numpy(np.ascontiguousarray(grey_images, np.float32))[:, None]
    if factor >= 1.0:
        return x
    size = (max(1, round(x.shape[2] * factor)), max(1, round(x.shape[3] * factor)))
    return F.interpolate(x, size=size, mode="area")


def _ncc_map(x: torch.Tensor, template: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """NCC of ``template`` (h, w) over the pixels of ``mask`` (h, w) in {0, 1} at every position of x
    (n, 1, H, W): (n, H-h+1, W-w+1)."""
    count = mask.sum()
    centred = mask * (template - (template * mask).sum() / count)
    weights = mask[None, None]
    sums = F.conv2d(x, weights)
    squares = F.conv2d(x * x, weights)
    variance = squares - sums * sums / count
    # A window flatter than MIN_CONTRAST holds no pattern: its NCC would be that of rounding noise (the
    # difference of two large sums), anywhere in [-1, 1] or beyond. It matches nothing.
    flat = variance < count * MIN_CONTRAST**2
    score = F.conv2d(x, centred[None, None]) / (variance.clamp_min(1e-12).sqrt() * centred.norm().clamp_min(1e-8))
    return score.masked_fill(flat, 0.0).clamp(-1.0, 1.0)[:, 0]


@torch.no_grad()
def match(template: np.ndarray, searched: torch.Tensor, factor: float, image_size: tuple[int, int],
          mask: np.ndarray | None = None) -> Matches:
    """The best NCC of a grey ``template`` (h, w, at the search resolution) in each searched image, over
    every position and the scales in ``SCALES``; over the pixels of ``mask`` (h, w) bool only, if given.

    searched: (n, 1, h', w') grey images shrunk by ``factor`` (``shrink``); the matched windows are given in
    image pixels of ``image_size`` (H, W).
    """
    n = len(searched)
    best = np.full(n, -np.inf, np.float32)
    found = [np.zeros(n, np.int64) for _ in range(4)]
    base = torch.from_numpy(np.ascontiguousarray(template, np.float32))[None, None]
    base_mask = torch.from_numpy(np.ones(template.shape, np.float32) if mask is None else mask.astype(np.float32))
    for scale in SCALES:
        size = (round(template.shape[0] * scale), round(template.shape[1] * scale))
        if min(size) < MIN_SIDE or size[0] > searched.shape[2] or size[1] > searched.shape[3]:
            continue
        scaled = F.interpolate(base, size=size, mode="area" if scale < 1 else "bilinear")[0, 0]
        scaled_mask = F.interpolate(base_mask[None, None], size=size, mode="nearest")[0, 0]
        if scaled_mask.sum() < MIN_SIDE ** 2 or float(scaled[scaled_mask > 0].std()) < MIN_CONTRAST:
            continue
        score = _ncc_map(searched, scaled, scaled_mask).reshape(n, -1)
        value, where = score.max(1)
        value_np, where_np = value.numpy(), where.numpy()
        better = value_np > best
        out_w = searched.shape[3] - size[1] + 1
        best[better] = value_np[better]
        height, width = (min(image_size[0], round(size[0] / factor)), min(image_size[1], round(size[1] / factor)))
        top = np.clip(np.round(where_np // out_w / factor).astype(np.int64), 0, image_size[0] - height)
        left = np.clip(np.round(where_np % out_w / factor).astype(np.int64), 0, image_size[1] - width)
        for array, values in zip(found, (top, left, np.full(n, height), np.full(n, width))):
            array[better] = values[better]
    return Matches(best, Windows(*found))


@dataclass(frozen=True)
class SearchImages:
    """What the search keeps of a class while it streams past: (N, 1, h', w') grey images shrunk by
    ``factor`` from the images' ``size`` (H, W)."""

    searched: torch.Tensor
    factor: float
    size: tuple[int, int]


def plan_patterns(images: SearchImages, maps: np.ndarray, n_recipients: int,
                  config: FlaggingConfig) -> list[ClusterPlan]:
    """Plans of at most ``MAX_PATTERNS`` patterns found anywhere in the class, most recurrent seed first.

    maps: (N, h, w) preprocessed relevance, aligned with ``images``. A seed whose hotspot another pattern was
    found on (overlapping half of it) is skipped; a pattern carried by fewer than ``config.min_cluster_size`` samples, or by
    all but fewer than that (the class's own object, which every image shows: its evidence would be measured
    against a "rest of the class" of a sample or two), is not a candidate. The search holds the class's grey images at most ``SEARCH_SIDE``
    pixels wide: 16 KB per image.
    """
    n = len(maps)
    searched_size = (images.searched.shape[2], images.searched.shape[3])
    own = hotspots(maps, images.size)
    hot = own.scaled(images.factor, searched_size)
    side = (int(hot.height[0]), int(hot.width[0]))
    patches = cut(images.searched.numpy().transpose(0, 2, 3, 1), hot, side)[..., 0]
    covered = np.zeros(n, bool)
    rng = np.random.default_rng(config.seed)
    plans: list[ClusterPlan] = []
    for seed in seed_order(patches):
        if len(plans) >= MAX_PATTERNS or patches[seed].std() < MIN_CONTRAST:
            break
        if covered[seed]:
            continue
        found, members, agreed = _matched(patches[seed], seed, images, config.min_cluster_size)
        covered |= members & _overlaps(found.windows, own)
        if min(members.sum(), (~members).sum()) < config.min_cluster_size:
            continue
        box = found.windows.box(seed)
        plans.append(ClusterPlan(
            -1 - len(plans), members, None, _placed(box, images.size), draw_donors(members, n_recipients, rng),
            found.windows, resize_mask(agreed, box[2:]), rng.random((n_recipients, 2)), found.score,
        ))
    return plans


def _matched(template: np.ndarray, seed: int, images: SearchImages,
             min_size: int) -> tuple[Matches, np.ndarray, np.ndarray]:
    """A seed's matches and carriers, and the (h, w) bool pixels of its window the carriers agree on.

    A seed's window may hold a piece of its own background beside the pattern; the carriers' windows agree
    on the pattern only, so the pattern is looked for again over the pixels where the carriers' median
    absolute deviation is at most ``GROW_SPREAD`` of the rest's (``spray.flag.plan``), when that leaves at
    least a quarter of the window."""
    found = match(template, images.searched, images.factor, images.size)
    members = found.score >= MATCH
    members[seed] = True
    agreed = np.ones(template.shape, bool)
    if members.sum() < max(2, min_size) or members.all():
        return found, members, agreed
    searched = images.searched.numpy().transpose(0, 2, 3, 1)
    windows = found.windows.scaled(images.factor, searched.shape[1:3])
    patches = cut(searched, windows, template.shape)[..., 0]
    spread = [np.median(np.abs(group - np.median(group, 0)), 0) for group in (patches[members], patches[~members])]
    consistent = (spread[0] <= GROW_SPREAD * spread[1]) & (spread[1] > MIN_SPREAD)
    if consistent.all() or consistent.mean() < 0.25:
        return found, members, agreed
    found = match(template, images.searched, images.factor, images.size, mask=consistent)
    members = found.score >= MATCH
    members[seed] = True
    return found, members, consistent



def _placed(box: tuple[int, int, int, int], size: tuple[int, int]) -> np.ndarray:
    mask = np.zeros(size, bool)
    top, left, height, width = box
    mask[top : top + height, left : left + width] = True
    return mask


def _overlaps(found: Windows, hot: Windows) -> np.ndarray:
    """(N,) bool: whether each sample's match window covers at least half of its hotspot window."""
    top, left = np.maximum(found.top, hot.top), np.maximum(found.left, hot.left)
    bottom = np.minimum(found.top + found.height, hot.top + hot.height)
    right = np.minimum(found.left + found.width, hot.left + hot.width)
    shared = np.clip(bottom - top, 0, None) * np.clip(right - left, 0, None)
    return shared >= 0.5 * hot.height * hot.width
