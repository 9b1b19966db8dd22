"""``python -m spray export virelay CONFIG OUTPUT_DIR``: a config's audit written as a ViRelAy project.

The audit graph is the one ``spray run`` computes (``spray.pipeline.compute_entries``, same cache keys), so an
export after a run reads every entry from the cache and an export before one computes what is missing. What
is exported, per audited class whose analysis ran (classes skipped for too few samples have none):

- every explained sample, class after class, in the order of the class's attribution shards (the rows of
  its preprocessed maps, eigenvectors, embeddings and cluster labels): its pixels decoded as the model sees
  them, in [0, 1] before normalisation, its input relevance (the attribution entry's array), its logits;
- the spectral embedding (eigenvectors and eigenvalues of the analyse entry), the 2-D embeddings of the
  embed entry, and spray's clusters (the flag entry's labels: the spectral clusters with pattern carriers
  joined to flagged clusters, as in the report).

The project is written into a staging folder beside ``OUTPUT_DIR`` and swapped in whole, so the folder holds
the previous export or the new one, never a part.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from spray.config import LrpAttribution, SprayConfig
from spray.errors import ConfigError, DataError
from spray.export import ExportedClass, SampleBatch, write_virelay_project

if TYPE_CHECKING:
    from spray.data import Dataset, Sample

# The pip extra that brings h5py (named in the error when it is missing).
EXTRA = 'pip install -e ".[virelay]"'


def require_h5py() -> None:
    """ConfigError naming the extra when h5py, which writes the HDF5 files, is not installed."""
    try:
        import h5py  # noqa: F401  (only whether it imports)
    except ImportError:
        raise ConfigError(f"export virelay writes HDF5 files with h5py, which is not installed: {EXTRA} "
                          "(or pip install h5py)") from None


def export_virelay(config: SprayConfig, output_dir: str | Path, *, use_cache: bool = True,
                   progress: bool = True) -> Path:
    """Run (or read from the cache) the audit graph of ``config`` and write it as a ViRelAy project into
    ``output_dir``; return the project YAML's path. Raises ConfigError without h5py or when ``output_dir``
    cannot be written, and the audit's own errors (DataError, ModelError, RunError)."""
    from spray.checks import check_writable_folder, preflight
    from spray.data import load_dataset
    from spray.model import model_token
    from spray.pipeline import audited_classes, cache_folder, compute_entries

    require_h5py()
    output_dir = Path(output_dir).resolve()
    check_writable_folder(output_dir, "OUTPUT_DIR")
    check_writable_folder(output_dir.parent, "OUTPUT_DIR (the folder that holds it)")
    if config.cache.enabled and use_cache:
        check_writable_folder(Path(config.cache.directory), "cache.directory")
    dataset = load_dataset(config.data)
    checked = preflight(config, dataset)
    classes, _ = audited_classes(config.audit, config.analysis.neighbors, dataset)
    with cache_folder(config.cache, use_cache) as directory:
        entries, _ = compute_entries(config, dataset, classes, directory, model_token(config.model), progress,
                                     cross_class=False)
        return _write(config, output_dir, dataset, classes, entries, list(checked.mapping.names))


def _write(config: SprayConfig, output_dir: Path, dataset: Dataset, classes: list[int],
           entries: dict[int, dict[str, Any]], label_names: list[str]) -> Path:
    """The project from the graph's entries, written into a staging folder and published whole."""
    from spray.pipeline import PathShower
    from spray.report._io import publish_folder, staging_folder

    by_class = dataset.by_class()
    kept = [index for index in classes if "skipped" not in entries[index]["analyse"].read()[1]]
    if not kept:
        raise DataError("nothing to export: the analysis skipped every audited class (too few usable samples)")
    exported, offset = [], 0
    for index in kept:
        exported.append(_exported_class(index, entries[index], offset))
        offset += len(exported[-1].rows)
    attribution = config.attribution
    method = (f"lrp {attribution.composite}" if isinstance(attribution, LrpAttribution) else attribution.method)
    name = config.path.stem if config.path else "spray audit"
    staging = staging_folder(output_dir)
    try:
        write_virelay_project(
            staging, name=name, model=PathShower(config)(config.model.factory),
            method=method, class_names=label_names, n_samples=offset,
            batches=_batches(config, [(index, by_class[index], entries[index]) for index in kept]),
            classes=exported)
        publish_folder(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return output_dir / "project.yaml"


def _exported_class(index: int, tasks: dict[str, Any], offset: int) -> ExportedClass:
    """One class's analysis for the export; its samples are rows ``offset ...`` of the exported arrays."""
    from spray.flag import read_flagged

    analysis, _ = tasks["analyse"].read()
    embeddings, _ = tasks["embed"].read()
    labels = read_flagged(tasks["flag"]).labels
    n = len(labels)
    return ExportedClass(index=index, rows=np.arange(offset, offset + n), eigenvalues=analysis["eigenvalues"],
                         eigenvectors=analysis["eigenvectors"], clusters=labels,
                         embeddings={str(name): np.asarray(coordinates) for name, coordinates in embeddings.items()})


def _batches(config: SprayConfig,
             classes: list[tuple[int, list[Sample], dict[str, Any]]]) -> Iterator[SampleBatch]:
    """The exported samples, class by class and shard by shard, one stored chunk of relevance at a time:
    ``SampleBatch`` of pixels (B, C, H, W), relevance (B, C, H, W), logits (B, K), labels (B,)."""
    from spray.attribute import StoredShard
    from spray.data import load_pixels

    size, image = config.attribution.shard_size, config.data.image
    for index, samples, tasks in classes:
        for number, entry in enumerate(tasks["shards"]):
            shard = StoredShard.read(entry)
            shard_samples = samples[number * size : (number + 1) * size]
            step = shard.relevance.chunks[0]
            for start in range(0, len(shard.index), step):
                chosen = [shard_samples[i] for i in shard.index[start : start + step]]
                pixels, _, failed = load_pixels(chosen, image)
                if failed:
                    sample_id, reason = failed[0]
                    raise DataError(f"class {index}: image {sample_id} was explained but cannot be decoded now: "
                                    f"{reason}")
                yield SampleBatch(pixels=pixels.transpose(0, 3, 1, 2),
                                  relevance=np.asarray(shard.relevance[start : start + len(chosen)]),
                                  logits=shard.logits[start : start + len(chosen)],
                                  labels=np.full(len(chosen), index, dtype=np.int64))
