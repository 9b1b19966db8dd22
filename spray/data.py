"""Samples from a manifest CSV or an ImageFolder tree, image decoding, and content digests.

Two layouts are read (``DataConfig`` holds exactly one of them):

* **manifest**: a CSV file with the columns ``path`` and ``label`` (other columns are ignored). Paths are
  relative to the CSV's folder (absolute paths are kept). A sample's id is its path exactly as written.
  Labels are either all integers, taken as indices of the model's outputs, or strings, mapped through
  ``DataConfig.class_names`` when given and otherwise numbered in sorted order of the unique strings.
* **root**: one sub-folder per class, like torchvision's ``ImageFolder``: the sorted folder names are the
  class indices unless ``class_names`` is given, in which case every folder must be one of those names and
  takes its index there. Images are found recursively inside each class folder by extension. A sample's id
  is its path relative to the root with POSIX separators.

Files that are listed but absent are not fatal: they are kept in ``Dataset.missing`` with the reason. Images
that exist but cannot be decoded are found when pixels are loaded (``load_pixels``) and reported the same way.

Images held in memory (``spray.audit``) are registered by ``in_memory_images`` under virtual paths
``<in-memory>/<digest>``: decoding returns their pixels and digesting their content digest.

Pixels are ``(H, W, C)`` float32 in [0, 1] ("pixel space", where interventions such as masking work); the
model sees ``to_model_input(pixels, image)``, ``(N, C, H, W)`` normalised with the config's mean and std.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import os
import sqlite3
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from spray.config import INTERPOLATIONS, DataConfig, ImageConfig
from spray.errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
_DIGEST_CHUNK = 1 << 20
_SHOWN = 10  # how many offending items an error message lists before summarising the rest


@dataclass(frozen=True)
class Sample:
    """One image: its id as the user wrote it, where it is, and the model output index of its class."""

    id: str
    path: Path
    label: int


@dataclass
class Dataset:
    """The samples of a manifest or folder, the class names by index, and the files that were absent."""

    samples: list[Sample]
    class_names: list[str]
    source: Path
    missing: list[tuple[str, str]] = field(default_factory=list)
    # how labels became output indices: "index" (integer labels), "names" (string labels numbered in sorted
    # order), "folders" (sorted class folders) or "class_names" (mapped through data.class_names)
    label_source: str = "index"

    def by_class(self) -> dict[int, list[Sample]]:
        """Samples grouped by label, in ascending label order; classes without samples are absent."""
        groups: dict[int, list[Sample]] = {}
        for sample in self.samples:
            groups.setdefault(sample.label, []).append(sample)
        return {label: groups[label] for label in sorted(groups)}

    def class_index(self, key: int | str) -> int:
        """The output index of a class given by index or by name.

        A string is looked up among the class names first; a string of digits that is not a name is taken
        as an index (so ``--classes 3`` works on the command line). Raises DataError listing the classes.
        """
        if isinstance(key, str) and key in self.class_names:
            return self.class_names.index(key)
        index: int | None = None
        if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
            index = int(key)
        elif isinstance(key, str) and key.strip().isdigit():
            index = int(key.strip())
        if index is not None and 0 <= index < len(self.class_names):
            return index
        raise DataError(
            f"unknown class {key!r} in {self.source}; expected an index 0..{len(self.class_names) - 1} "
            f"or one of the class names: {_listing(self.class_names)}"
        )


def load_dataset(config: DataConfig) -> Dataset:
    """Read the samples of ``config.manifest`` or ``config.root``.

    Raises DataError naming the file (and for a manifest the row and column) when the source cannot be used,
    or when none of its images exists. Absent images are listed in ``Dataset.missing``, not raised.
    """
    if config.manifest is not None:
        dataset = _load_manifest(Path(config.manifest), config.class_names)
    elif config.root is not None:
        dataset = _load_folder(Path(config.root), config.class_names)
    else:  # DataConfig validation makes this unreachable; guard against a hand-built config
        raise DataError("give exactly one of data.manifest (a CSV) or data.root (one folder per class)")
    if not dataset.samples:
        shown = "; ".join(f"{sample_id}: {reason}" for sample_id, reason in dataset.missing[:_SHOWN])
        raise DataError(
            f"no image of {dataset.source} exists ({len(dataset.missing)} listed, all missing): {shown}"
        )
    return dataset


def _read_manifest_rows(manifest: Path) -> tuple[list[str] | None, list[tuple[int, list[str]]]]:
    """The manifest's header row (None when the file is empty) and its rows with their line numbers."""
    try:
        # utf-8-sig: spreadsheets often write a byte order mark, which would otherwise glue onto "path"
        with manifest.open("r", encoding="utf-8-sig", newline="") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            return header, [(reader.line_num, row) for row in reader]
    except FileNotFoundError:
        raise DataError(f"manifest not found: {manifest}") from None
    except IsADirectoryError:
        raise DataError(f"manifest {manifest} is a folder; expected a CSV file (or use data.root)") from None
    except UnicodeDecodeError as error:
        raise DataError(f"manifest {manifest} is not UTF-8 text: {error.reason} at byte {error.start}") from None
    except csv.Error as error:
        raise DataError(f"manifest {manifest} is not a valid CSV file: {error}") from None
    except OSError as error:
        raise DataError(f"cannot read manifest {manifest}: {error.strerror}") from None


