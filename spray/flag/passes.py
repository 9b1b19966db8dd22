"""The two passes over a class's images that the evidence is measured from.

The class streams past twice in batches (``PixelBatches``), so memory holds a batch and a few (N,) arrays
per cluster, never the class. Pass one: every sample's audited logit, the mean image, each cluster's
members' and rest's mean region pattern, and the transplants (each recipient gets its donor's region when
the donor's batch passes, so no donor is held). Pass two: each sample's distance to those mean patterns and
its logit with each cluster's region filled.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch

from spray.config import ImageConfig
from spray.data import to_model_input
from spray.flag.patterns import SearchImages, cut, grey, ncc_rows, search_scale, shrink
from spray.flag.plan import ClusterPlan, resize_mask

PixelBatches = Callable[[], Iterable[np.ndarray]]
"""Called once per pass over a class: yields its images in order as (n, H, W, C) float32 batches in [0, 1]."""


def array_batches(pixels: np.ndarray, batch_size: int = 256) -> PixelBatches:
    """PixelBatches over an (N, H, W, C) array already in memory (small classes, tests)."""
    return lambda: (pixels[start : start + batch_size] for start in range(0, len(pixels), batch_size))


class LogitScorer:
    """Batched audited-class logits of pixel images (n, H, W, C) in [0, 1]."""

    def __init__(self, model: torch.nn.Module, class_index: int, image: ImageConfig, device: torch.device):
        self.model, self.class_index, self.image, self.device = model, class_index, image, device

    @torch.no_grad()
    def __call__(self, pixels: np.ndarray, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
        """(n,) audited logits and (n,) bool: whether the audited class is the prediction."""
        logits = []
        for start in range(0, len(pixels), batch_size):
            x = to_model_input(pixels[start : start + batch_size], self.image).to(self.device)
            logits.append(self.model(x).float().cpu())
        out = torch.cat(logits).numpy() if logits else np.zeros((0, 1), np.float32)
        return out[:, self.class_index], out.argmax(1) == self.class_index


@dataclass
class Pasted:
    """Recipients with one donor group's region pasted in: (M,) audited logits, (M,) whether then the class."""

    logits: np.ndarray
    is_class: np.ndarray

    @classmethod
    def empty(cls, m: int) -> Pasted:
        return cls(np.zeros(m, np.float32), np.zeros(m, bool))


@dataclass
class FirstPass:
    """What pass one measured; the lists hold one item per plan, in the plans' order."""

    logits: np.ndarray  # (N,) float32, the audited logit of every sample
    background: np.ndarray  # (H, W, C) float32, the mean image of the class and the recipients
    member_patterns: list[np.ndarray]  # (P,) float32, the members' mean region pixels (P = region pixels x C)
    rest_patterns: list[np.ndarray]  # (P,) float32, the rest of the class's
    pasted: list[tuple[Pasted, Pasted]]  # the members' region pasted, and the rest's (the control)


@dataclass
class SecondPass:
    """What pass two measured for one plan: (N,) arrays aligned with the class's samples."""

    to_members: np.ndarray  # mean squared distance of each sample's pattern pixels to the members' mean
    to_rest: np.ndarray  # ... to the rest's mean
    masked_logits: np.ndarray  # the audited logit with the pattern's window filled
    shape_match: np.ndarray  # NCC of the grey levels of each sample's pattern pixels and the members' mean


def scan(batches: PixelBatches, n: int, size: tuple[int, int]) -> SearchImages:
    """Pass zero over the class: the grey images the pattern search looks in and cluster regions grow on
    (``spray.flag.patterns.SearchImages``). Raises ValueError when ``batches`` yields other than ``n``."""
    factor = search_scale(size)
    searched, seen = [], 0
    for pixels in batches():
        seen += len(pixels)
        if seen > n:
            break
        searched.append(shrink(grey(pixels), factor))
    check_count(seen, n)
    return SearchImages(torch.cat(searched) if searched else torch.zeros(0, 1, 1, 1), factor, size)


def first_pass(plans: list[ClusterPlan], batches: PixelBatches, scorer: LogitScorer, recipients: np.ndarray,
               n: int, shape: tuple[int, int, int]) -> FirstPass:
    """Pass one over the class: n images of ``shape`` (H, W, C); recipients: (M, H, W, C).

    Raises ValueError when ``batches`` yields a different number of images than ``n``.
    """
    logits = np.zeros(n, np.float32)
    image_sum = np.zeros(shape)
    sums = [(np.zeros(int(plan.template.sum()) * shape[2]), np.zeros(int(plan.template.sum()) * shape[2]))
            for plan in plans]
    pasted = [(Pasted.empty(len(recipients)), Pasted.empty(len(recipients))) for _ in plans]
    seen = 0
    for pixels in batches():
        positions = np.arange(seen, seen + len(pixels))
        seen += len(pixels)
        if seen > n:
            break  # reported below
        logits[positions] = scorer(pixels)[0]
        image_sum += pixels.sum(0, dtype=np.float64)
        for plan, (member_sum, rest_sum), groups in zip(plans, sums, pasted):
            patterns = window_patterns(pixels, plan, positions)
            inside = plan.members[positions]
            member_sum += patterns[inside].sum(0, dtype=np.float64)
            rest_sum += patterns[~inside].sum(0, dtype=np.float64)
            for donors, group in zip(plan.donors, groups):
                _transplant(donors, group, plan, pixels, positions, recipients, scorer)
    check_count(seen, n)
    background = ((image_sum + recipients.sum(0, dtype=np.float64)) / (n + len(recipients))).astype(np.float32)
    return FirstPass(
        logits, background,
        [(member_sum / plan.members.sum()).astype(np.float32) for plan, (member_sum, _) in zip(plans, sums)],
        [(rest_sum / (~plan.members).sum()).astype(np.float32) for plan, (_, rest_sum) in zip(plans, sums)],
        pasted,
    )


