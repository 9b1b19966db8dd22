"""Checks that run before any attribution, shared by ``spray validate`` and ``spray run``.

Both commands call :func:`check_output_folders` and :func:`preflight`, so what ``validate`` accepts is what
``run`` starts with. Each check raises a SprayError subclass naming the culprit:

- ``output`` or ``cache.directory`` that is a file or not writable: ConfigError (exit 2);
- ``data.image.mode`` whose channel count differs from the model's first layer: ConfigError (exit 2);
- a model that fails on one image of ``data.image`` (size, mode) or returns no ``(1, K)`` logits:
  ModelError (exit 4);
- labels that do not map onto the model's ``K`` outputs (an integer label >= K; string labels or class
  folders numbered in sorted order whose count is not K; ``data.class_names`` whose length is not K):
  DataError (exit 3), with the ``data.class_names:`` line to write;
- an attribution method or LRP composite that fails on one image: ModelError (exit 4).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from spray.config import ImageConfig, SprayConfig
from spray.data import Dataset, Sample, read_pixels, to_model_input
from spray.errors import ConfigError, DataError, ModelError, SprayError

_SHOWN = 10  # offending labels or names listed before summarising
_DECODE_TRIES = 20  # images of one class tried before saying that none of them decodes

LABEL_SOURCES = {
    "index": "integer labels are output indices",
    "names": "string labels numbered in sorted order",
    "folders": "class folders numbered in sorted order",
    "class_names": "mapped through data.class_names",
}


@dataclass(frozen=True)
class LabelMapping:
    """Which model output each class is audited against: ``names[i]`` is the class of output ``i``."""

    names: tuple[str, ...]  # (K,) class name per model output
    source: str  # a key of LABEL_SOURCES
    samples: tuple[int, ...]  # (K,) number of samples per output

    def lines(self) -> list[str]:
        """One line per output: ``output 3 <- '3' (45 samples)``."""
        return [f"output {index} <- {name!r} ({count} samples)"
                for index, (name, count) in enumerate(zip(self.names, self.samples))]


@dataclass(frozen=True)
class Preflight:
    """What the checks measured: the model's output width, the label mapping, the images decoded."""

    n_outputs: int
    mapping: LabelMapping
    probed: tuple[str, ...]  # sample ids decoded and passed through the model
    undecodable: tuple[tuple[str, str], ...]  # (sample id, reason) of images tried that did not decode


def check_output_folders(config: SprayConfig) -> None:
    """``output`` (and ``cache.directory`` when the cache is on) are folders spray can create and write.

    Nothing is created: the nearest existing ancestor must be a writable folder. Raises ConfigError.
    """
    check_writable_folder(Path(config.output), "output")
    # the report is written beside the output folder and swapped in whole (spray.report._io.publish_folder)
    check_writable_folder(Path(config.output).parent, "output (the folder that holds it)")
    if config.cache.enabled:
        check_writable_folder(Path(config.cache.directory), "cache.directory")


