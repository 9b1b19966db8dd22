"""``spray.audit``: audit an ``nn.Module`` and a dataset held in memory, from a notebook or a script.

``result = spray.audit(model, dataset, classes=[3], attribution={"composite": "epsilon_gamma_box"})`` runs the
same checks, the same Dask graph and the same cache as ``python -m spray run``; ``result.summary`` (one row
per cluster) and ``result.samples`` (one row per sample, the columns of samples.csv) are pandas DataFrames, and
``result.write_report(folder)`` writes index.html, summary.json and samples.csv with the CLI's writer.

Images: the dataset yields what the model takes, ``(C, H, W)`` tensors already normalised. spray's
interventions (masking, transplanting) and its pictures work in a pixel space of [0, 1], so each channel is
mapped onto [0, 1] by the dataset's own minimum and maximum of that channel: ``pixels = (x - low) / (high -
low)``, with ``data.image.mean = -low / (high - low)`` and ``std = 1 / (high - low)`` so that the model sees
``x`` again (up to float32 rounding). Masks fill with values inside the data's range, and LRP's z-box bounds
are ``low`` and ``high``. Details: docs/api.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from spray.checks import check_writable_folder
from spray.config import DataConfig, ImageConfig, SprayConfig, config_from_dict
from spray.data import Dataset, Sample, array_digest, in_memory_images
from spray.errors import ConfigError, DataError
from spray.model import in_memory_model
from spray.pipeline import AuditComputed, compute_audit
from spray.results import ClassResult, ClusterResult, CrossClassResult, RunInfo, SkippedClass

if TYPE_CHECKING:
    import pandas as pd
    from torch import nn

# Sections that spray.audit takes from its arguments rather than as keyword arguments.
_FROM_ARGUMENTS = {"model": "the model argument (an nn.Module)",
                   "data": "the dataset argument (a Dataset or a pair (images, labels))"}
SUMMARY_COLUMNS = ("class", "class_name", "cluster", "size", "class_size", "score", "flagged", "weakest",
                   "not_scored", "members")


@dataclass
class AuditResult:
    """What ``spray.audit`` found: per class the clusters and their evidence, and the run's metadata."""

    classes: list[ClassResult]
    run: RunInfo
    stages: dict[str, dict[str, int]]  # stage -> {"computed": n, "cached": n}
    skipped_classes: list[SkippedClass]
    skipped_samples: list[tuple[str, str]]  # (sample id, reason)
    cross_class: CrossClassResult | None
    config: SprayConfig
    report: Path | None = None  # where the report was written when ``output`` was given

    @property
    def flagged(self) -> list[tuple[ClassResult, ClusterResult]]:
        """The flagged clusters with their class."""
        return [(result, cluster) for result in self.classes for cluster in result.clusters if cluster.flagged]

    @property
    def summary(self) -> pd.DataFrame:
        """One row per cluster of every audited class: ``class`` (output index), ``class_name``, ``cluster``
        (its id), ``size`` (members), ``class_size`` (samples of the class), ``score`` (the weakest line of
        evidence's ratio measured / threshold; 0 when not scored), ``flagged``, ``weakest`` (the line of evidence
        with the lowest ratio), ``not_scored`` (why a cluster was not scored, else None) and ``members`` (sample
        ids); flagged clusters first, as in the report."""
        import pandas as pd

        rows = [{"class": result.class_index, "class_name": result.class_name, "cluster": cluster.id,
                 "size": cluster.size, "class_size": result.n_samples, "score": cluster.score,
                 "flagged": cluster.flagged, "weakest": cluster.evidence.weakest,
                 "not_scored": cluster.evidence.not_scored, "members": list(cluster.members)}
                for result in self.classes for cluster in result.clusters]
        return pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))

    @property
    def samples(self) -> pd.DataFrame:
        """One row per audited sample, the columns of samples.csv (docs/outputs.md); ids are the dataset's
        positions as strings."""
        from spray.report.samples import samples_frame

        return samples_frame(self.classes)

    def write_report(self, directory: str | Path, *, workers: int | None = None) -> Path:
        """Write index.html, summary.json and samples.csv into ``directory`` (created; replaced whole) with the
        CLI's writer; returns the path of index.html. ``workers``: processes drawing class pages (default as
        ``dask.workers``; 1 draws in this process). Raises ConfigError when the folder cannot be written."""
        from spray.report import write_report

        folder = Path(directory).expanduser().resolve()
        check_writable_folder(folder, "write_report(directory)")
        check_writable_folder(folder.parent, "write_report(directory) (the folder that holds it)")
        if workers is None:
            workers = 1 if self.config.dask.scheduler == "synchronous" else self.config.dask.workers
        return write_report(folder, self.classes, self.run, self.cross_class, workers=workers)


