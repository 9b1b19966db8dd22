"""Stage 1: logits and input relevance of the audited class for one shard of samples.

A shard is the unit of caching and of distribution: it is computed in batches of
``attribution.batch_size`` on the configured device and stored as one cache entry. Images that cannot be
read, and samples whose relevance is not finite, are skipped with a reason instead of failing the shard.
"""

from __future__ import annotations

import threading
from typing import Any, Sequence

import numpy as np
import torch
from dask.base import tokenize

from spray.config import AttributionConfig, ImageConfig, ModelConfig
from spray.data import Sample, load_pixels, to_model_input
from spray.lrp import conservation
from spray.lrp.methods import attributor_from_config
from spray.model import load_model

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


def z_box_bounds(image: ImageConfig, attribution: AttributionConfig) -> tuple[list[float], list[float]]:
    """z^B bounds per channel: the normalised images of pixel values 0 and 1, unless configured."""
    mean, std = image.per_channel("mean"), image.per_channel("std")
    low = attribution.low or [(0.0 - m) / s for m, s in zip(mean, std)]
    high = attribution.high or [(1.0 - m) / s for m, s in zip(mean, std)]
    return low, high


def prepare_attributor(model_config: ModelConfig, attribution: AttributionConfig, image: ImageConfig,
                       token: str) -> Any:
    """The configured attributor (LRP or another method) for this model, prepared once per process.

    Preparing LRP traces the model, folds BatchNorm and checks every layer, so an unsupported layer raises
    ModelError here, before any image is read.
    """
    low, high = z_box_bounds(image, attribution)
    key = tokenize(token, attribution.model_dump(exclude={"batch_size", "shard_size", "device"}), low, high)
    with _prepared_lock:
        if key not in _prepared:
            engine = attributor_from_config(load_model(model_config), attribution, low=low, high=high)
            if len(_prepared) >= 2:
                _prepared.pop(next(iter(_prepared)))
            _prepared[key] = engine
        return _prepared[key]


def attribute_shard(
    samples: Sequence[Sample],
    class_index: int,
    model_config: ModelConfig,
    model_token: str,
    attribution: AttributionConfig,
    image: ImageConfig,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Relevance of ``class_index``'s logit for every readable sample of the shard.

    Returns arrays ``index`` (n,) positions in ``samples`` that were explained, ``logits`` (n, K),
    ``relevance`` (n, C, H, W) float32, ``conservation`` (n,) sum of relevance / explained logit; and
    meta ``skipped`` [(id, reason)], ``device``, ``rules`` (layer -> rule).
    """
    engine = prepare_attributor(model_config, attribution, image, model_token)
    device = resolve_device(attribution.device)
    pixels, loaded, failed = load_pixels(samples, image)
    skipped = [list(item) for item in failed]
    logits, relevance, ratios = [], [], []
    for start in range(0, len(pixels), attribution.batch_size):
        x = to_model_input(pixels[start : start + attribution.batch_size], image).to(device)
        targets = torch.full((len(x),), class_index, dtype=torch.long, device=device)
        batch_logits, batch_relevance = engine(x, targets)
        ratios.append(conservation(batch_relevance, batch_logits, targets).cpu())
        logits.append(batch_logits.cpu())
        relevance.append(batch_relevance.cpu())
    n_outputs = logits[0].shape[1] if logits else 0
    logits_array = torch.cat(logits).numpy() if logits else np.zeros((0, n_outputs), np.float32)
    relevance_array = (
        torch.cat(relevance).numpy()
        if relevance
        else np.zeros((0, image.channels, *image.size), np.float32)
    )
    ratio_array = torch.cat(ratios).numpy() if ratios else np.zeros(0, np.float32)
    index = np.asarray(loaded, dtype=np.int64)
    finite = np.isfinite(relevance_array.reshape(len(index), -1)).all(1) & np.isfinite(logits_array).all(1)
    for position in np.flatnonzero(~finite):
        skipped.append([samples[index[position]].id, "non-finite (NaN or inf) relevance or logits for this image"])
    return (
        {
            "index": index[finite],
            "logits": logits_array[finite].astype(np.float32),
            "relevance": relevance_array[finite].astype(np.float32),
            "conservation": ratio_array[finite].astype(np.float32),
        },
        {"skipped": skipped, "device": str(device), "rules": engine.rules, "composite": engine.composite_name,
         "method": attribution.method},
    )
