"""Export an audit to ViRelAy, the field's interactive viewer of SpRAY results (CoRelAy's HDF5 layout).

A ViRelAy project is a YAML file next to four files it names:

- ``label-map.json``: ``[{index, word_net_id, name}]`` per output of the model;
- ``input.h5``: ``data (N, C, H, W)`` float32 pixels in [0, 1] and ``label (N,)`` of every exported sample;
- ``attribution.h5``: ``attribution (N, C, H, W)`` input relevance, ``prediction (N, K)`` logits, ``label (N,)``
  and ``index (N,)`` (the sample's row in ``input.h5``);
- ``analysis.h5``: one group per audited class, named by the class index, holding ``index (n,)`` (rows of the
  attribution file), ``embedding/spectral (n, k)`` with attribute ``eigenvalue (k,)``, ``embedding/tsne`` and
  ``embedding/umap (n, 2)`` when computed (attributes ``embedding``: the embedding they were computed from, and
  ``index``), and ``cluster/<name> (n,)`` with spray's clustering (attributes ``embedding``, ``k``, ``index``).
  ViRelAy lists clustering and embedding names from the first group, so every group carries the same names.

Open it with ``python -m virelay PROJECT.yaml`` in an environment that has ViRelAy (GPL; never a dependency
of spray). Needs ``h5py`` (``pip install -e ".[virelay]"``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from spray.errors import ConfigError

CLUSTERING = "spray-spectral"  # one clustering per class, k chosen by the eigengap


@dataclass(frozen=True)
class ExportedClass:
    """One audited class's analysis.

    ``rows (n,)``: the class's samples as rows of the exported sample arrays; ``eigenvalues (k,)`` and
    ``eigenvectors (n, k)``: the spectral embedding; ``clusters (n,)``: spray's cluster of each sample;
    ``embeddings``: name (``tsne``, ``umap``) -> ``(n, 2)`` display coordinates.
    """

    index: int
    rows: np.ndarray
    eigenvalues: np.ndarray
    eigenvectors: np.ndarray
    clusters: np.ndarray
    embeddings: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.rows)
        if self.eigenvectors.shape != (n, len(self.eigenvalues)):
            raise ValueError(f"class {self.index}: eigenvectors must be ({n}, {len(self.eigenvalues)}), "
                             f"got {self.eigenvectors.shape}")
        if self.clusters.shape != (n,):
            raise ValueError(f"class {self.index}: clusters must be ({n},), got {self.clusters.shape}")
        for name, coordinates in self.embeddings.items():
            if coordinates.shape != (n, 2):
                raise ValueError(f"class {self.index}: embedding {name} must be ({n}, 2), got {coordinates.shape}")


@dataclass(frozen=True)
class SampleBatch:
    """A batch of exported samples: ``pixels (B, C, H, W)`` in [0, 1], ``relevance (B, C, H, W)``,
    ``logits (B, K)``, ``labels (B,)``."""

    pixels: np.ndarray
    relevance: np.ndarray
    logits: np.ndarray
    labels: np.ndarray


def write_virelay_project(folder: str | Path, *, name: str, model: str, method: str, class_names: list[str],
                          n_samples: int, batches: Iterable[SampleBatch], classes: list[ExportedClass]) -> Path:
    """Write a ViRelAy project into ``folder`` (created; existing files of the same names are replaced) and
    return the project YAML's path. ``batches`` yield the ``n_samples`` exported samples in row order, so that
    memory holds one batch of images at a time."""
    import h5py  # an optional extra, imported where it is needed

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    labels = [{"index": i, "word_net_id": str(i), "name": class_name} for i, class_name in enumerate(class_names)]
    (folder / "label-map.json").write_text(json.dumps(labels, indent=1))
    shape = _write_samples(h5py, folder, n_samples, batches)
    _write_analysis(h5py, folder / "analysis.h5", classes, n_samples)
    project = {"project": {
        "name": name, "model": model, "label_map": "label-map.json",
        "dataset": {"name": name, "type": "hdf5", "path": "input.h5", "input_width": shape[-1],
                    "input_height": shape[-2], "up_sampling_method": "none", "down_sampling_method": "none",
                    "label_index_regex": None, "label_word_net_id_regex": None},
        "attributions": {"attribution_method": method, "attribution_strategy": "true_label",
                         "sources": ["attribution.h5"]},
        "analyses": [{"analysis_method": "spectral", "sources": ["analysis.h5"]}],
    }}
    path = folder / "project.yaml"
    path.write_text(yaml.safe_dump(project, sort_keys=False))
    return path


def _write_samples(h5py, folder: Path, n_samples: int, batches: Iterable[SampleBatch]) -> tuple[int, ...]:
    with h5py.File(folder / "input.h5", "w") as inputs, h5py.File(folder / "attribution.h5", "w") as attributions:
        written = 0
        shape: tuple[int, ...] = ()
        for batch in batches:
            if not written:
                shape = batch.pixels.shape[1:]
                data = inputs.create_dataset("data", (n_samples, *shape), np.float32)
                input_labels = inputs.create_dataset("label", (n_samples,), np.int64)
                relevance = attributions.create_dataset("attribution", (n_samples, *shape), np.float32)
                prediction = attributions.create_dataset("prediction", (n_samples, batch.logits.shape[1]), np.float32)
                attribution_labels = attributions.create_dataset("label", (n_samples,), np.int64)
                attributions.create_dataset("index", data=np.arange(n_samples, dtype=np.int64))
            end = written + len(batch.pixels)
            if end > n_samples:
                raise ValueError(f"the batches hold more than the {n_samples} samples announced")
            data[written:end] = batch.pixels
            input_labels[written:end] = batch.labels
            relevance[written:end] = batch.relevance
            prediction[written:end] = batch.logits
            attribution_labels[written:end] = batch.labels
            written = end
        if written != n_samples:
            raise ValueError(f"the batches held {written} samples, {n_samples} were announced")
    return shape


def _write_analysis(h5py, path: Path, classes: list[ExportedClass], n_samples: int) -> None:
    if not classes:
        raise ConfigError("nothing to export: no audited class has an analysis (all were skipped)")
    names = set(classes[0].embeddings)
    with h5py.File(path, "w") as analysis:
        for exported in classes:
            if set(exported.embeddings) != names:
                raise ValueError(f"class {exported.index} has embeddings {sorted(exported.embeddings)}, the first "
                                 f"class {sorted(names)}: ViRelAy needs the same names in every class")
            if len(exported.rows) and (exported.rows.min() < 0 or exported.rows.max() >= n_samples):
                raise ValueError(f"class {exported.index}: rows outside the {n_samples} exported samples")
            group = analysis.create_group(str(exported.index))
            group.create_dataset("index", data=exported.rows.astype(np.int64))
            spectral = group.create_dataset("embedding/spectral", data=exported.eigenvectors.astype(np.float32))
            spectral.attrs["eigenvalue"] = exported.eigenvalues.astype(np.float64)
            for embedding, coordinates in exported.embeddings.items():
                dataset = group.create_dataset(f"embedding/{embedding}", data=coordinates.astype(np.float32))
                dataset.attrs["embedding"] = "spectral"
                dataset.attrs["index"] = np.arange(len(exported.rows))
            clusters = group.create_dataset(f"cluster/{CLUSTERING}", data=exported.clusters.astype(np.int64))
            clusters.attrs["embedding"] = "spectral"
            clusters.attrs["k"] = len(np.unique(exported.clusters))
            clusters.attrs["index"] = np.arange(len(exported.rows))
