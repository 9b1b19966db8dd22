"""Heatmap and image tiles as inline PNG data URIs, drawn with numpy and Pillow.

A report holds hundreds of small tiles (10 classes x 10 clusters x 6 prototypes x 2), far too many for a
matplotlib figure each, so tiles are coloured with matplotlib's colormaps but composed in numpy. Signed
relevance uses a diverging colormap centred on zero with symmetric limits (each map scaled to its own
max |relevance|): red is evidence for the audited class, blue evidence against it, white none. Tiles are
kept small (grayscale or 256-colour palette PNG) so that the self-contained HTML stays a few megabytes.
"""

from __future__ import annotations

import base64
import io

import numpy as np
from matplotlib import colormaps
from PIL import Image

HEATMAP_CMAP = "bwr"
OUTLINE_RGB = (17, 17, 17)
PALETTE_COLOURS = 128
# zlib level of the tiles' PNGs: zlib's default; level 9 (Pillow's optimize=True) costs half as much time again
# for 0.1 % fewer bytes (benchmarks/report_scale.py profiles a page; docs/benchmarks.md, "Constants").
PNG_COMPRESS_LEVEL = 6
# How faded the photo is under the heatmap overlay: keeps the image legible while the colour carries relevance.
_OVERLAY_BASE_LOW, _OVERLAY_BASE_HIGH = 0.35, 0.95


