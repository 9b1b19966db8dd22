"""Carriers by effect: the samples whose most relevant window acts on the model as a finding's pattern does.

Pixel matching (``spray.flag.patterns``) finds the copies of a pattern that look alike. The copies of a real
shortcut often do not: a logo resized to other sizes changes its line widths and corners pixel by pixel, a
stamp is drawn in other colours. What its copies share is what the model does with them: pasted into images
of other classes, each turns them towards the audited class, while a piece of an ordinary image of the class
hardly does (the control of the sufficiency test).

``transplant_effects`` measures that for every sample of a class: its hotspot (``spray.flag.patterns.hotspots``,
its most relevant window) pasted at ``EFFECT_RECIPIENTS`` random places into as many images of other classes
(the same images and places for every sample), the mean rise of the audited logit, in units of the class's
median |logit|. Effect alone does not say *which* pattern: where the model reads the class from any piece of
it (a stroke of a digit), ordinary windows act strongly too. So each sample's resemblance to each finding's
prototypes is measured as well (its best NCC over positions and ``spray.flag.patterns.SCALES``; a finding has
one prototype per merged group, e.g. per size band of a logo, and the best counts), and
``spray.flag.findings.join_by_effect`` moves into a flagged finding the samples that act like its members and
look more like its pattern than nearly all images of other classes do (thresholds there). It runs only for classes with a finding: the cost is ``EFFECT_RECIPIENTS``
forward passes per sample of such a class.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from spray.config import FlaggingConfig, ImageConfig
from spray.flag.findings import Effects, Finding
from spray.flag.passes import LogitScorer, PixelBatches, check_count
from spray.flag.patterns import MIN_SIDE, SearchImages, grey, hotspots, match, search_scale, shrink
from spray.flag.plan import Windows

EFFECT_RECIPIENTS = 16  # images of other classes each sample's hotspot is pasted into
FORWARD_BATCH = 256  # pasted images scored per forward pass


def measure_effects(model: torch.nn.Module, class_index: int, batches: PixelBatches, maps: np.ndarray,
                    recipients: np.ndarray, image: ImageConfig, config: FlaggingConfig, findings: list[Finding],
                    device: torch.device | str = "cpu") -> Effects:
    """Each sample's effect, window and resemblance to each of ``findings`` (``spray.flag.findings.Effects``).

    batches: the class's images (one pass); maps: (N, h, w) preprocessed relevance, aligned with them;
    recipients: (M, H, W, C) images of other classes, of which ``EFFECT_RECIPIENTS`` are drawn with
    ``config.seed`` (no recipients: every effect is NaN). Raises ValueError when ``batches`` yields a
    different number of images than ``maps`` holds.
    """
    gain, windows, searched = transplant_effects(model, class_index, batches, maps, recipients, image, config, device)
    others = SearchImages(shrink(grey(recipients), searched.factor), searched.factor, searched.size) \
        if len(recipients) else None
    rows, elsewhere = [], []
    for finding in findings:
        prototypes = finding.prototypes or (finding.prototype,)
        # fmax: a prototype too small to match (NaN) leaves the others' best
        rows.append(np.fmax.reduce([resemblance(prototype, searched) for prototype in prototypes]))
        elsewhere.append(np.fmax.reduce([resemblance(prototype, others) for prototype in prototypes])
                         if others is not None else np.zeros(0, np.float32))
    return Effects(gain, windows, np.stack(rows) if rows else np.zeros((0, len(maps)), np.float32),
                   np.stack(elsewhere) if elsewhere else np.zeros((0, len(recipients)), np.float32))


@torch.no_grad()
def transplant_effects(model: torch.nn.Module, class_index: int, batches: PixelBatches, maps: np.ndarray,
                       recipients: np.ndarray, image: ImageConfig, config: FlaggingConfig,
                       device: torch.device | str = "cpu") -> tuple[np.ndarray, Windows, SearchImages]:
    """(N,) float32 effects (NaN without recipients), the (N,) hotspot windows in image pixels, and the
    class's grey images as the pattern search holds them (``spray.flag.patterns.SearchImages``)."""
    n = len(maps)
    size = (int(image.size[0]), int(image.size[1]))
    windows = hotspots(maps, size)
    factor = search_scale(size)
    rng = np.random.default_rng(config.seed)
    chosen = recipients[rng.choice(len(recipients), min(EFFECT_RECIPIENTS, len(recipients)), replace=False)]
    places = rng.random((len(chosen), 2))
    scorer = LogitScorer(model.to(device).eval(), class_index, image, torch.device(device))
    before = scorer(chosen)[0] if len(chosen) else np.zeros(0, np.float32)
    logits, gains = np.zeros(n, np.float32), np.full(n, np.nan if not len(chosen) else 0.0, np.float32)
    per_pass = max(1, FORWARD_BATCH // max(1, len(chosen)))
    searched, seen = [], 0
    for pixels in batches():
        start = seen
        seen += len(pixels)
        if seen > n:
            break  # reported below
        searched.append(shrink(grey(pixels), factor))
        logits[start:seen] = scorer(pixels)[0]
        for first in range(0, len(pixels) if len(chosen) else 0, per_pass):
            rows = range(first, min(first + per_pass, len(pixels)))
            pasted = np.concatenate([_pasted(pixels[row], windows.box(start + row), chosen, places) for row in rows])
            after = scorer(pasted)[0].reshape(len(rows), len(chosen))
            gains[start + first : start + first + len(rows)] = (after - before).mean(1)
    check_count(seen, n)
    scale = float(np.median(np.abs(logits))) or 1.0
    return gains / scale, windows, SearchImages(torch.cat(searched), factor, size)


def resemblance(prototype: np.ndarray, searched: SearchImages) -> np.ndarray:
    """(N,) the best NCC of a finding's prototype (h, w, C) in image pixels, NaN outside its template, in
    each searched image, over positions and ``SCALES`` (``spray.flag.patterns.match``); NaN for every image
    when the prototype is too small to match at the search resolution."""
    n = len(searched.searched)
    template = prototype.mean(-1)
    inside = np.isfinite(template)
    side = (round(template.shape[0] * searched.factor), round(template.shape[1] * searched.factor))
    if not inside.any() or min(side) < MIN_SIDE:
        return np.full(n, np.nan, np.float32)
    filled = torch.from_numpy(np.where(inside, template, 0).astype(np.float32))[None, None]
    mask = torch.from_numpy(inside.astype(np.float32))[None, None]
    if side != template.shape:
        filled = F.interpolate(filled, size=side, mode="area")
        mask = F.interpolate(mask, size=side, mode="nearest")
    return match(filled[0, 0].numpy(), searched.searched, searched.factor, searched.size,
                 mask=mask[0, 0].numpy() > 0).score


def _pasted(image: np.ndarray, box: tuple[int, int, int, int], recipients: np.ndarray,
            places: np.ndarray) -> np.ndarray:
    """(M, H, W, C) the recipients with the image's window ``box`` (top, left, height, width) pasted at
    ``places`` (M, 2), fractions of the free room along each side."""
    top, left, height, width = box
    patch = image[top : top + height, left : left + width]
    out = recipients.copy()
    for target, (row, col) in zip(out, places):
        y = round(float(row) * (out.shape[1] - height))
        x = round(float(col) * (out.shape[2] - width))
        target[y : y + height, x : x + width] = patch
    return out