def window_patterns(pixels: np.ndarray, plan: ClusterPlan, positions: np.ndarray) -> np.ndarray:
    """(n, P * C) the pattern pixels of each image (n, H, W, C): its window resized to the plan's template,
    the template's pixels only."""
    patches = cut(pixels, plan.windows.take(positions), plan.template.shape)
    return patches[:, plan.template, :].reshape(len(pixels), -1)


def window_mask(plan: ClusterPlan, box: tuple[int, int, int, int]) -> np.ndarray:
    """The plan's template resized (nearest) to a window of (height, width) = box[2:]: (height, width) bool."""
    return resize_mask(plan.template, (box[2], box[3]))


def check_count(seen: int, n: int) -> None:
    """Raise ValueError unless a pass saw as many images as there are relevance maps."""
    if seen != n:
        raise ValueError(f"{'more' if seen > n else 'fewer'} images ({seen}{'+' if seen > n else ''}) than "
                         f"relevance maps ({n}): they must be the same samples, in the same order")


def _transplant(donors: np.ndarray, group: Pasted, plan: ClusterPlan, pixels: np.ndarray, positions: np.ndarray,
                recipients: np.ndarray, scorer: LogitScorer) -> None:
    """Paste the pattern of the donors in this batch into their recipients and score them, into ``group``:
    at the donor's own place, or for a pattern found anywhere at the plan's ``places``."""
    slots = np.flatnonzero((donors >= positions[0]) & (donors <= positions[-1]))
    if not len(slots):
        return
    pasted = recipients[slots].copy()
    for row, slot in enumerate(slots):
        donor = int(donors[slot])
        top, left, height, width = plan.windows.box(donor)
        inside = window_mask(plan, (top, left, height, width))
        patch = pixels[donor - positions[0], top : top + height, left : left + width]
        if plan.places is not None:
            top = round(float(plan.places[slot, 0]) * (pasted.shape[1] - height))
            left = round(float(plan.places[slot, 1]) * (pasted.shape[2] - width))
        target = pasted[row, top : top + height, left : left + width]
        target[inside] = patch[inside]
    group.logits[slots], group.is_class[slots] = scorer(pasted)


def second_pass(plans: list[ClusterPlan], batches: PixelBatches, scorer: LogitScorer, first: FirstPass,
                n: int, fill: str) -> list[SecondPass]:
    """Pass two over the class: one SecondPass per plan. ``fill``: "mean" fills a region with
    ``first.background``, "blur" with each image blurred."""
    results = [SecondPass(*(np.zeros(n, np.float32) for _ in range(4))) for _ in plans]
    seen = 0
    for pixels in batches():
        positions = slice(seen, seen + len(pixels))
        seen += len(pixels)
        replacement = np.broadcast_to(first.background, pixels.shape) if fill == "mean" else _blurred(pixels)
        for plan, result, member_pattern, rest_pattern in zip(plans, results, first.member_patterns,
                                                              first.rest_patterns):
            index = np.arange(positions.start, positions.stop)
            patterns = window_patterns(pixels, plan, index)
            result.to_members[positions] = ((patterns - member_pattern) ** 2).mean(1)
            result.to_rest[positions] = ((patterns - rest_pattern) ** 2).mean(1)
            result.shape_match[positions] = _shape_match(patterns, member_pattern, pixels.shape[-1])
            result.masked_logits[positions] = scorer(_filled(pixels, replacement, plan, index))[0]
    return results


def _shape_match(patterns: np.ndarray, mean_pattern: np.ndarray, channels: int) -> np.ndarray:
    """(n,) NCC of each row's grey levels (the mean over its ``channels``) with the mean pattern's."""
    grey_rows = patterns.reshape(len(patterns), -1, channels).mean(2)
    grey_mean = mean_pattern.reshape(1, -1, channels).mean(2)
    return ncc_rows(grey_rows, np.broadcast_to(grey_mean, grey_rows.shape))


def _filled(pixels: np.ndarray, replacement: np.ndarray, plan: ClusterPlan, index: np.ndarray) -> np.ndarray:
    """The images with each one's own pattern window (its template pixels) replaced."""
    masked = pixels.copy()
    if not plan.anywhere:
        masked[:, plan.mask, :] = replacement[:, plan.mask, :]
        return masked
    for row, sample in enumerate(index):
        top, left, height, width = plan.windows.box(int(sample))
        inside = window_mask(plan, (top, left, height, width))
        window = masked[row, top : top + height, left : left + width]
        window[inside] = replacement[row, top : top + height, left : left + width][inside]
    return masked


def _blurred(pixels: np.ndarray) -> np.ndarray:
    """(n, H, W, C) pixels, each image blurred with a Gaussian of 1/16 of the image side: what ``fill: blur`` masks with."""
    from scipy.ndimage import gaussian_filter

    sigma = max(pixels.shape[1], pixels.shape[2]) / 16
    return gaussian_filter(pixels, sigma=(0, sigma, sigma, 0))