def audit(model: nn.Module, dataset: Any, classes: Sequence[int | str] | None = None, *,
          class_names: Sequence[str] | None = None, use_cache: bool = True, progress: bool = False,
          **sections: Any) -> AuditResult:
    """Audit ``model`` on ``dataset`` for Clever Hans behaviour; the Python face of ``python -m spray run``.

    ``model``: an ``nn.Module`` returning logits ``(N, K)``; spray works on a copy (the module is not moved
    or switched to eval mode). ``dataset``: a torch ``Dataset`` (anything with ``len`` and ``[i]``) whose items
    are ``(image, label)``, the image a ``(C, H, W)`` tensor or array exactly as the model takes it (C = 1 or 3),
    the label the model output index of its class; or a pair ``(images (N, C, H, W), labels (N,))`` of arrays
    or tensors. Every sample is read once into memory (N x C x H x W float32). ``classes``: labels to audit
    (indices, or names with ``class_names``); default every class. ``class_names``: the name of each model
    output, in order. ``use_cache``: False computes everything afresh and stores nothing (``--no-cache``).
    ``progress``: progress bars on stderr.

    ``sections``: any other config section as a keyword argument, with the YAML's schema and validation
    (docs/configuration.md): ``attribution``, ``preprocessing``, ``analysis``, ``embedding``, ``flagging``,
    ``audit`` (``cross_class``), ``cache``, ``dask``, ``report``, ``output`` (then the report is also written
    there). Relative paths resolve against the working folder. The scheduler must be ``threads`` (default)
    or ``synchronous``: the model and images live in this process.

    Cache keys come from the module's classes and state (``spray.model.module_token``) and from each sample's
    tensor (its digest) and label, so an unchanged call recomputes nothing. Raises ``spray.errors``
    exceptions naming the key, sample or layer (ConfigError, DataError, ModelError, RunError).
    """
    raw = _sections(sections, classes)
    images, labels = read_samples(dataset)
    image, pixels = pixel_space(images)
    config = _config(raw, image, class_names)
    digests = [array_digest(one) for one in images]
    with in_memory_images(dict(zip(digests, pixels))) as paths, in_memory_model(model) as model_config:
        config = config.model_copy(update={"model": model_config})
        samples = [Sample(id=str(i), path=paths[d], label=int(label)) for i, (d, label) in
                   enumerate(zip(digests, labels))]
        kind = "arrays" if _is_pair(dataset) else type(dataset).__qualname__
        memory = in_memory_dataset(samples, labels, class_names, kind)
        done = compute_audit(config, memory, use_cache=use_cache, progress=progress)
    result = _result(done, config)
    if "output" in raw:
        result.report = result.write_report(config.output)
    return result


def _sections(sections: dict[str, Any], classes: Sequence[int | str] | None) -> dict[str, Any]:
    """The keyword sections as a raw config mapping, ``classes`` as ``audit.classes``; ConfigError for a section
    that comes from the arguments, ``audit.classes`` given twice, or a scheduler in other processes."""
    for key, source in _FROM_ARGUMENTS.items():
        if key in sections:
            raise ConfigError(f"spray.audit: {key}: given as {source}, not as a keyword section")
    raw = dict(sections)
    if classes is not None:
        audit_section = dict(raw.get("audit") or {})
        if "classes" in audit_section:
            raise ConfigError("spray.audit: audit.classes: give the classes once, as classes=[...]")
        raw["audit"] = {**audit_section, "classes": list(classes)}
    dask_section = raw.get("dask") or {}
    if isinstance(dask_section, dict) and (dask_section.get("address") or dask_section.get("scheduler") == "processes"):
        key = "dask.address" if dask_section.get("address") else "dask.scheduler"
        raise ConfigError(
            f"spray.audit: {key}: an in-memory model and dataset are audited by tasks in this process (dask.scheduler "
            "'threads' or 'synchronous'); for worker processes or a Dask cluster save the state_dict and the images "
            "and run a config with python -m spray run")
    return raw


def _config(raw: dict[str, Any], image: ImageConfig, class_names: Sequence[str] | None) -> SprayConfig:
    """The validated config of the keyword sections, with the image section of the data and no files."""
    placeholder = {"model": {"factory": "spray.model:held_model"}, "data": {"root": "."}}
    config = config_from_dict({**raw, **placeholder}, base_dir=Path.cwd())
    data = DataConfig.model_construct(manifest=None, root=None, image=image,
                                      class_names=list(class_names) if class_names is not None else None)
    return config.model_copy(update={"data": data})