def _manifest_entries(manifest: Path, rows: list[tuple[int, list[str]]], path_col: int,
                      label_col: int) -> list[tuple[int, str, str]]:
    """(line, path as written, label as written) of each row; DataError naming the row for an empty cell or
    a path listed twice."""
    entries: list[tuple[int, str, str]] = []
    seen: dict[str, int] = {}
    for line, row in rows:
        cells = [cell.strip() for cell in row]
        path_cell = cells[path_col] if path_col < len(cells) else ""
        label_cell = cells[label_col] if label_col < len(cells) else ""
        if not path_cell:
            raise DataError(f"manifest {manifest}, row {line}, column 'path': empty; expected an image path")
        if not label_cell:
            raise DataError(f"manifest {manifest}, row {line}, column 'label': empty; expected a class")
        if path_cell in seen:
            # ids must be unique: they name samples in the report and in cluster member lists
            raise DataError(
                f"manifest {manifest}, row {line}, column 'path': {path_cell!r} is already listed at row "
                f"{seen[path_cell]}; expected each image once"
            )
        seen[path_cell] = line
        entries.append((line, path_cell, label_cell))
    return entries


def _load_manifest(manifest: Path, class_names: list[str] | None) -> Dataset:
    manifest = manifest.resolve()
    header, rows = _read_manifest_rows(manifest)
    if header is None or not any(cell.strip() for cell in header):
        raise DataError(f"manifest {manifest} is empty; expected a header row 'path,label' and one row per image")
    columns = [cell.strip() for cell in header]
    absent = [name for name in ("path", "label") if name not in columns]
    if absent:
        raise DataError(
            f"manifest {manifest} has no {' or '.join(repr(name) for name in absent)} column; "
            f"expected columns path,label, found: {', '.join(repr(c) for c in columns)}"
        )
    rows = [(line, row) for line, row in rows if any(cell.strip() for cell in row)]  # blank lines are not rows
    if not rows:
        raise DataError(f"manifest {manifest} has a header but no rows; expected one row per image")
    entries = _manifest_entries(manifest, rows, columns.index("path"), columns.index("label"))
    labels, names, label_source = _map_labels(manifest, entries, class_names)
    base = manifest.parent
    samples: list[Sample] = []
    missing: list[tuple[str, str]] = []
    for (line, path_cell, _), label in zip(entries, labels):
        path = (base / Path(path_cell).expanduser()).resolve()
        problem = _file_problem(path)
        if problem is None:
            samples.append(Sample(id=path_cell, path=path, label=label))
        else:
            missing.append((path_cell, f"{problem} (manifest row {line})"))
    return Dataset(samples=samples, class_names=names, source=manifest, missing=missing, label_source=label_source)


