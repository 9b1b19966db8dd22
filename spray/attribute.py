"""Stage 1: logits and input relevance of the audited class for one shard of samples.

A shard is the unit of caching and of distribution: it is computed in batches of
``attribution.batch_size`` on the configured device and stored as one cache entry, its full-resolution
relevance in a chunked on-disk array written batch by batch (never the whole shard in memory). Images that
cannot be read, and samples whose relevance is not finite, are skipped with a reason instead of failing the
shard.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from dask.base import tokenize

from spray.cache import Entry, VerifiedArray, cached_stream, create_stored_array, entry_key
from spray.config import AttributionConfig, ImageConfig, LrpAttribution, ModelConfig
from spray.data import Sample, iter_pixel_batches, to_model_input
from spray.errors import ConfigError
from spray.lrp import conservation
from spray.lrp.methods import attributor_from_config
from spray.model import load_model

# What an attribute entry holds: 2 = relevance in a chunked zarr array beside the npz. Part of every key.
STORE_VERSION = 2

_prepared: dict[str, Any] = {}  # per process: the prepared engine of the last models seen, by content key
_prepared_lock = threading.Lock()


def resolve_device(device: str) -> torch.device:
    """'auto' picks CUDA when this process sees a GPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        from spray.errors import ModelError

        raise ModelError("attribution.device is 'cuda' but torch sees no CUDA device here; use 'auto' or 'cpu'")
    return torch.device(device)


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host batch ``x`` on ``device``. For CUDA through pinned (page-locked) memory with an asynchronous
    copy, so that the copy overlaps with the work already queued on the GPU; elsewhere an ordinary move."""
    if device.type == "cuda" and torch.cuda.is_available():
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)


def z_box_bounds(image: ImageConfig, attribution: AttributionConfig) -> tuple[list[float], list[float]]:
    """z^B bounds per channel: the normalised images of pixel values 0 and 1, unless configured (LRP)."""
    mean, std = image.per_channel("mean"), image.per_channel("std")
    lrp = attribution if isinstance(attribution, LrpAttribution) else None
    low = (lrp.low if lrp else None) or [(0.0 - m) / s for m, s in zip(mean, std)]
    high = (lrp.high if lrp else None) or [(1.0 - m) / s for m, s in zip(mean, std)]
    return low, high


# Settings that change how attribution runs but not what it computes: not part of any cache key.
RUNTIME_SETTINGS = frozenset({"batch_size", "shard_size", "device", "loader_workers"})


def attribution_settings(attribution: AttributionConfig) -> dict[str, Any]:
    """The attribution settings that determine the heatmaps (for cache keys)."""
    return attribution.model_dump(exclude=set(RUNTIME_SETTINGS))


def prepare_attributor(model_config: ModelConfig, attribution: AttributionConfig, image: ImageConfig,
                       token: str) -> Any:
    """The configured attributor (LRP or another method) for this model, prepared once per process.

    Preparing LRP traces the model, folds BatchNorm and checks every layer, so an unsupported layer raises
    ModelError here, before any image is read.
    """
    low, high = z_box_bounds(image, attribution)
    key = tokenize(token, attribution_settings(attribution), low, high)
    with _prepared_lock:
        if key not in _prepared:
            try:
                engine = attributor_from_config(load_model(model_config), attribution, low=low, high=high)
            except ValueError as error:  # a rule entry naming a torch.nn class that torch does not have
                raise ConfigError(f"attribution.rules: {error}") from None
            if len(_prepared) >= 2:
                _prepared.pop(next(iter(_prepared)))
            _prepared[key] = engine
        return _prepared[key]


class AttributorClock:
    """Seconds spent in an attributor's calls, summed (decoding and storing not counted): what ``spray
    evaluate`` reports per image. On CUDA it waits for the queued kernels before reading the clock."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds = 0.0

    def run(self, engine: Any, x: torch.Tensor, targets: torch.Tensor) -> tuple[Any, Any]:
        """``engine(x, targets)`` (logits and relevance tensors, as the engine returns them), timed."""
        started = time.perf_counter()
        logits, relevance = engine(x, targets)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.seconds += time.perf_counter() - started
        return logits, relevance


# Relevance is stored in chunks of about this many bytes: a few rows of large images, a batch of small ones,
# so that the report reading one prototype's heatmap reads little, and a shard is not thousands of files.
CHUNK_BYTES = 4 << 20


