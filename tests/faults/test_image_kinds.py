"""Every kind of image file decodes to the intensities it holds, or is skipped with a reason; the geometry
(resize, resize-shorter-side + center-crop) matches torchvision's semantics on the same PIL image.

Each image is made here with Pillow. The geometry reference below is written from torchvision's documented
behaviour (``Resize(int)``: shorter side to the size, longer side ``int(size * long / short)``;
``CenterCrop``: offsets ``int(round((side - crop) / 2))``, zero padding when the crop is larger), with numpy
slicing and padding, independently of spray's implementation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from spray.config import ImageConfig
from spray.data import Sample, load_pixels, read_pixels
from spray.errors import DataError


def _gradient(height: int = 12, width: int = 20) -> np.ndarray:
    """(H, W) float64 intensities from 0 to 1 along the rows."""
    return np.linspace(0.0, 1.0, height * width).reshape(height, width)


def _decoded(path: Path, mode: str = "L", size: tuple[int, int] = (12, 20), **image) -> np.ndarray:
    return read_pixels(path, ImageConfig(mode=mode, size=size, **image))


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_a_16_bit_greyscale_image_is_scaled_by_65535(tmp_path, suffix):
    values = np.round(_gradient() * 65535).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / f"deep{suffix}")
    pixels = _decoded(tmp_path / f"deep{suffix}")
    np.testing.assert_allclose(pixels[..., 0], values / 65535.0, atol=1e-6)
    rgb = _decoded(tmp_path / f"deep{suffix}", mode="RGB")
    assert rgb.shape == (12, 20, 3) and np.array_equal(rgb[..., 0], rgb[..., 2])


def test_a_float_tiff_in_the_unit_range_keeps_its_values(tmp_path):
    Image.fromarray(_gradient().astype(np.float32)).save(tmp_path / "float.tif")
    np.testing.assert_allclose(_decoded(tmp_path / "float.tif")[..., 0], _gradient(), atol=1e-6)


@pytest.mark.parametrize("kind", ["float beyond [0, 1]", "float with NaN", "signed 32-bit"])
def test_an_image_of_unknown_scale_is_skipped_with_a_reason(tmp_path, kind):
    if kind == "float beyond [0, 1]":
        Image.fromarray((_gradient() * 4000).astype(np.float32)).save(tmp_path / "odd.tif")
    elif kind == "float with NaN":
        values = _gradient().astype(np.float32)
        values[3, 3] = np.nan
        Image.fromarray(values).save(tmp_path / "odd.tif")
    else:
        Image.fromarray((_gradient() * 1000).astype(np.int32)).save(tmp_path / "odd.tif")
    with pytest.raises(DataError, match=r"odd\.tif: .*(float image|signed)"):
        _decoded(tmp_path / "odd.tif")
    _pixels, ok, failed = load_pixels([Sample("odd.tif", tmp_path / "odd.tif", 0)], ImageConfig(mode="L", size=(12, 20)))
    assert ok == [] and failed[0][0] == "odd.tif"
    assert "will not guess" in failed[0][1] or "expected unsigned intensities" in failed[0][1]


def test_a_palette_image_decodes_to_its_colours(tmp_path):
    colours = np.array([[255, 0, 0], [0, 128, 255], [10, 200, 30]], dtype=np.uint8)
    indices = np.arange(12 * 20).reshape(12, 20) % 3
    palette = Image.fromarray(indices.astype(np.uint8), mode="P")
    palette.putpalette(colours.ravel().tolist())
    palette.save(tmp_path / "palette.png")
    np.testing.assert_allclose(_decoded(tmp_path / "palette.png", mode="RGB"), colours[indices] / 255.0, atol=1e-6)


def test_a_cmyk_image_decodes_to_rgb(tmp_path):
    cmyk = np.zeros((12, 20, 4), dtype=np.uint8)
    cmyk[:, 10:, 0] = 255  # full cyan on the right half: no red there
    Image.fromarray(cmyk, mode="CMYK").save(tmp_path / "cmyk.tif")
    pixels = _decoded(tmp_path / "cmyk.tif", mode="RGB")
    np.testing.assert_allclose(pixels[:, :10], 1.0)
    np.testing.assert_allclose(pixels[:, 10:], np.broadcast_to([0.0, 1.0, 1.0], (12, 10, 3)))


def test_a_greyscale_image_with_alpha_keeps_its_grey_values(tmp_path):
    grey = np.round(_gradient() * 255).astype(np.uint8)
    alpha = np.full_like(grey, 40)
    Image.fromarray(np.stack([grey, alpha], axis=2), mode="LA").save(tmp_path / "la.png")
    np.testing.assert_allclose(_decoded(tmp_path / "la.png")[..., 0], grey / 255.0, atol=1e-6)


def test_a_mode_without_a_conversion_is_skipped_with_a_reason(tmp_path):
    Image.new("LAB", (20, 12), (50, 10, 10)).save(tmp_path / "lab.tif")
    with pytest.raises(DataError, match=r"lab\.tif: cannot decode image: conversion from LAB"):
        _decoded(tmp_path / "lab.tif")


def test_exif_orientation_is_applied_only_when_asked(tmp_path):
    stored = np.zeros((12, 20), dtype=np.uint8)
    stored[0, 0] = 255  # a bright top-left corner of the stored pixels
    picture = Image.fromarray(stored)
    exif = picture.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    picture.save(tmp_path / "rotated.png", exif=exif)
    as_stored = _decoded(tmp_path / "rotated.png")
    assert as_stored[0, 0, 0] == 1.0
    upright = _decoded(tmp_path / "rotated.png", size=(20, 12), exif_orientation=True)
    assert upright.shape == (20, 12, 1) and upright[0, -1, 0] == 1.0  # the corner is now top-right


# --- geometry --------------------------------------------------------------------------------------------


def _reference(picture: Image.Image, shorter: int, crop: tuple[int, int], resample: int) -> np.ndarray:
    """torchvision's Resize(shorter) + CenterCrop(crop) on a PIL image, written with numpy."""
    w, h = picture.size
    if w <= h:
        size = (shorter, int(shorter * h / w))
    else:
        size = (int(shorter * w / h), shorter)
    array = np.asarray(picture.resize(size, resample))
    crop_h, crop_w = crop
    pad_h, pad_w = max(crop_h - array.shape[0], 0), max(crop_w - array.shape[1], 0)
    if pad_h or pad_w:
        spec = [(pad_h // 2, (pad_h + 1) // 2), (pad_w // 2, (pad_w + 1) // 2)] + [(0, 0)] * (array.ndim - 2)
        array = np.pad(array, spec)
    top = round((array.shape[0] - crop_h) / 2.0)
    left = round((array.shape[1] - crop_w) / 2.0)
    return array[top : top + crop_h, left : left + crop_w]


@pytest.mark.parametrize("interpolation", ["nearest", "bilinear", "bicubic", "lanczos", "box", "hamming"])
@pytest.mark.parametrize("shape, shorter, crop", [
    ((37, 23), 16, (12, 14)),  # portrait, odd offsets
    ((23, 37), 16, (16, 15)),  # landscape, crop as tall as the short side
    ((30, 30), 10, (10, 10)),  # square, crop equals the resize
    ((20, 31), 8, (11, 13)),   # crop larger than the resized image: zero padding
])
def test_shorter_side_and_center_crop_match_torchvision(tmp_path, interpolation, shape, shorter, crop):
    rng = np.random.default_rng(0)
    original = Image.fromarray(rng.integers(0, 256, size=(*shape, 3), dtype=np.uint8))
    original.save(tmp_path / "photo.png")
    expected = _reference(original, shorter, crop, getattr(Image.Resampling, interpolation.upper()))
    pixels = _decoded(tmp_path / "photo.png", mode="RGB", size=crop, shorter_side=shorter, interpolation=interpolation)
    np.testing.assert_array_equal(np.round(pixels * 255).astype(np.uint8), expected)


def test_plain_resize_uses_the_named_interpolation(tmp_path):
    rng = np.random.default_rng(1)
    original = Image.fromarray(rng.integers(0, 256, size=(25, 19), dtype=np.uint8))
    original.save(tmp_path / "grey.png")
    for interpolation in ("nearest", "bicubic"):
        expected = np.asarray(original.resize((8, 10), getattr(Image.Resampling, interpolation.upper())))
        pixels = _decoded(tmp_path / "grey.png", size=(10, 8), interpolation=interpolation)
        np.testing.assert_array_equal(np.round(pixels[..., 0] * 255).astype(np.uint8), expected)


def test_large_images_decode_to_the_same_pixels_in_the_dedicated_thread(tmp_path, monkeypatch):
    import spray.data

    rng = np.random.default_rng(2)
    samples = []
    for number in range(4):
        Image.fromarray(rng.integers(0, 256, size=(40, 50, 3), dtype=np.uint8)).save(tmp_path / f"{number}.png")
        samples.append(Sample(f"{number}.png", tmp_path / f"{number}.png", 0))
    image = ImageConfig(mode="RGB", size=(16, 16), shorter_side=20)
    small = [batch.pixels for batch in spray.data.iter_pixel_batches(samples, image, 2, workers=2)]
    monkeypatch.setattr(spray.data, "LARGE_IMAGE_PIXELS", 100)  # every image counts as large
    large = [batch.pixels for batch in spray.data.iter_pixel_batches(samples, image, 2, workers=2)]
    np.testing.assert_array_equal(np.concatenate(small), np.concatenate(large))