def png_data_uri(pixels: np.ndarray) -> str:
    """Encode a uint8 ``(H, W)`` or ``(H, W, 3)`` array as a ``data:image/png;base64,...`` URI.

    Gray images (all channels equal) are stored with one channel and colour ones as a 128-colour palette:
    a third of the bytes or less, without visible loss at tile size (fewer colours than 256 also save bytes
    on photo-like tiles; page sizes: benchmarks/report_scale.py).
    """
    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    if pixels.ndim == 3 and np.array_equal(pixels[:, :, 0], pixels[:, :, 1]) and np.array_equal(
        pixels[:, :, 0], pixels[:, :, 2]
    ):
        pixels = pixels[:, :, 0]
    image = Image.fromarray(pixels)
    if image.mode == "RGB":
        # No dithering: it adds noise that PNG cannot compress.
        image = image.quantize(colors=PALETTE_COLOURS, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def symmetric_limit(heatmap: np.ndarray) -> float:
    """Max |relevance| over the finite entries, or 1 for an all-zero map (so that it renders white)."""
    values = np.abs(np.asarray(heatmap, dtype=np.float64))
    values = values[np.isfinite(values)]
    limit = float(values.max()) if values.size else 0.0
    return limit if limit > 0 else 1.0


def heatmap_rgb(heatmap: np.ndarray, limit: float | None = None) -> np.ndarray:
    """``(h, w)`` signed relevance -> ``(h, w, 3)`` uint8 in the diverging colormap, zero at white."""
    values = np.nan_to_num(np.asarray(heatmap, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    limit = symmetric_limit(values) if limit is None else limit
    normalised = np.clip(values / (2.0 * limit) + 0.5, 0.0, 1.0)
    return (colormaps[HEATMAP_CMAP](normalised)[..., :3] * 255.0 + 0.5).astype(np.uint8)


def resize_float(values: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize a float map by area averaging (downscaling) or nearest neighbour (upscaling)."""
    values = np.asarray(values, dtype=np.float32)
    if values.shape == (height, width):
        return values
    upscaling = height >= values.shape[0] and width >= values.shape[1]
    resample = Image.Resampling.NEAREST if upscaling else Image.Resampling.BOX
    image = Image.fromarray(np.ascontiguousarray(values, dtype=np.float32))
    return np.asarray(image.resize((width, height), resample), dtype=np.float32)


def resize_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize a boolean mask with nearest neighbour, so that its cells stay crisp."""
    image = Image.fromarray(np.asarray(mask, dtype=np.uint8) * 255)
    return np.asarray(image.resize((width, height), Image.Resampling.NEAREST)) > 127


def mask_outline(mask: np.ndarray, thickness: int = 1) -> np.ndarray:
    """The pixels just outside a boolean mask, ``thickness`` pixels wide (clipped at the image edge).

    Drawn outside rather than inside so that a small region (a watermark of a few pixels) stays visible
    within its frame instead of being covered by it.
    """
    inside = np.asarray(mask, dtype=bool)
    grown = inside
    for _ in range(max(1, thickness)):
        padded = np.pad(grown, 1, constant_values=False)
        grown = (
            padded[1:-1, 1:-1] | padded[:-2, 1:-1] | padded[2:, 1:-1] | padded[1:-1, :-2] | padded[1:-1, 2:]
            | padded[:-2, :-2] | padded[:-2, 2:] | padded[2:, :-2] | padded[2:, 2:]
        )
    return grown & ~inside


def fit_size(height: int, width: int, max_side: int) -> tuple[int, int]:
    """``(height, width)`` shrunk to fit ``max_side`` (never enlarged: the browser upscales crisply)."""
    scale = min(1.0, max_side / max(height, width, 1))
    return max(1, round(height * scale)), max(1, round(width * scale))


def map_tile(heatmap: np.ndarray, region: np.ndarray | None = None, target: int = 160) -> str:
    """A preprocessed mean relevance map, enlarged to about ``target`` pixels, its ``region`` outlined."""
    values = np.asarray(heatmap, dtype=np.float64)
    if values.ndim != 2 or values.size == 0:
        values = np.zeros((1, 1))
    factor = max(1, target // max(values.shape))
    rgb = heatmap_rgb(values)
    rgb = np.repeat(np.repeat(rgb, factor, axis=0), factor, axis=1)
    if region is not None and np.asarray(region).shape == values.shape and np.any(region):
        big = np.repeat(np.repeat(np.asarray(region, dtype=bool), factor, axis=0), factor, axis=1)
        rgb[mask_outline(big, thickness=max(1, factor // 3))] = OUTLINE_RGB
    return png_data_uri(rgb)


def to_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Accept ``(H, W)``, ``(H, W, 1)`` or ``(H, W, 3)`` uint8 or [0, 1] float pixels; return RGB uint8."""
    pixels = np.asarray(image)
    if pixels.dtype != np.uint8:
        pixels = (np.clip(np.nan_to_num(pixels.astype(np.float64)), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if pixels.shape[2] == 1:
        pixels = np.repeat(pixels, 3, axis=2)
    return pixels[:, :, :3]


def shrink(image: np.ndarray, max_side: int) -> np.ndarray:
    """RGB uint8 pixels of ``image`` shrunk (Lanczos) to fit ``max_side``; never enlarged."""
    pixels = to_rgb_uint8(image)
    height, width = fit_size(pixels.shape[0], pixels.shape[1], max_side)
    if (height, width) != pixels.shape[:2]:
        pixels = np.asarray(Image.fromarray(pixels).resize((width, height), Image.Resampling.LANCZOS))
    return pixels


def image_tile(image: np.ndarray, max_side: int = 72) -> str:
    """A prototype image as the model saw it, shrunk to fit ``max_side``."""
    return png_data_uri(shrink(image, max_side))


def overlay_tile(
    image: np.ndarray, heatmap: np.ndarray, region: np.ndarray | None = None, max_side: int = 72
) -> str:
    """The prototype's input relevance over its faded grayscale image, with the cluster's region outlined.

    Each pixel blends the image with the heatmap colour in proportion to |relevance| / max |relevance|, so
    irrelevant pixels show the image and relevant ones the colour.
    """
    pixels = to_rgb_uint8(image)
    outlined = region is not None and np.ndim(region) == 2 and bool(np.any(region))
    height, width = fit_size(pixels.shape[0], pixels.shape[1], max_side)
    if outlined and max(pixels.shape[:2]) < max_side:
        # A small image (32 x 32 digits) is enlarged here rather than by the browser, so that the outline
        # is one thin line around the region instead of a whole image pixel that hides a small artifact.
        scale = max_side / max(pixels.shape[:2])
        height, width = round(pixels.shape[0] * scale), round(pixels.shape[1] * scale)
    enlarging = height > pixels.shape[0]
    resample = Image.Resampling.NEAREST if enlarging else Image.Resampling.BOX
    gray = np.asarray(Image.fromarray(pixels).convert("L").resize((width, height), resample))
    base = _OVERLAY_BASE_LOW + (_OVERLAY_BASE_HIGH - _OVERLAY_BASE_LOW) * (gray.astype(np.float64) / 255.0)
    values = resize_float(np.nan_to_num(np.asarray(heatmap, dtype=np.float64)), height, width)
    limit = symmetric_limit(values)
    colour = heatmap_rgb(values, limit).astype(np.float64) / 255.0
    alpha = np.clip(np.abs(values) / limit, 0.0, 1.0)[..., None] ** 0.75
    blended = (1.0 - alpha) * base[..., None] + alpha * colour
    rgb = (blended * 255.0 + 0.5).astype(np.uint8)
    if outlined and region is not None:
        rgb[mask_outline(resize_mask(region, height, width), thickness=1)] = OUTLINE_RGB
    return png_data_uri(rgb)


def colorbar_tile(width: int = 160, height: int = 10) -> str:
    """The legend of the heatmap colormap, from -max (blue) through 0 (white) to +max (red)."""
    ramp = np.tile(np.linspace(-1.0, 1.0, width), (height, 1))
    return png_data_uri(heatmap_rgb(ramp, 1.0))