def relevance_chunk_rows(image: ImageConfig, batch_size: int) -> int:
    """Rows per chunk of the stored (n, C, H, W) float32 relevance: at most a batch, at most CHUNK_BYTES."""
    row_bytes = 4 * image.channels * image.size[0] * image.size[1]
    return max(1, min(batch_size, CHUNK_BYTES // row_bytes))


def attribute_shard(
    folder: Path,
    samples: Sequence[Sample],
    class_index: int,
    model_config: ModelConfig,
    model_token: str,
    attribution: AttributionConfig,
    image: ImageConfig,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Relevance of ``class_index``'s logit for every readable sample of the shard, streamed to disk.

    Images are decoded ``attribution.batch_size`` at a time by ``attribution.loader_workers`` threads while
    the model runs, and each batch's relevance is written to the chunked array ``<folder>/relevance.zarr``
    ``(n, C, H, W)`` float32 before the next batch is explained, so memory holds a few batches whatever the
    shard size. Returns the small arrays ``index`` (n,) positions in ``samples`` that were explained (rows
    of the stored relevance, in order), ``logits`` (n, K) float32, ``conservation`` (n,) sum of relevance /
    explained logit; and meta ``skipped`` [(id, reason)], ``device``, ``rules`` (layer -> rule),
    ``attribution_s`` (seconds in the attributor's calls: ``AttributorClock``).
    """
    engine = prepare_attributor(model_config, attribution, image, model_token)
    device = resolve_device(attribution.device)
    store = create_stored_array(folder, "relevance", (len(samples), image.channels, *image.size),
                                relevance_chunk_rows(image, attribution.batch_size))
    skipped: list[list[str]] = []
    index, logits, ratios = [], [], []
    written = 0
    clock = AttributorClock(device)
    batches = iter_pixel_batches(samples, image, attribution.batch_size, attribution.loader_workers)
    for batch in batches:
        skipped += [list(item) for item in batch.failed]
        if not batch.ok:
            continue
        x = to_device(to_model_input(batch.pixels, image), device)
        targets = torch.full((len(x),), class_index, dtype=torch.long, device=device)
        batch_logits, batch_relevance = clock.run(engine, x, targets)
        batch_ratios = conservation(batch_relevance, batch_logits, targets).cpu().numpy()
        batch_logits = batch_logits.detach().float().cpu().numpy()
        batch_relevance = batch_relevance.detach().float().cpu().numpy()
        finite = (np.isfinite(batch_relevance.reshape(len(x), -1)).all(1) & np.isfinite(batch_logits).all(1))
        for position in np.flatnonzero(~finite):
            skipped.append([samples[batch.ok[position]].id,
                            "non-finite (NaN or inf) relevance or logits for this image"])
        kept = int(finite.sum())
        if kept:
            store[written : written + kept] = batch_relevance[finite]
            written += kept
        index += [batch.ok[i] for i in np.flatnonzero(finite)]
        logits.append(batch_logits[finite])
        ratios.append(batch_ratios[finite])
    store.resize((written, image.channels, *image.size))
    n_outputs = logits[0].shape[1] if logits else 0
    return (
        {
            "index": np.asarray(index, dtype=np.int64),
            "logits": (np.concatenate(logits) if logits else np.zeros((0, n_outputs))).astype(np.float32),
            "conservation": (np.concatenate(ratios) if ratios else np.zeros(0)).astype(np.float32),
        },
        {"skipped": skipped, "device": str(device), "rules": engine.rules, "composite": engine.composite_name,
         "method": attribution.method, "attribution_s": clock.seconds},
    )


@dataclass(frozen=True)
class ShardTask:
    """One attribution task: the shard's samples of class ``class_index``, explained with the model
    (``model_token``: its content) and stored under ``key`` in the cache folder ``directory``."""

    directory: str
    key: str
    samples: list[Sample]
    class_index: int
    model: ModelConfig
    model_token: str
    attribution: AttributionConfig
    image: ImageConfig


def shard_key(model_token: str, class_index: int, attribution: AttributionConfig, image: ImageConfig,
              samples_token: str) -> str:
    """The cache key of a shard: what determines its heatmaps (not batch size, device, loader threads)."""
    return entry_key("attribute", STORE_VERSION, model_token, class_index, attribution_settings(attribution),
                     image, samples_token)


def attribute_task(task: ShardTask) -> Entry:
    """The shard's cache entry, computed (``attribute_shard``) unless stored; a Dask task body."""
    return cached_stream(task.directory, "attribute", task.key, attribute_shard, task.samples, task.class_index,
                         task.model, task.model_token, task.attribution, task.image)


@dataclass(frozen=True)
class StoredShard:
    """An attribute entry read back: ``index`` (n,) positions in the shard's samples that were explained,
    in the order of the rows of ``relevance`` (n, C, H, W) float32 read chunk by chunk; ``logits`` (n, K);
    ``conservation`` (n,); ``skipped`` [(sample id, reason)]."""

    index: np.ndarray
    logits: np.ndarray
    conservation: np.ndarray
    skipped: list[tuple[str, str]]
    relevance: VerifiedArray

    @classmethod
    def read(cls, entry: Entry) -> StoredShard:
        arrays, meta = entry.read()
        skipped = [(str(i), str(r)) for i, r in meta["skipped"]]
        # a shard whose every image was skipped stores arrays without their columns
        logits = arrays["logits"] if len(arrays["index"]) else np.zeros((0, 0), np.float32)
        return cls(arrays["index"], logits, arrays["conservation"], skipped, entry.open_array("relevance"))