def _map_labels(
    manifest: Path, entries: list[tuple[int, str, str]], class_names: list[str] | None
) -> tuple[list[int], list[str], str]:
    """Labels as model output indices, the class names by index, and how the labels were mapped."""
    parsed = [_parse_int(label) for _, _, label in entries]
    as_ints = [value for value in parsed if value is not None]
    if len(as_ints) == len(parsed):
        for (line, _, text), value in zip(entries, as_ints):
            if value < 0:
                raise DataError(
                    f"manifest {manifest}, row {line}, column 'label': {text} is negative; "
                    "expected an index of the model's outputs (0, 1, ...) or a class name"
                )
            if class_names is not None and value >= len(class_names):
                raise DataError(
                    f"manifest {manifest}, row {line}, column 'label': index {value} is beyond the "
                    f"{len(class_names)} data.class_names ({_listing(class_names)})"
                )
        indices = [int(value) for value in as_ints]
        names = list(class_names) if class_names is not None else [str(i) for i in range(max(indices) + 1)]
        return indices, names, "class_names" if class_names is not None else "index"

    # string labels: one non-integer label makes every label a name, so "3" and "cat" are both names
    if class_names is None:
        names = sorted({label for _, _, label in entries})
    else:
        names = list(class_names)
        for line, _, label in entries:
            if label not in names:
                raise DataError(
                    f"manifest {manifest}, row {line}, column 'label': {label!r} is not in data.class_names; "
                    f"expected one of: {_listing(names)}"
                )
    lookup = {name: index for index, name in enumerate(names)}
    return [lookup[label] for _, _, label in entries], names, "class_names" if class_names is not None else "names"


def _parse_int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def _load_folder(root: Path, class_names: list[str] | None) -> Dataset:
    root = root.resolve()
    if not root.exists():
        raise DataError(f"data root not found: {root}")
    if not root.is_dir():
        raise DataError(f"data root {root} is not a folder; expected one sub-folder per class (or use data.manifest)")
    # hidden folders (.ipynb_checkpoints, .git) are never classes
    folders = sorted(entry.name for entry in root.iterdir() if entry.is_dir() and not entry.name.startswith("."))
    if not folders:
        raise DataError(f"data root {root} has no class folder; expected one sub-folder per class, e.g. {root}/cat/")
    if class_names is None:
        names = folders
    else:
        names = list(class_names)
        unknown = [name for name in folders if name not in names]
        if unknown:
            raise DataError(
                f"data root {root}: folder(s) {_listing(unknown)} are not in data.class_names; "
                f"expected the folder names to be among: {_listing(names)}"
            )
    samples: list[Sample] = []
    empty: list[str] = []
    for folder in folders:
        label = names.index(folder)
        files = [
            path
            for path in (root / folder).rglob("*")
            if path.suffix.lower() in IMAGE_EXTENSIONS
            and path.is_file()
            and not any(part.startswith(".") for part in path.relative_to(root).parts)
        ]
        if not files:
            empty.append(folder)
        for path in sorted(files, key=lambda p: p.relative_to(root).as_posix()):
            samples.append(Sample(id=path.relative_to(root).as_posix(), path=path, label=label))
    if empty and samples and class_names is None:
        # the folder still numbers the outputs, but a class without images usually means a folder left over
        # or misnamed; torchvision's ImageFolder refuses it too, so the numbering is never trusted blindly
        raise DataError(
            f"data root {root}: class folder(s) {_listing(empty)} contain no image (expected files ending in "
            f"{', '.join(IMAGE_EXTENSIONS)}); add its images, or delete the folder and give data.class_names "
            f"listing every model output in order, e.g. data.class_names: [{', '.join(folders)}]"
        )
    if not samples:
        raise DataError(
            f"data root {root} has class folders ({_listing(folders)}) but no images in them; "
            f"expected files ending in {', '.join(IMAGE_EXTENSIONS)}"
        )
    return Dataset(samples=samples, class_names=names, source=root, missing=[],
                   label_source="class_names" if class_names is not None else "folders")