def check_writable_folder(path: Path, key: str) -> None:
    """Raise ConfigError naming ``key`` when ``path`` is a file, under a file, or not writable."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{key}: {path} is a file; expected a folder (created if absent)")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{key}: {path} cannot be created: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{key}: {path} cannot be written: no write permission on {existing}")


def first_layer(model: nn.Module) -> tuple[str, nn.Module] | None:
    """The first convolution or linear layer in registration order (how models are usually written)."""
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            return name, module
    return None


def check_input_channels(model: nn.Module, image: ImageConfig) -> None:
    """Raise ConfigError when the first convolution takes another channel count than ``data.image.mode``."""
    found = first_layer(model)
    if found is None:
        return
    name, layer = found
    if not isinstance(layer, nn.Conv2d):
        return  # a model starting with a linear layer is checked by the forward pass
    if layer.in_channels == image.channels:
        return
    fix = {1: "set data.image.mode: L", 3: "set data.image.mode: RGB"}.get(
        layer.in_channels, "spray feeds 1 (mode L) or 3 (mode RGB) channels")
    raise ConfigError(
        f"data.image.mode is {image.mode} ({image.channels} channel(s)) but the model's first layer "
        f"{name!r} ({type(layer).__name__}) takes {layer.in_channels} input channels: {fix}"
    )


def measure_outputs(model: nn.Module, pixels: np.ndarray, image: ImageConfig, ids: Sequence[str]) -> int:
    """Pass ``pixels`` ``(N, H, W, C)`` in [0, 1] through the model; return its output width K.

    Raises ModelError naming the input shape, ``data.image`` and the samples when the forward pass fails or
    the output is not ``(N, K)`` logits.
    """
    check_input_channels(model, image)
    x = to_model_input(pixels, image)
    where = (f"input {tuple(x.shape)} from data.image (mode {image.mode}, size {list(image.size)}), "
             f"sample {ids[0]!r}")
    try:
        with torch.no_grad():
            output = model(x)
    except Exception as error:  # the user's model: any failure is reported with its first line
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise ModelError(
            f"the model fails on one image: {type(error).__name__}: {first} ({where}); set data.image.size "
            "and data.image.mode to the input the model was trained on"
        ) from None
    if not isinstance(output, torch.Tensor) or output.ndim != 2 or output.shape[0] != len(x):
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise ModelError(f"the model returned {shape} for {where}; expected logits of shape ({len(x)}, classes)")
    return int(output.shape[1])


def map_labels(dataset: Dataset, n_outputs: int) -> LabelMapping:
    """Map every class of ``dataset`` onto one of the model's ``n_outputs`` outputs, or raise DataError.

    Integer labels must be < K (names "0".."K-1"); ``data.class_names`` must list exactly K names; string
    labels and class folders numbered in sorted order are accepted only when there are exactly K of them
    (any other count would audit every class after the gap against another class's output).
    """
    labels = np.array([sample.label for sample in dataset.samples], dtype=np.int64)
    counts = np.bincount(labels, minlength=n_outputs) if len(labels) else np.zeros(n_outputs, np.int64)
    if dataset.label_source == "index":
        beyond = sorted({int(label) for label in labels if label >= n_outputs})
        if beyond:
            example = next(s for s in dataset.samples if s.label == beyond[0])
            raise DataError(
                f"{dataset.source}: label(s) {_listing(beyond)} are beyond the model's {n_outputs} outputs "
                f"(indices 0..{n_outputs - 1}), e.g. sample {example.id!r}; expected output indices"
            )
        names = tuple(str(index) for index in range(n_outputs))
    else:
        names = tuple(dataset.class_names)
        if len(names) != n_outputs:
            raise DataError(_count_mismatch(dataset, n_outputs))
    return LabelMapping(names=names, source=dataset.label_source, samples=tuple(int(c) for c in counts[:n_outputs]))


def _count_mismatch(dataset: Dataset, n_outputs: int) -> str:
    names = list(dataset.class_names)
    if dataset.label_source == "class_names":
        return (f"data.class_names lists {len(names)} names but the model has {n_outputs} outputs; expected one "
                "name per output, in the order of the outputs")
    kind = "class folders" if dataset.label_source == "folders" else "string labels"
    if len(names) > n_outputs:
        unmapped = f"{kind} {_listing(names[n_outputs:])} would map to no output"
        template = names[:n_outputs]
    else:
        unmapped = f"outputs {_listing(list(range(len(names), n_outputs)))} have no class"
        template = names + [f"<name of output {i}>" for i in range(len(names), n_outputs)]
    line = yaml.safe_dump({"class_names": template}, default_flow_style=True, width=10_000).strip()[1:-1]
    return (
        f"{dataset.source}: {len(names)} {kind} ({_listing(names)}) but the model has {n_outputs} outputs; "
        f"numbered in sorted order, {unmapped} and classes after a gap would be audited against another "
        f"class's output. Name every output in the model's order under data:, e.g.\n  data.{line}"
    )


def probe_samples(dataset: Dataset, per_class: bool) -> list[list[Sample]]:
    """Candidates to decode: per class (``per_class``) or for the whole dataset, the first few samples."""
    if per_class:
        return [samples[:_DECODE_TRIES] for samples in dataset.by_class().values()]
    return [dataset.samples[: 5 * _DECODE_TRIES]]


def decode_probes(dataset: Dataset, image: ImageConfig, per_class: bool) -> tuple[list[Sample], np.ndarray,
                                                                                    list[tuple[str, str]]]:
    """The first image that decodes in each group of :func:`probe_samples`: (samples, (n, H, W, C), failed).

    Raises DataError when no group has an image that decodes.
    """
    chosen, arrays, failed = [], [], []
    for group in probe_samples(dataset, per_class):
        for sample in group:
            try:
                arrays.append(read_pixels(sample.path, image))
            except DataError as error:
                failed.append((sample.id, str(error)))
                continue
            chosen.append(sample)
            break
    if not chosen:
        shown = "; ".join(reason for _, reason in failed[:3])
        raise DataError(f"{dataset.source}: none of the {len(failed)} images tried decodes: {shown}")
    return chosen, np.stack(arrays), failed


def check_attribution(engine: Any, pixels: np.ndarray, image: ImageConfig, target: int) -> None:
    """Explain one image with the configured method (and LRP composite); ModelError naming what failed."""
    x = to_model_input(pixels[:1], image)
    try:
        engine(x, torch.tensor([target]))
    except SprayError:
        raise
    except Exception as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise ModelError(
            f"attribution ({engine.method}{', composite ' + engine.composite_name if engine.composite_name else ''}) "
            f"fails on one image: {type(error).__name__}: {first}"
        ) from None


def preflight(config: SprayConfig, dataset: Dataset, per_class: bool = False) -> Preflight:
    """Load the model, pass real images through it, map the labels, explain one image.

    ``per_class``: decode one image per class (validate) instead of the first readable one (run). Replaces
    ``dataset.class_names`` by the mapping's names (one per output). Raises ConfigError, DataError or
    ModelError.
    """
    from spray.attribute import prepare_attributor
    from spray.model import load_model, model_token

    model = load_model(config.model)
    if config.analysis.layer is not None:  # the deep-feature lens's layer must exist before any work
        from spray.analysis.features import check_layer

        check_layer(model, config.analysis.layer)
    image = config.data.image
    chosen, pixels, failed = decode_probes(dataset, image, per_class)
    n_outputs = measure_outputs(model, pixels, image, [s.id for s in chosen])
    mapping = map_labels(dataset, n_outputs)
    dataset.class_names = list(mapping.names)
    engine = prepare_attributor(config.model, config.attribution, image, model_token(config.model))
    check_attribution(engine, pixels, image, chosen[0].label)
    return Preflight(n_outputs, mapping, tuple(s.id for s in chosen), tuple(failed))


def _listing(items: Sequence[Any]) -> str:
    shown = ", ".join(repr(item) if isinstance(item, str) else str(item) for item in items[:_SHOWN])
    more = len(items) - _SHOWN
    return shown + (f" and {more} more" if more > 0 else "")