def read_samples(dataset: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(images (N, C, H, W) float32, labels (N,) int64)`` of a Dataset or an (images, labels) pair.

    Raises DataError naming the sample when an item is not ``(image, label)``, an image has another shape
    than the first or non-finite values, or a label is not a non-negative integer.
    """
    if _is_pair(dataset):
        images, labels = _as_array(dataset[0], "images"), _as_array(dataset[1], "labels")
        if images.ndim != 4:
            raise DataError(f"images of shape {images.shape}; expected (N, C, H, W)")
        if labels.shape != (len(images),):
            raise DataError(f"labels of shape {labels.shape}; expected ({len(images)},), one per image")
    else:
        images, labels = _read_dataset(dataset)
    if len(images) == 0:
        raise DataError("the dataset is empty; expected at least one (image, label)")
    if images.shape[1] not in (1, 3):
        raise DataError(f"images of shape {images.shape[1:]}: {images.shape[1]} channels; expected 1 or 3 "
                        "(C, H, W)")
    bad = np.flatnonzero(~np.isfinite(images.reshape(len(images), -1)).all(axis=1))
    if len(bad):
        raise DataError(f"sample {int(bad[0])} has non-finite values (NaN or inf); {len(bad)} sample(s) in all")
    return np.ascontiguousarray(images, dtype=np.float32), _integer_labels(labels)


def _read_dataset(dataset: Any) -> tuple[np.ndarray, np.ndarray]:
    try:
        size = len(dataset)
    except TypeError:
        raise DataError(f"dataset: a {type(dataset).__qualname__} has no len(); expected a torch Dataset of "
                        "(image, label) or a pair (images, labels)") from None
    images, labels, shape = [], [], None
    for index in range(size):
        item = dataset[index]
        if not isinstance(item, (tuple, list)) or len(item) < 2:
            raise DataError(f"sample {index}: the dataset returned a {type(item).__qualname__}; expected (image, label)")
        image = _as_array(item[0], f"sample {index}'s image")
        if image.ndim != 3 or (shape is not None and image.shape != shape):
            raise DataError(f"sample {index}: image of shape {image.shape}; expected "
                            f"{shape if shape is not None else '(C, H, W)'} like the first sample")
        shape = image.shape
        images.append(image.astype(np.float32, copy=False))
        labels.append(_as_array(item[1], f"sample {index}'s label").reshape(-1)[:1] if _is_array(item[1])
                      else np.asarray([item[1]]))
    if not images:
        return np.zeros((0, 1, 1, 1), np.float32), np.zeros(0, np.int64)
    return np.stack(images), np.concatenate(labels)


def _is_pair(dataset: Any) -> bool:
    """Whether ``dataset`` is an ``(images, labels)`` pair of arrays rather than a sequence of samples."""
    return isinstance(dataset, (tuple, list)) and len(dataset) == 2 and _is_array(dataset[0])


def _is_array(value: Any) -> bool:
    return hasattr(value, "shape") and hasattr(value, "dtype")


def _as_array(value: Any, what: str) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor, on any device
        value = value.detach().cpu().numpy()
    try:
        return np.asarray(value)
    except (TypeError, ValueError) as error:
        raise DataError(f"{what}: cannot be read as an array ({error})") from None


def _integer_labels(labels: np.ndarray) -> np.ndarray:
    as_float = labels.astype(np.float64) if labels.dtype.kind in "iufb" else None
    bad = (np.arange(len(labels)) if as_float is None else
           np.flatnonzero((as_float < 0) | (as_float != np.round(as_float)) | (labels.dtype.kind == "b")))
    if len(bad):
        raise DataError(f"sample {int(bad[0])}: label {labels[bad[0]].item()!r}; expected a model output index (an integer "
                        ">= 0)")
    return labels.astype(np.int64)


def pixel_space(images: np.ndarray) -> tuple[ImageConfig, np.ndarray]:
    """The image section and pixels of model inputs ``images (N, C, H, W)``: each channel mapped onto [0, 1]
    by the data's minimum and maximum of it; returns ``(image, pixels (N, H, W, C) float32)`` with
    ``to_model_input(pixels, image)`` equal to ``images`` up to float32 rounding. A constant channel keeps
    a range of 1."""
    low = images.min(axis=(0, 2, 3)).astype(np.float64)
    span = images.max(axis=(0, 2, 3)).astype(np.float64) - low
    span[span <= 0] = 1.0
    pixels = (images.transpose(0, 2, 3, 1) - low.astype(np.float32)) / span.astype(np.float32)
    image = ImageConfig(mode="L" if images.shape[1] == 1 else "RGB", size=(images.shape[2], images.shape[3]),
                        mean=[float(v) for v in -low / span], std=[float(v) for v in 1.0 / span])
    return image, np.clip(pixels, 0.0, 1.0).astype(np.float32)


def in_memory_dataset(samples: list[Sample], labels: np.ndarray, class_names: Sequence[str] | None,
                      kind: str) -> Dataset:
    """The Dataset of in-memory samples: ids are positions; names from ``class_names`` or the indices."""
    if class_names is not None and int(labels.max()) >= len(class_names):
        position = int(np.argmax(labels >= len(class_names)))
        raise DataError(f"sample {position}: label {int(labels[position])} is beyond the {len(class_names)} "
                        "class_names")
    names = list(class_names) if class_names is not None else [str(i) for i in range(int(labels.max()) + 1)]
    return Dataset(samples=samples, class_names=names, source=Path(f"<in-memory {kind}>"),
                   label_source="class_names" if class_names is not None else "index")


def _result(done: AuditComputed, config: SprayConfig) -> AuditResult:
    return AuditResult(classes=done.classes, run=done.run, stages=done.stages, skipped_classes=done.skipped_classes,
                       skipped_samples=done.skipped_samples, cross_class=done.cross_class, config=config)


__all__ = ["AuditResult", "audit"]