def _file_problem(path: Path) -> str | None:
    if not path.exists():
        return f"file not found: {path}"
    if not path.is_file():
        return f"not a file: {path}"
    return None


class _DecodeProblem(Exception):
    """Why one image could not be read; the message is the reason without the file name."""


def read_pixels(path: Path, image: ImageConfig) -> np.ndarray:
    """Decode one image into ``(H, W, C)`` float32 in [0, 1], ``(H, W) = image.size``.

    Decoding: 8-bit images of any Pillow mode (palette, CMYK, LA, RGBA, ...) are converted to ``image.mode``
    with Pillow's ``convert``, as torchvision's loader does (alpha is dropped, not composited). 16-bit and
    32-bit integer greyscale images are scaled by their bit depth (a 16-bit PNG by 65535), float images must
    hold values in [0, 1]; a signed or out-of-range image is refused rather than guessed at. EXIF
    orientation is applied only with ``image.exif_orientation`` (torchvision does not apply it).

    Geometry (:func:`fit_image`): resize straight to ``image.size``, or with ``image.shorter_side`` resize
    the shorter side and center-crop, with the ``image.interpolation`` filter; matches torchvision's
    ``Resize`` / ``CenterCrop`` on the same PIL image.

    Raises DataError naming the file when it is missing or cannot be decoded (including a truncated file).
    """
    try:
        return _decode(Path(path), image)
    except _DecodeProblem as problem:
        raise DataError(f"{path}: {problem}") from None


# Images above this many pixels are decoded one at a time, all in one dedicated thread: a 12000 x 12000
# RGB photo takes about 550 MB to decode. Decoded one at a time in several loader threads, each thread's
# malloc arena would keep its own copy of that memory after it is freed (resident memory grows with the
# number of threads); in one thread it is reused. Pixels are unchanged (no reduced-resolution decoding).
LARGE_IMAGE_PIXELS = 16_000_000
_large_decoder: tuple[int, ThreadPoolExecutor] | None = None  # (process id, executor)
_large_decoder_lock = threading.Lock()


def _large_decoder_pool() -> ThreadPoolExecutor:
    """This process's one-thread executor for large images (made afresh in a forked child, whose copy of
    the parent's executor has no thread)."""
    global _large_decoder
    with _large_decoder_lock:
        if _large_decoder is None or _large_decoder[0] != os.getpid():
            _large_decoder = (os.getpid(), ThreadPoolExecutor(max_workers=1, thread_name_prefix="spray-large-decode"))
        return _large_decoder[1]


def _decode(path: Path, image: ImageConfig) -> np.ndarray:
    held = _held_pixels(path)
    if held is not None:
        if held.shape != (*image.size, image.channels):
            raise _DecodeProblem(f"in-memory image of shape {held.shape}; expected {(*image.size, image.channels)}")
        return held.copy()
    try:
        with Image.open(path) as opened:
            large = opened.width * opened.height > LARGE_IMAGE_PIXELS
            fitted = None if large else _decode_opened(opened, image)
        if fitted is None:
            fitted = _large_decoder_pool().submit(_decode_file, path, image).result()
    except FileNotFoundError:
        raise _DecodeProblem("file not found") from None
    except IsADirectoryError:
        raise _DecodeProblem("not a file") from None
    except UnidentifiedImageError:
        raise _DecodeProblem("cannot decode image: not a recognised image format") from None
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as error:
        # Pillow reports corrupt data as OSError ("image file is truncated", "broken data stream"),
        # SyntaxError (a broken PNG chunk) or ValueError (also a conversion Pillow does not know)
        raise _DecodeProblem(f"cannot decode image: {error}") from None
    if fitted.mode == "F":  # a high-depth greyscale image, already scaled to [0, 1]
        pixels = np.clip(np.asarray(fitted, dtype=np.float32), 0.0, 1.0)  # filters with negative lobes overshoot
        pixels = pixels[:, :, None] if image.mode == "L" else np.repeat(pixels[:, :, None], 3, axis=2)
        return np.ascontiguousarray(pixels)
    pixels = np.asarray(fitted, dtype=np.float32) / 255.0
    return pixels[:, :, None] if pixels.ndim == 2 else pixels


