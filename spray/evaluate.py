"""How faithful are the heatmaps? Region perturbation and AOPC (Samek et al., IEEE TNNLS 2017).

spray audits a model through its heatmaps, so the heatmaps must point at what the model uses. Region
perturbation tests that: the image is cut into a grid of square patches; the patches are destroyed one after
another, most relevant first (MoRF), and the model's score for the explained class is read after each step.
A faithful heatmap makes the score fall fast. The area over the perturbation curve,

    AOPC = 1 / (L + 1) * sum_{k=0..L} (f(x^0) - f(x^k)),

(``x^k``: the image with its first ``k`` patches destroyed) is compared with the same curve for a random
patch order: ``aopc_gain = AOPC(MoRF) - AOPC(random)`` > 0 means the heatmap knows better than chance where
the evidence is; near 0 or below, clusters of these heatmaps say little about the model.

Defaults follow Samek et al.: 9x9 patches, up to 100 steps, each destroyed patch replaced by uniform noise
within the data range. Every step of a batch of samples runs as one forward pass where ``batch_size`` allows.
The audit itself replaces patches by a blur by default (``evaluation.perturbation``; docs/method.md says why).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

Perturbation = Literal["uniform", "blur", "constant"]
# (B, C, H, W) float32 pixels and the (B,) index of the sample each image comes from -> (B,) scores
Score = Callable[[torch.Tensor, np.ndarray], torch.Tensor]
Order = Literal["morf", "random"]


@dataclass(frozen=True)
class RegionPerturbation:
    """Parameters of region perturbation.

    - ``patch_size``: side of the square patches in pixels (a centred grid: see :func:`patch_grid`).
    - ``steps``: patches destroyed, ``L`` (capped at the number of patches).
    - ``perturbation``: what replaces a destroyed patch: ``uniform`` noise in ``[low, high]`` (one noise image
      per sample, drawn from ``seed``), a ``blur`` of the image (Gaussian, ``blur_sigma`` pixels), or the
      ``constant`` ``low`` (e.g. black).
    - ``low``, ``high``: the data range of the pixels handed to the model function.
    """

    patch_size: int = 9
    steps: int = 100
    perturbation: Perturbation = "uniform"
    low: float = 0.0
    high: float = 1.0
    blur_sigma: float = 3.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not (isinstance(self.patch_size, int) and self.patch_size >= 1):
            raise ValueError(f"patch_size must be a positive integer (pixels), got {self.patch_size!r}")
        if not (isinstance(self.steps, int) and self.steps >= 1):
            raise ValueError(f"steps must be a positive integer, got {self.steps!r}")
        if self.perturbation not in ("uniform", "blur", "constant"):
            raise ValueError(f"perturbation must be uniform, blur or constant, got {self.perturbation!r}")
        if not self.low < self.high:
            raise ValueError(f"low must be below high (the data range), got low={self.low}, high={self.high}")
        if not self.blur_sigma > 0:
            raise ValueError(f"blur_sigma must be positive (pixels), got {self.blur_sigma!r}")


@dataclass(frozen=True)
class Faithfulness:
    """Perturbation curves and AOPC of ``N`` samples.

    ``morf (N, L + 1)`` and ``random (N, L + 1)``: the explained class's score after ``k = 0..L`` destroyed
    patches, most-relevant-first and in a random order; ``aopc_morf``, ``aopc_random``, ``aopc_gain`` (N,):
    the areas over those curves and their difference, in the units of the score (e.g. logits).
    """

    morf: np.ndarray
    random: np.ndarray
    aopc_morf: np.ndarray
    aopc_random: np.ndarray
    aopc_gain: np.ndarray


def patch_grid(height: int, width: int, patch_size: int) -> np.ndarray:
    """``(H, W)`` int array: the index of the grid patch each pixel belongs to, row-major.

    The grid is centred: when a side is not a multiple of ``patch_size``, the patches at both edges are cut
    (the first by ``floor(missing / 2)`` pixels), the layout Quantus' RegionPerturbation uses.
    """
    rows = (np.arange(height) + _offset(height, patch_size)) // patch_size
    columns = (np.arange(width) + _offset(width, patch_size)) // patch_size
    per_row = int(columns[-1]) + 1
    return rows[:, None] * per_row + columns[None, :]


def _offset(side: int, patch_size: int) -> int:
    missing = -side % patch_size
    return missing // 2


def patch_order(relevance: np.ndarray, patch_size: int, order: Order, seed: int = 0) -> np.ndarray:
    """``(N, P)``: each sample's patches in the order they are destroyed.

    ``relevance (N, H, W)``; ``morf`` sorts patches by their summed relevance, highest first (ties by index);
    ``random`` is a permutation per sample drawn from ``seed``.
    """
    n, height, width = relevance.shape
    grid = patch_grid(height, width, patch_size)
    n_patches = int(grid.max()) + 1
    if order == "random":
        rng = np.random.default_rng(seed)
        return np.stack([rng.permutation(n_patches) for _ in range(n)]) if n else np.zeros((0, n_patches), int)
    if order != "morf":
        raise ValueError(f"order must be morf or random, got {order!r}")
    flat = (np.arange(n)[:, None] * n_patches + grid.ravel()[None]).ravel()
    sums = np.bincount(flat, weights=relevance.reshape(-1).astype(np.float64), minlength=n * n_patches)
    sums = sums.reshape(n, n_patches)
    return np.argsort(-sums, axis=1, kind="stable")


def perturbation_curves(score: Score, pixels: np.ndarray, relevance: np.ndarray,
                        params: RegionPerturbation, order: Order, *, batch_size: int = 64) -> np.ndarray:
    """``(N, L + 1)`` scores of the explained class as patches are destroyed in ``order``.

    ``score(batch, samples)`` maps a float32 ``(B, C, H, W)`` batch of pixels (in ``[low, high]``) and the
    ``(B,)`` indices of the samples they come from to the ``(B,)`` score of each sample's explained class
    (see :func:`class_score`); ``pixels (N, C, H, W)``; ``relevance (N, H, W)``
    (channels summed). Images are formed and scored ``batch_size`` at a time, all steps of a sample together.
    """
    pixels, relevance = _checked(pixels, relevance)
    n, _, height, width = pixels.shape
    grid = patch_grid(height, width, params.patch_size)
    steps = min(params.steps, int(grid.max()) + 1)
    ranks = _pixel_ranks(patch_order(relevance, params.patch_size, order, params.seed), grid)  # (N, H, W)
    replacement = _replacement(pixels, params)
    out = np.empty(n * (steps + 1), np.float64)
    done = 0
    with torch.no_grad():
        for batch, samples in _step_batches(pixels, replacement, ranks, steps, batch_size):
            values = score(batch, samples)
            out[done : done + len(batch)] = values.detach().double().cpu().numpy()
            done += len(batch)
    return out.reshape(n, steps + 1)


def aopc(curves: np.ndarray) -> np.ndarray:
    """``(N,)`` area over each perturbation curve ``(N, L + 1)``: the mean drop from the unperturbed score."""
    return (curves[:, :1] - curves).mean(1)


def faithfulness(score: Score, pixels: np.ndarray, relevance: np.ndarray,
                 params: RegionPerturbation | None = None, *, batch_size: int = 64) -> Faithfulness:
    """MoRF and random perturbation curves of ``N`` samples and their AOPC (see :func:`perturbation_curves`)."""
    params = params or RegionPerturbation()
    morf = perturbation_curves(score, pixels, relevance, params, "morf", batch_size=batch_size)
    random = perturbation_curves(score, pixels, relevance, params, "random", batch_size=batch_size)
    return Faithfulness(morf=morf, random=random, aopc_morf=aopc(morf), aopc_random=aopc(random),
                        aopc_gain=aopc(morf) - aopc(random))


def class_score(model: torch.nn.Module, targets: np.ndarray,
                to_input: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Score:
    """A ``score`` for :func:`perturbation_curves`: the logit of each sample's class in ``targets (N,)``.

    ``to_input`` turns pixels into the model's input (e.g. the normalisation); default: the pixels as they are.
    """
    wanted = torch.as_tensor(np.asarray(targets, dtype=np.int64))

    def score(batch: torch.Tensor, samples: np.ndarray) -> torch.Tensor:
        device = next(model.parameters()).device
        x = batch.to(device)
        logits = model(to_input(x) if to_input is not None else x)
        return logits.gather(1, wanted[samples].to(device)[:, None])[:, 0]

    return score


def _pixel_ranks(order: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """(N, H, W): the step at which each pixel's patch is destroyed."""
    rank_of_patch = np.empty_like(order)
    np.put_along_axis(rank_of_patch, order, np.arange(order.shape[1])[None].repeat(len(order), 0), axis=1)
    return rank_of_patch[:, grid]