def _decode_file(path: Path, image: ImageConfig) -> Image.Image:
    with Image.open(path) as opened:
        return _decode_opened(opened, image)


def _decode_opened(opened: Image.Image, image: ImageConfig) -> Image.Image:
    # load() decodes everything now: a truncated or garbled file fails here, not later in convert.
    # This relies on PIL.ImageFile.LOAD_TRUNCATED_IMAGES being False (Pillow's default); spray never
    # sets it, because it would silently pad a truncated image with grey.
    opened.load()
    oriented = ImageOps.exif_transpose(opened) if image.exif_orientation else opened
    converted = _convert(oriented, image.mode)
    return fit_image(converted, image)


_INTEGER_MODES = {"I;16": 16, "I;16L": 16, "I;16B": 16, "I;16N": 16}


def _convert(opened: Image.Image, mode: str) -> Image.Image:
    """``opened`` in ``mode`` (8 bits per channel), or for a high-depth greyscale image a mode-F image of
    its intensities in [0, 1]. Raises _DecodeProblem for an image whose scale cannot be known."""
    if opened.mode in _INTEGER_MODES or opened.mode == "I":
        values = np.asarray(opened).astype(np.float64)
        bits = _INTEGER_MODES.get(opened.mode) or _bit_depth(opened)
        if _signed(opened) or (values.size and (values.min() < 0 or values.max() > 2**bits - 1)):
            raise _DecodeProblem(
                f"{bits}-bit signed or out-of-range integer image (values {values.min():g}..{values.max():g}); "
                "expected unsigned intensities"
            )
        return Image.fromarray((values / (2**bits - 1)).astype(np.float32), mode="F")
    if opened.mode == "F":
        values = np.asarray(opened, dtype=np.float32)
        if not np.isfinite(values).all() or (values.size and (values.min() < -1e-6 or values.max() > 1 + 1e-6)):
            raise _DecodeProblem(
                f"float image with values {np.nanmin(values):g}..{np.nanmax(values):g}; spray reads float images "
                "as intensities in [0, 1] and will not guess another scale"
            )
        return opened
    # fit_image always returns a new image, so the opened one is not copied when it has the mode already
    return opened if opened.mode == mode else opened.convert(mode)


def _bit_depth(opened: Image.Image) -> int:
    """Bits per sample of a mode-I image: the TIFF tag when there is one; a PNG holds at most 16."""
    tags = getattr(opened, "tag_v2", None)
    bits = tags.get(258) if tags is not None else None
    if isinstance(bits, tuple):
        bits = bits[0]
    return int(bits) if bits else 16


def _signed(opened: Image.Image) -> bool:
    tags = getattr(opened, "tag_v2", None)
    sample_format = tags.get(339) if tags is not None else None
    if isinstance(sample_format, tuple):
        sample_format = sample_format[0]
    return sample_format == 2  # TIFF SampleFormat 2: two's complement signed integer


_FILTERS = {name: getattr(Image.Resampling, name.upper()) for name in INTERPOLATIONS}


def fit_image(picture: Image.Image, image: ImageConfig) -> Image.Image:
    """Resize (and center-crop) a PIL image to ``image.size`` = [height, width].

    Without ``image.shorter_side``: one resize to the size. With it: torchvision's ``Resize(shorter_side)``
    (the shorter side becomes ``shorter_side``, the longer ``int(shorter_side * long / short)``) and then
    ``CenterCrop(size)`` (offsets ``round((side - crop) / 2)``; a crop larger than the image is padded with
    zeros, the extra pixel of an odd padding going right/bottom).
    """
    height, width = image.size
    resample = _FILTERS[image.interpolation]
    if image.shorter_side is None:
        return picture.resize((width, height), resample) if picture.size != (width, height) else picture.copy()
    w, h = picture.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = image.shorter_side, int(image.shorter_side * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    resized = picture.resize((new_w, new_h), resample) if (new_w, new_h) != (w, h) else picture.copy()
    return _center_crop(resized, height, width)


def _center_crop(picture: Image.Image, height: int, width: int) -> Image.Image:
    w, h = picture.size
    if width > w or height > h:
        padded = Image.new(picture.mode, (max(w, width), max(h, height)), 0)
        padded.paste(picture, ((width - w) // 2 if width > w else 0, (height - h) // 2 if height > h else 0))
        picture, (w, h) = padded, padded.size
    top, left = round((h - height) / 2.0), round((w - width) / 2.0)
    return picture.crop((left, top, left + width, top + height))


def load_pixels(
    samples: Sequence[Sample], image: ImageConfig
) -> tuple[np.ndarray, list[int], list[tuple[str, str]]]:
    """Decode many images; one bad image is reported, never raised.

    Returns ``(pixels, ok, failed)``: ``pixels`` is ``(n_ok, H, W, C)`` float32 in [0, 1] for the samples
    at positions ``ok`` of ``samples`` (in order), and ``failed`` lists ``(sample id, reason)`` for the rest.
    """
    height, width = image.size
    arrays: list[np.ndarray] = []
    ok: list[int] = []
    failed: list[tuple[str, str]] = []
    for position, sample in enumerate(samples):
        try:
            arrays.append(_decode(sample.path, image))
        except _DecodeProblem as problem:
            failed.append((sample.id, str(problem)))
        else:
            ok.append(position)
    if arrays:
        pixels = np.stack(arrays)
    else:
        pixels = np.zeros((0, height, width, image.channels), dtype=np.float32)
    return pixels, ok, failed


@dataclass
class PixelBatch:
    """One decoded batch of ``iter_pixel_batches``: ``pixels`` (n_ok, H, W, C) float32 in [0, 1] for the
    samples at positions ``ok`` of the whole sequence (ascending), ``failed`` (sample id, reason) for the
    batch's samples that could not be decoded."""

    pixels: np.ndarray
    ok: list[int]
    failed: list[tuple[str, str]]


def iter_pixel_batches(
    samples: Sequence[Sample], image: ImageConfig, batch_size: int, workers: int, prefetch: int = 2
) -> Iterator[PixelBatch]:
    """Decode ``samples`` batch by batch, in order, with ``workers`` decoding threads.

    At most ``prefetch`` batches are decoded ahead of the consumer, so memory holds ``prefetch + 1`` batches
    whatever the number of samples. Threads rather than processes: Pillow releases the GIL while it decodes
    and resizes, so threads decode in parallel, and they can be started inside Dask's worker processes,
    which are daemons and may not start processes of their own. ``workers=0`` decodes in the calling thread.
    """
    starts = range(0, len(samples), batch_size)
    if workers <= 0:
        for start in starts:
            yield _decode_batch(samples, start, batch_size, image)
        return
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="spray-decode")
    try:
        pending: deque[tuple[int, list[Future[Any]]]] = deque()
        for start in starts:
            # one task per image, so that one batch uses every thread
            pending.append((start, [pool.submit(_decode_one, samples[i], image)
                                    for i in range(start, min(start + batch_size, len(samples)))]))
            if len(pending) > prefetch:
                yield _collect(*pending.popleft(), samples, image)
        while pending:
            yield _collect(*pending.popleft(), samples, image)
    finally:
        # a consumer that stops early (an error downstream) does not wait for batches nobody will read
        pool.shutdown(wait=True, cancel_futures=True)


def _decode_one(sample: Sample, image: ImageConfig) -> np.ndarray | str:
    try:
        return _decode(sample.path, image)
    except _DecodeProblem as problem:
        return str(problem)


def _collect(start: int, futures: list[Future[Any]], samples: Sequence[Sample], image: ImageConfig) -> PixelBatch:
    return _assemble(start, [future.result() for future in futures], samples, image)


def _decode_batch(samples: Sequence[Sample], start: int, batch_size: int, image: ImageConfig) -> PixelBatch:
    decoded = [_decode_one(samples[i], image) for i in range(start, min(start + batch_size, len(samples)))]
    return _assemble(start, decoded, samples, image)


def _assemble(start: int, decoded: list[np.ndarray | str], samples: Sequence[Sample],
              image: ImageConfig) -> PixelBatch:
    arrays, ok, failed = [], [], []
    for offset, item in enumerate(decoded):
        if isinstance(item, str):
            failed.append((samples[start + offset].id, item))
        else:
            arrays.append(item)
            ok.append(start + offset)
    height, width = image.size
    pixels = np.stack(arrays) if arrays else np.zeros((0, height, width, image.channels), dtype=np.float32)
    return PixelBatch(pixels, ok, failed)


def to_model_input(pixels: np.ndarray, image: ImageConfig) -> torch.Tensor:
    """Pixels ``(N, H, W, C)`` in [0, 1] -> model input ``(N, C, H, W)`` float32, ``(pixels - mean) / std``.

    Mean and std are per channel (one value in the config is used for every channel).
    """
    pixels = np.asarray(pixels)
    if pixels.ndim != 4 or pixels.shape[-1] != image.channels:
        raise ValueError(
            f"expected pixels of shape (N, H, W, {image.channels}) for mode {image.mode}, got {pixels.shape}"
        )
    mean = np.asarray(image.per_channel("mean"), dtype=np.float32)
    std = np.asarray(image.per_channel("std"), dtype=np.float32)
    normalised = (pixels.astype(np.float32, copy=False) - mean) / std
    return torch.from_numpy(np.ascontiguousarray(normalised.transpose(0, 3, 1, 2)))


def file_digest(path: Path) -> str:
    """Content hash (blake2b, 32 hex digits) of a file's bytes, for cache keys. Raises DataError if unreadable.

    An in-memory image (``in_memory_images``) has the digest of its array (``array_digest``)."""
    if _held_pixels(path) is not None:
        return Path(path).name
    digest = hashlib.blake2b(digest_size=16)
    try:
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(_DIGEST_CHUNK), b""):
                digest.update(chunk)
    except FileNotFoundError:
        raise DataError(f"file not found: {path}") from None
    except OSError as error:
        raise DataError(f"cannot read {path}: {error.strerror}") from None
    return digest.hexdigest()


class DigestIndex:
    """File digests remembered by (path, size, modification time), so unchanged files are not re-read.

    Hashing every image on every run re-reads the whole dataset. Like git's index, a file whose size and
    modification time (in ns) are unchanged keeps the digest stored for it in a SQLite file; any write to the
    file changes its modification time and so its digest is computed afresh. ``DigestIndex(None)``
    remembers digests only in this process. Use from one thread.
    """

    def __init__(self, database: Path | None) -> None:
        self._memory: dict[tuple[str, int, int], str] = {}
        self._database = None
        if database is not None:
            try:
                Path(database).parent.mkdir(parents=True, exist_ok=True)
                self._database = sqlite3.connect(str(database), timeout=60)
                self._database.execute(
                    "CREATE TABLE IF NOT EXISTS digests "
                    "(path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, digest TEXT)"
                )
            except (OSError, sqlite3.Error):
                # A read-only or odd filesystem only costs re-reading the files; the digests stay correct.
                self._database = None

    def __call__(self, path: Path) -> str:
        if _held_pixels(path) is not None:
            return Path(path).name
        try:
            stat = os.stat(path)
        except FileNotFoundError:
            raise DataError(f"file not found: {path}") from None
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        if key in self._memory:
            return self._memory[key]
        row = None
        if self._database is not None:
            row = self._database.execute(
                "SELECT digest FROM digests WHERE path = ? AND size = ? AND mtime_ns = ?", key
            ).fetchone()
        digest = row[0] if row else file_digest(path)
        if row is None and self._database is not None:
            self._database.execute("INSERT OR REPLACE INTO digests VALUES (?, ?, ?, ?)", (*key, digest))
        self._memory[key] = digest
        return digest

    def close(self) -> None:
        if self._database is not None:
            self._database.commit()
            self._database.close()
            self._database = None


def dataset_token(samples: Sequence[Sample], digest: Callable[[Path], str] | None = None) -> str:
    """Hash of ``(id, label, file digest)`` of the given samples, in their order, for cache keys.

    Order matters because the cached intermediates are arrays in sample order. ``digest`` computes a file's
    digest (default: :func:`file_digest`; a :class:`DigestIndex` avoids re-reading unchanged files).
    """
    digest_of = digest or file_digest
    token = hashlib.blake2b(digest_size=16)
    for sample in samples:
        # separators that cannot occur in an id line keep ("a", 12) and ("a1", 2) apart
        token.update(f"{sample.id}\0{sample.label}\0{digest_of(sample.path)}\n".encode("utf-8", "surrogatepass"))
    return token.hexdigest()


def _listing(names: Sequence[str]) -> str:
    shown = ", ".join(repr(name) for name in names[:_SHOWN])
    more = len(names) - _SHOWN
    return shown + (f" and {more} more" if more > 0 else "")


# --- images held in memory (spray.audit) -------------------------------------------------------------------

# The folder of the virtual paths of in-memory images: ``<in-memory>/<digest>``. A relative path of this name
# is never resolved against a real folder, because only paths registered by ``in_memory_images`` are looked up.
MEMORY_FOLDER = "<in-memory>"
_HELD: dict[str, tuple[np.ndarray, int]] = {}  # digest -> ((H, W, C) float32 pixels, number of holders)
_HELD_LOCK = threading.Lock()


def array_digest(array: np.ndarray) -> str:
    """Content hash (blake2b, 32 hex digits) of an array's dtype, shape and bytes, for cache keys."""
    array = np.ascontiguousarray(array)
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{array.dtype.str}\0{array.shape}\0".encode())
    digest.update(array.data)
    return digest.hexdigest()


def memory_path(digest: str) -> Path:
    """The virtual path of the in-memory image with content digest ``digest``."""
    return Path(MEMORY_FOLDER) / digest


def _held_pixels(path: Path | str) -> np.ndarray | None:
    path = Path(path)
    if path.parent != Path(MEMORY_FOLDER):
        return None
    with _HELD_LOCK:
        held = _HELD.get(path.name)
    return None if held is None else held[0]


@contextlib.contextmanager
def in_memory_images(pixels: dict[str, np.ndarray]) -> Iterator[dict[str, Path]]:
    """Make images held in memory readable as samples while the block runs, in this process.

    ``pixels`` maps a content digest to ``(H, W, C)`` float32 pixels in [0, 1]; yields the virtual path of
    each (``memory_path``), for ``Sample.path``. Decoding (``read_pixels``, ``iter_pixel_batches``) returns
    the held pixels and digests (``dataset_token``) the given digest. Other processes do not see them: an
    audit of in-memory images runs its tasks in this process (threads or synchronous scheduler).
    """
    with _HELD_LOCK:
        for digest, array in pixels.items():
            held = _HELD.get(digest)
            _HELD[digest] = (array if held is None else held[0], 1 if held is None else held[1] + 1)
    try:
        yield {digest: memory_path(digest) for digest in pixels}
    finally:
        with _HELD_LOCK:
            for digest in pixels:
                array, holders = _HELD[digest]
                if holders > 1:
                    _HELD[digest] = (array, holders - 1)
                else:
                    del _HELD[digest]