def _replacement(pixels: np.ndarray, params: RegionPerturbation) -> np.ndarray:
    if params.perturbation == "constant":
        return np.full_like(pixels, params.low)
    if params.perturbation == "uniform":
        rng = np.random.default_rng(params.seed)
        return rng.uniform(params.low, params.high, pixels.shape).astype(np.float32)
    return _gaussian_blur(pixels, params.blur_sigma)


def _gaussian_blur(pixels: np.ndarray, sigma: float) -> np.ndarray:
    radius = max(1, int(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel /= kernel.sum()
    x = torch.from_numpy(pixels)
    channels = x.shape[1]
    # edge padding keeps the image's own colours at the borders instead of darkening them
    x = torch.nn.functional.pad(x, (radius, radius, radius, radius), mode="replicate")
    x = torch.nn.functional.conv2d(x, kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1), groups=channels)
    x = torch.nn.functional.conv2d(x, kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1), groups=channels)
    return x.numpy()


def _step_batches(pixels: np.ndarray, replacement: np.ndarray, ranks: np.ndarray, steps: int,
                  batch_size: int) -> Iterator[tuple[torch.Tensor, np.ndarray]]:
    """Images ``x^k`` for every sample and k = 0..steps, sample-major, ``batch_size`` at a time."""
    total = len(pixels) * (steps + 1)
    for start in range(0, total, batch_size):
        flat = np.arange(start, min(start + batch_size, total))
        sample, step = flat // (steps + 1), flat % (steps + 1)
        destroyed = ranks[sample] < step[:, None, None]  # (B, H, W)
        images = np.where(destroyed[:, None], replacement[sample], pixels[sample])
        yield torch.from_numpy(images.astype(np.float32, copy=False)), sample


def _checked(pixels: np.ndarray, relevance: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pixels = np.asarray(pixels, dtype=np.float32)
    relevance = np.asarray(relevance)
    if pixels.ndim != 4:
        raise ValueError(f"pixels must be (N, C, H, W), got shape {pixels.shape}")
    if relevance.shape != (pixels.shape[0], *pixels.shape[2:]):
        raise ValueError(f"relevance must be (N, H, W) = {(pixels.shape[0], *pixels.shape[2:])} (channels summed), "
                         f"got shape {relevance.shape}")
    if not np.isfinite(relevance).all():
        raise ValueError("relevance must be finite (no NaN or inf) to order patches by it")
    return pixels, relevance
