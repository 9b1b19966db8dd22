"""The audit as a Dask graph: attribute -> preprocess -> analyse, embed -> flag (and attribute -> evaluate),
then the report.

Every task is a cached computation (``spray.cache.cached``) whose key (``spray.cache.entry_key``) is the
token of spray's version, the stage's ``STORE_VERSION`` (what its entries hold) and what determines it; config
sections tokenize by their values:

- attribute (one task per shard of a class, ``spray.attribute.attribute_task``): the model token (factory
  source, kwargs, weight bytes), the attribution section, the image section, the shard's (id, label, file
  digest) list;
- preprocess (``spray.preprocess.preprocess_task``): the preprocessing section and the shard keys;
- analyse / embed: their own section and the preprocess key;
- flag: the flagging section, the analyse and preprocess keys, the model token and the digests of the
  transplant images;
- evaluate (with ``evaluation.enabled``, ``spray.faithfulness``): the evaluation and image sections, the
  model token and the shard keys;
- features and lens (with ``analysis.space: features``, ``spray.analysis.features``): the model token, the
  attribution, image and preprocessing sections, the layer, the preprocess key (and for lens the flag key);
- cross_class (with ``audit.cross_class``): the analysis and embedding sections and every class's
  preprocess key.

Attribution entries stream their full-resolution relevance to a chunked zarr array (``cached_stream``);
every later stage holds only what it needs (preprocess: one chunk at a time; the report: the prototypes).
On a distributed cluster whose workers declare the resource "GPU", attribution tasks ask for one.

So an unchanged config recomputes nothing, an analysis-only change recomputes analysis and flagging, and a
changed weight file or image recomputes what depends on it. The report is always rewritten from the entries.
A series of checkpoints (``model.weights`` a list or a glob, ``compute_series``) runs the graph once per
checkpoint, in order, in one cache folder, and follows the flags across them (``spray.timeline``).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import logging
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import dask
import numpy as np

from spray.analysis import import_umap
from spray.analysis.features import FeatureJob, features_key, features_task, lens_key, lens_task
from spray.analysis.task import (
    AnalyseJob,
    CrossClassJob,
    EmbedJob,
    analyse_key,
    analyse_task,
    cross_class_key,
    cross_class_task,
    embed_key,
    embed_task,
)
from spray.assemble import assemble_class, note_shared_patterns
from spray.attribute import ShardTask, attribute_task, resolve_device, shard_key
from spray.cache import CorruptEntry, Entry, sweep_stale
from spray.checks import LABEL_SOURCES, LabelMapping, check_output_folders, check_writable_folder, preflight
from spray.config import (
    AnalysisConfig,
    AuditSection,
    CacheConfig,
    DaskConfig,
    EmbeddingConfig,
    LrpAttribution,
    SprayConfig,
)
from spray.data import (
    Dataset,
    DigestIndex,
    Sample,
    dataset_token,
    load_dataset,
)
from spray.diff import AuditDiff, compare, load_baseline, snapshot_from_results
from spray.errors import DataError, RunError
from spray.faithfulness import EvaluateTask, evaluate_task
from spray.faithfulness import store_key as evaluate_key
from spray.flag import FlagTask, flag_task, store_key
from spray.model import IN_MEMORY_FACTORY, checkpoint_configs, model_token
from spray.preprocess import PreprocessedClass, PreprocessTask, preprocess_key, preprocess_task
from spray.results import ClassResult, ClusterResult, CrossClassResult, RunInfo, SkippedClass
from spray.timeline import CheckpointState, Timeline, build_timeline

log = logging.getLogger(__name__)
STAGES = ("attribute", "preprocess", "analyse", "embed", "flag", "evaluate")
# the deep-feature lens's stages (analysis.space: features), counted only when they run
LENS_STAGES = ("features", "lens")


@dataclass
class AuditOutcome:
    """What a run produced: where the report is, what was flagged, what was computed vs found cached."""

    report: Path
    classes: list[ClassResult]
    stages: dict[str, dict[str, int]]
    skipped_classes: list[SkippedClass] = field(default_factory=list)
    cross_class: CrossClassResult | None = None
    skipped_samples: list[tuple[str, str]] = field(default_factory=list)  # (sample id, reason)
    diff: AuditDiff | None = None  # against audit.baseline, when given
    timeline: Timeline | None = None  # across the checkpoints of a series (model.weights a list or a glob)

    @property
    def flagged(self) -> list[tuple[ClassResult, ClusterResult]]:
        return [(result, cluster) for result in self.classes for cluster in result.clusters if cluster.flagged]


# ------------------------------------------------------------------------------------------------------
# task bodies: module-level functions so that process and distributed workers can run them




# ------------------------------------------------------------------------------------------------------
# the graph


def audited_classes(audit: AuditSection, neighbors: int, dataset: Dataset) -> tuple[list[int], list[SkippedClass]]:
    """Resolve ``audit.classes``; classes with fewer than ``neighbors + 1`` samples (what the kNN graph of
    ``analysis.neighbors`` needs) are an error when asked for by name, and skipped with a reason when
    auditing every class."""
    by_class = dataset.by_class()
    explicit = audit.classes is not None
    wanted = [dataset.class_index(c) for c in audit.classes] if audit.classes is not None else sorted(by_class)
    needed = neighbors + 1
    chosen, skipped = [], []
    for index in dict.fromkeys(wanted):
        count = len(by_class.get(index, []))
        if count >= needed:
            chosen.append(index)
            continue
        reason = (f"no sample in {dataset.source}" if count == 0 else
                  f"{count} sample(s); the kNN affinity needs at least analysis.neighbors + 1 = {needed}")
        if explicit:
            fix = "remove it from audit.classes" if count == 0 else "lower analysis.neighbors or remove it from audit.classes"
            raise DataError(f"class {dataset.class_names[index]!r} (label {index}) has {reason}: {fix}")
        skipped.append(SkippedClass(index, dataset.class_names[index], reason))
    if not chosen:
        raise DataError("no class has enough samples to audit: " + "; ".join(
            f"{s.class_name}: {s.reason}" for s in skipped))
    return chosen, skipped


@dataclass(frozen=True)
class _GraphContext:
    """What the tasks of every class share: the config, the dataset, the cache folder, the model's content
    token, the file digests, and the annotation of attribution tasks."""

    config: SprayConfig
    dataset: Dataset
    directory: str
    token: str
    digests: DigestIndex
    attribute_annotation: dict[str, Any]


def build_graph(config: SprayConfig, dataset: Dataset, classes: list[int], directory: str,
                token: str, gpu_resource: bool = False) -> dict[int, dict[str, Any]]:
    """Delayed tasks per class: {"shards": [...], "preprocess", "analyse", "embed", "flag"} and "evaluate"
    with ``evaluation.enabled``.

    ``gpu_resource``: attribution tasks ask the distributed scheduler for one unit of the worker resource
    "GPU", so that each GPU explains one shard at a time and shards go only to workers that have one.
    """
    recipients = transplant_recipients(dataset, classes, config.flagging.transplant_images, config.flagging.seed)
    # Unchanged images keep their stored digests, so a re-run does not read the whole dataset again.
    digests = DigestIndex(Path(directory) / "digests.sqlite")
    annotation = {"resources": {"GPU": 1}} if gpu_resource else {}
    context = _GraphContext(config, dataset, directory, token, digests, annotation)
    by_class = dataset.by_class()
    try:
        return {index: _class_tasks(context, index, by_class[index], recipients[index]) for index in classes}
    finally:
        digests.close()


def transplant_recipients(dataset: Dataset, classes: list[int], count: int, seed: int) -> dict[int, list[Sample]]:
    """Per audited class, ``count`` images of other classes (``flagging.transplant_images``) that its
    clusters' regions are pasted into, drawn with ``seed`` (``flagging.seed``) class after class."""
    rng = np.random.default_rng(seed)
    all_labels = np.array([sample.label for sample in dataset.samples])
    recipients = {}
    for index in classes:
        others = np.flatnonzero(all_labels != index)
        chosen = sorted(rng.choice(len(others), size=min(count, len(others)), replace=False)) if len(others) else []
        recipients[index] = [dataset.samples[others[i]] for i in chosen]
    return recipients


def _class_tasks(context: _GraphContext, index: int, samples: list[Sample], recipients: list[Sample]) -> dict[str, Any]:
    """The delayed tasks of one class (``samples``: its samples; ``recipients``: transplant images)."""
    config, directory = context.config, context.directory
    shards, shard_keys, shard_samples = _shard_tasks(context, index, samples)
    pre_key = preprocess_key(config.preprocessing, shard_keys)
    pre = dask.delayed(preprocess_task, pure=True)(
        PreprocessTask(directory, pre_key, shard_samples, config.preprocessing), shards,
        dask_key_name=f"preprocess-{index}-{pre_key[:8]}")
    features, feature_key = _features_task(context, index, samples, pre, pre_key)
    analysis_key = analyse_key(config.analysis, pre_key, feature_key)
    analysis = dask.delayed(analyse_task, pure=True)(
        directory, analysis_key, AnalyseJob(pre, config.analysis, context.dataset.class_names[index], features),
        dask_key_name=f"analyse-{index}-{analysis_key[:8]}")
    embedding_key = embed_key(config.embedding, pre_key)
    embedding = dask.delayed(embed_task, pure=True)(
        directory, embedding_key, EmbedJob(pre, config.embedding), dask_key_name=f"embed-{index}-{embedding_key[:8]}")
    image, attribution = config.data.image, config.attribution
    flag_key = store_key(config.flagging, image, analysis_key, pre_key, context.token,
                         dataset_token(recipients, context.digests))
    flag_inputs = FlagTask(
        class_index=index, model=config.model, image=image, flagging=config.flagging, device=attribution.device,
        batch_size=attribution.batch_size, loader_workers=attribution.loader_workers, samples=tuple(samples),
        recipients=tuple(recipients))
    flagged = dask.delayed(flag_task, pure=True)(
        directory, flag_key, pre, analysis, flag_inputs, dask_key_name=f"flag-{index}-{flag_key[:8]}")
    tasks = {"shards": shards, "preprocess": pre, "analyse": analysis, "embed": embedding, "flag": flagged,
             "_pre_key": pre_key}
    if features is not None and feature_key is not None:
        minimum = config.flagging.min_cluster_size
        key = lens_key(feature_key, flag_key, config.preprocessing, minimum)
        tasks["features"], tasks["lens"] = features, dask.delayed(lens_task, pure=True)(
            directory, key, pre, features, flagged, _feature_job(context, samples), config.preprocessing, minimum,
            dask_key_name=f"lens-{index}-{key[:8]}")
    if config.evaluation.enabled:
        key = evaluate_key(config.evaluation, image, shard_keys, context.token)
        job = EvaluateTask(index, config.model, image, config.evaluation, attribution.device, attribution.batch_size,
                           tuple(tuple(shard) for shard in shard_samples))
        tasks["evaluate"] = dask.delayed(evaluate_task, pure=True)(
            directory, key, shards, job, dask_key_name=f"evaluate-{index}-{key[:8]}")
    return tasks


def _feature_job(context: _GraphContext, samples: list[Sample]) -> FeatureJob:
    """What the lens tasks of a class need (``samples``: the class's samples)."""
    config = context.config
    if not isinstance(config.attribution, LrpAttribution) or config.analysis.layer is None:
        raise AssertionError("the config validates analysis.space features with an LRP attribution and a layer")
    return FeatureJob(config.model, context.token, config.attribution, config.data.image, config.analysis.layer,
                      tuple(samples))


def _features_task(context: _GraphContext, index: int, samples: list[Sample], pre: Any,
                   pre_key: str) -> tuple[Any, str | None]:
    """With ``analysis.space: features``, the class's features task and its key (spray.analysis.features)."""
    if context.config.analysis.space != "features":
        return None, None
    job = _feature_job(context, samples)
    key = features_key(job, pre_key)
    return dask.delayed(features_task, pure=True)(context.directory, key, pre, job,
                                                   dask_key_name=f"features-{index}-{key[:8]}"), key


def _shard_tasks(context: _GraphContext, index: int, samples: list[Sample]) -> tuple[list[Any], list[str],
                                                                                      list[list[Sample]]]:
    """The class's attribution tasks, one per ``attribution.shard_size`` samples; their keys; their samples."""
    config = context.config
    size = config.attribution.shard_size
    shard_samples = [samples[i : i + size] for i in range(0, len(samples), size)]
    shards, keys = [], []
    for number, shard in enumerate(shard_samples):
        key = shard_key(context.token, index, config.attribution, config.data.image,
                        dataset_token(shard, context.digests))
        task = ShardTask(context.directory, key, shard, index, config.model, context.token, config.attribution,
                         config.data.image)
        with dask.annotate(**context.attribute_annotation):
            shards.append(dask.delayed(attribute_task, pure=True)(
                task, dask_key_name=f"attribute-{index}-{number}-{key[:8]}"))
        keys.append(key)
    return shards, keys, shard_samples


def build_cross_class(analysis: AnalysisConfig, embedding: EmbeddingConfig, graph: dict[int, dict[str, Any]],
                      directory: str) -> Any:
    """The cross-class task: one analysis of every audited class's preprocessed maps, keyed by them."""
    classes = sorted(graph)
    key = cross_class_key(analysis, embedding, [graph[index]["_pre_key"] for index in classes], classes)
    job = CrossClassJob(tuple(graph[index]["preprocess"] for index in classes), tuple(classes), analysis, embedding)
    return dask.delayed(cross_class_task, pure=True)(directory, key, job, dask_key_name=f"cross_class-{key[:8]}")


def workers_declare_gpu(client: Any) -> bool:
    """Whether a worker of the distributed cluster declares the resource "GPU" (``dask worker --resources
    GPU=1``). Only then do attribution tasks ask for it: a resource no worker has would never be granted."""
    workers = client.scheduler_info(n_workers=-1).get("workers", {})
    return any("GPU" in (worker.get("resources") or {}) for worker in workers.values())


@contextlib.contextmanager
def scheduler(settings: DaskConfig) -> Iterator[dict[str, Any]]:
    """Keyword arguments for dask.compute under the ``dask`` section's settings (a context manager, shared
    by the audit and ``spray evaluate``): a distributed client when an address is given, else the local
    scheduler (threads: a pool of this run's own, waited for on exit)."""
    if settings.address:
        with _client(settings.address, settings.connect_timeout) as client:
            yield {"scheduler": client}
        return
    options: dict[str, Any] = {"scheduler": settings.scheduler}
    if settings.workers and settings.scheduler != "synchronous":
        options["num_workers"] = settings.workers
    if settings.scheduler == "processes":
        # the processes scheduler makes its own pool and waits for it when the run ends, even on error; its
        # workers die with this process, so a killed run leaves none computing (and writing to the cache)
        options["initializer"] = die_with_parent
    if settings.scheduler != "threads":
        yield options
        return
    from dask.system import CPU_COUNT
    from dask.threaded import ContextAwareThreadPoolExecutor

    # A pool of this run's own, waited for when the run ends: when one task fails, dask raises at once while
    # the other running tasks go on in the background; waiting for them means that when run_audit returns,
    # no task of it is still writing to the cache (or racing a re-run for the same entries).
    pool = ContextAwareThreadPoolExecutor(settings.workers or CPU_COUNT, thread_name_prefix="spray-task")
    try:
        yield {**options, "pool": pool}
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


@contextlib.contextmanager
def _client(address: str, timeout: float) -> Iterator[Any]:
    """A distributed client of the scheduler at ``address``; RunError when it does not answer within
    ``timeout`` seconds (``dask.connect_timeout``)."""
    from distributed import Client

    try:
        client = Client(address, timeout=timeout)
    except OSError as error:
        raise RunError(f"cannot reach the Dask scheduler at dask.address={address!r} within "
                       f"dask.connect_timeout={timeout:g} s: {error}") from None
    with client:
        yield client


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this worker process when the process that started it dies (prctl
    PR_SET_PDEATHSIG); elsewhere nothing. Runs as the initializer of the processes scheduler's workers."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the request was made
        os._exit(1)


@dataclass
class AuditComputed:
    """What an audit computed, before any report is drawn: the results of the audited classes, the run's
    metadata for the report, the stage counts, and what was skipped."""

    classes: list[ClassResult]
    run: RunInfo
    stages: dict[str, dict[str, int]]
    skipped_classes: list[SkippedClass]
    cross_class: CrossClassResult | None
    skipped_samples: list[tuple[str, str]]  # (sample id, reason)


def run_audit(config: SprayConfig, *, use_cache: bool = True, progress: bool = True) -> AuditOutcome:
    """Run the whole audit of the config's files and write the report; raises SprayError subclasses with
    exit codes."""
    # an output that cannot be written fails now, not after the whole audit has been computed
    check_output_folders(config)
    # read before any work, and before this run's report may replace it (the baseline can be the output folder)
    baseline = load_baseline(config.audit.baseline) if config.audit.baseline else None
    dataset = load_dataset(config.data)
    timeline = None
    if config.model.is_series:
        done, timeline = compute_series(config, dataset, use_cache=use_cache, progress=progress)
    else:
        done = compute_audit(config, dataset, use_cache=use_cache, progress=progress)
    diff = (compare(snapshot_from_results(done.classes), baseline, PathShower(config)(config.audit.baseline))
            if baseline is not None else None)
    report = _write_report(config, done.classes, done.run, done.cross_class, diff, timeline)
    return AuditOutcome(report, done.classes, done.stages, done.skipped_classes, done.cross_class,
                        done.skipped_samples, diff, timeline)


def compute_series(config: SprayConfig, dataset: Dataset, *, use_cache: bool = True,
                   progress: bool = True) -> tuple[AuditComputed, Timeline]:
    """Audit each checkpoint of the series ``model.weights`` in its order and follow the flagged patterns
    across them (``spray.timeline``). The checkpoints share the dataset, its file digests and the cache
    folder; each checkpoint's entries are keyed by its own weights, so a checkpoint audited before (alone or
    in a series) is found in the cache. Returns the last checkpoint's results, with the stage counts and the
    duration of the whole series, and the timeline."""
    started, started_at = time.perf_counter(), datetime.now(timezone.utc)
    shown = PathShower(config)
    states = []
    checkpoints = checkpoint_configs(config.model)
    with cache_folder(config.cache, use_cache) as directory:
        for number, model in enumerate(checkpoints, start=1):
            log.info("checkpoint %d of %d: %s", number, len(checkpoints), shown(model.weights))
            done = compute_audit(config.model_copy(update={"model": model}), dataset, use_cache=use_cache,
                                 progress=progress, directory=directory, log_mapping=number == 1)
            states.append(CheckpointState.of(shown(model.weights), done.classes, done.skipped_classes, done.stages))
    stages = {stage: {kind: sum(state.stages.get(stage, {}).get(kind, 0) for state in states)
                      for kind in ("computed", "cached")} for stage in states[-1].stages}
    run = dataclasses.replace(done.run, config=shown.config(), stages=stages, model=_model_text(config, shown),
                              started=started_at.isoformat(timespec="seconds"),
                              duration_s=time.perf_counter() - started)
    return dataclasses.replace(done, run=run, stages=stages), build_timeline(states, config.flagging.threshold)


def compute_audit(config: SprayConfig, dataset: Dataset, *, use_cache: bool = True,
                  progress: bool = True, directory: Path | None = None, log_mapping: bool = True) -> AuditComputed:
    """Check the model on real images, run the graph of ``dataset``'s audited classes and read the results
    back; no report is drawn. The model is what ``config.model`` loads (a factory, or an in-memory model of
    ``spray.model.in_memory_model``). ``directory``: a cache folder opened by the caller (a series of
    checkpoints shares one; default: ``cache_folder``); ``log_mapping``: log the label mapping (a series
    logs its first checkpoint's only). Raises SprayError subclasses with exit codes."""
    started_at = datetime.now(timezone.utc)
    started = time.perf_counter()
    if use_cache and config.cache.enabled:
        check_writable_folder(Path(config.cache.directory), "cache.directory")
    token = model_token(config.model)
    # Fail fast, before any task runs: the model must load, take the configured images, have one output per
    # class, and every layer must be explainable (the same checks as `spray validate`).
    checked = preflight(config, dataset)
    if log_mapping:
        log_label_mapping(checked.mapping)
    classes, skipped_classes = audited_classes(config.audit, config.analysis.neighbors, dataset)
    if "umap" in config.embedding.methods:
        # Imported here, once, in this thread: concurrent first imports from task threads can race.
        import_umap()
    with (contextlib.nullcontext(directory) if directory is not None
          else cache_folder(config.cache, use_cache)) as folder:
        done = _compute_again_if_corrupt(config, dataset, classes, folder, token, progress)
    skipped_classes = skipped_classes + done.skipped_classes
    skipped_samples = [(i, r) for i, r in dataset.missing] + done.skipped_samples
    for result in done.results:
        skipped_samples += result.skipped_samples
    stages = _stage_counts(done.entries, done.cross_entry)
    run = _run_info(config, dataset, checked.mapping, stages, (skipped_classes, skipped_samples),
                    started_at, time.perf_counter() - started)
    return AuditComputed(done.results, run, stages, skipped_classes, done.cross_result, skipped_samples)


@contextlib.contextmanager
def cache_folder(cache: CacheConfig, use_cache: bool) -> Iterator[Path]:
    """The cache folder (``cache.directory``), or a temporary one removed afterwards when the cache is off;
    staging folders of dead runs in it are swept first."""
    temporary = None
    if use_cache and cache.enabled:
        directory = Path(cache.directory)
    else:
        temporary = directory = Path(tempfile.mkdtemp(prefix="spray-run-"))
    directory.mkdir(parents=True, exist_ok=True)
    sweep_stale(directory)
    try:
        yield directory
    finally:
        if temporary is not None:
            shutil.rmtree(temporary, ignore_errors=True)


def _compute_again_if_corrupt(config: SprayConfig, dataset: Dataset, classes: list[int], directory: Path,
                              token: str, progress: bool) -> _Computed:
    """``_compute``, run again when an entry is found damaged while a chunk of it is read: the damaged entry
    is gone then, and the next run recomputes it (and every entry being computed from it)."""
    for attempt in range(_CORRUPT_ATTEMPTS):
        try:
            return _compute(config, dataset, classes, directory, token, progress)
        except CorruptEntry:
            if attempt == _CORRUPT_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable: the last attempt returns or raises")


def _run_info(config: SprayConfig, dataset: Dataset, mapping: LabelMapping, stages: dict[str, dict[str, int]],
              skipped: tuple[list[SkippedClass], list[tuple[str, str]]], started_at: datetime,
              duration_s: float) -> RunInfo:
    """What the report says about the run, its paths shown as ``report.absolute_paths`` asks."""
    skipped_classes, skipped_samples = skipped
    shown = PathShower(config)
    return RunInfo(
        config_path=shown(config.path) if config.path else "",
        config=shown.config(),
        model=_model_text(config, shown),
        data=f"{shown(dataset.source)} ({len(dataset.samples)} samples, {len(dataset.class_names)} classes)",
        versions=_versions(),
        started=started_at.isoformat(timespec="seconds"),
        duration_s=duration_s,
        device=str(resolve_device(config.attribution.device)),
        skipped_samples=[(i, shown.text(r, dataset.source)) for i, r in skipped_samples],
        skipped_classes=[SkippedClass(s.class_index, s.class_name, shown.text(s.reason, dataset.source))
                         for s in skipped_classes],
        stages=stages,
        label_names=list(mapping.names),
        label_source=mapping.source,
    )


def _model_text(config: SprayConfig, shown: PathShower) -> str:
    """The model as the report names it: factory and weights (a series: how many checkpoints, the last)."""
    if config.model.factory == IN_MEMORY_FACTORY:
        return f"{config.model.kwargs['name']} (in memory, state {config.model.kwargs['token'][:12]})"
    weights = config.model.weights
    if isinstance(weights, list):
        return f"{shown(config.model.factory)} with {len(weights)} checkpoints, the last {shown(weights[-1])}"
    return shown(config.model.factory) + (f" with weights {shown(weights)}" if weights else "")


def _write_report(config: SprayConfig, results: list[ClassResult], run: RunInfo,
                  cross_result: CrossClassResult | None, diff: AuditDiff | None = None,
                  timeline: Timeline | None = None) -> Path:
    """Draw the report into ``output``; class pages in worker processes unless the scheduler is synchronous."""
    from spray.report import write_report

    # the synchronous scheduler is for debugging: the report is drawn in this process too
    in_process = config.dask.scheduler == "synchronous" and not config.dask.address
    log.info("writing the report (%d classes) to %s", len(results), config.output)
    drawing = time.perf_counter()
    report = write_report(Path(config.output), results, run, cross_result,
                          workers=1 if in_process else config.dask.workers, diff=diff, timeline=timeline)
    log.info("report written in %.1f s", time.perf_counter() - drawing)
    return report


def log_label_mapping(mapping: LabelMapping) -> None:
    """Log which model output each class is audited against."""
    for line in mapping_lines(mapping):
        log.info("%s", line)


def mapping_lines(mapping: LabelMapping, shown: int = 20) -> list[str]:
    """The label mapping as terminal lines: a heading and the first ``shown`` outputs."""
    lines = [f"labels -> model outputs ({LABEL_SOURCES[mapping.source]}):"]
    lines += [f"  {line}" for line in mapping.lines()[:shown]]
    if len(mapping.names) > shown:
        lines.append(f"  ... and {len(mapping.names) - shown} more outputs (all in summary.json)")
    return lines


class PathShower:
    """Paths as the report and summary.json show them: relative to the config file's folder (``../x`` where
    needed), or absolute with ``report.absolute_paths``, so that a shared report does not expose the folders
    of the machine it ran on."""

    _PATH_KEYS = (("model", "weights"), ("data", "manifest"), ("data", "root"), ("cache", "directory"),
                  ("output",), ("audit", "baseline"))

    def __init__(self, config: SprayConfig) -> None:
        self._config = config
        self._absolute = config.report.absolute_paths
        self._base = Path(config.path).parent if config.path else Path.cwd()

    def __call__(self, path: Any) -> str:
        """One path (a factory 'file.py:callable' keeps its callable)."""
        text = str(path)
        if self._absolute:
            return text
        if not isinstance(path, Path) and ":" in text and text.rpartition(":")[0].endswith(".py"):
            file, _, name = text.rpartition(":")
            return f"{self(Path(file))}:{name}"
        if not Path(text).is_absolute():
            return text
        return Path(os.path.relpath(text, self._base)).as_posix()

    def text(self, message: str, folder: Path) -> str:
        """A message (a skip reason) with ``folder`` (and the config's folder) written relative."""
        if self._absolute:
            return message
        for absolute in sorted({str(Path(folder).parent if Path(folder).is_file() else folder), str(self._base)},
                               key=len, reverse=True):
            message = message.replace(absolute + os.sep, self(Path(absolute)) + "/")
        return message

    def config(self) -> dict[str, Any]:
        """The validated config as JSON-ready data, its paths shown like every other path."""
        dumped = self._config.model_dump(mode="json", exclude={"path"})
        if self._absolute:
            return dumped
        for keys in self._PATH_KEYS:
            holder: Any = dumped
            for key in keys[:-1]:
                holder = holder.get(key) if isinstance(holder, dict) else None
            value = holder.get(keys[-1]) if isinstance(holder, dict) else None
            if isinstance(value, list):  # a series of checkpoints
                holder[keys[-1]] = [self(Path(item)) for item in value]
            elif value is not None:
                holder[keys[-1]] = self(Path(value))
        dumped["model"]["factory"] = self(self._config.model.factory)
        return dumped


# A run meets a damaged cache entry while reading a chunk at most once per entry; two more attempts than
# one cover a second entry damaged in the same run, and a damage that recurs is reported rather than looped on.
_CORRUPT_ATTEMPTS = 3


@dataclass
class _Computed:
    """The graph's entries read back: results of the audited classes, and the classes the analysis skipped
    (too few usable samples) with the samples that were skipped in them."""

    entries: dict[int, dict[str, Any]]
    cross_entry: Entry | None
    results: list[ClassResult]
    cross_result: CrossClassResult | None
    skipped_classes: list[SkippedClass]
    skipped_samples: list[tuple[str, str]]


def _compute(config: SprayConfig, dataset: Dataset, classes: list[int], directory: Path, token: str,
             progress: bool) -> _Computed:
    """Run the graph and read its entries back."""
    computed, cross_entry = compute_entries(config, dataset, classes, directory, token, progress,
                                            config.audit.cross_class)
    by_class = dataset.by_class()
    log.info("reading the results back: prototypes, and every member of the flagged clusters")
    results, skipped, skipped_samples = [], [], []
    for index in classes:
        _, analysis_meta = computed[index]["analyse"].read()
        if "skipped" in analysis_meta:
            skipped.append(SkippedClass(index, dataset.class_names[index], analysis_meta["skipped"]))
            skipped_samples += PreprocessedClass.read(computed[index]["preprocess"]).skipped
        else:
            results.append(assemble_class(config, dataset, index, by_class[index], computed[index]))
    note_shared_patterns(results)
    if skipped and not results:
        raise DataError("no class could be audited: " + "; ".join(f"{s.class_name}: {s.reason}" for s in skipped))
    cross_result = assemble_cross_class(dataset, cross_entry) if cross_entry is not None else None
    return _Computed(computed, cross_entry, results, cross_result, skipped, skipped_samples)


def compute_entries(config: SprayConfig, dataset: Dataset, classes: list[int], directory: Path, token: str,
                    progress: bool, cross_class: bool) -> tuple[dict[int, dict[str, Any]], Entry | None]:
    """Run the audit graph of ``classes`` in the cache folder ``directory`` (stored entries are found, not
    recomputed) and return its entries per class (``build_graph``'s layout) and the cross-class entry."""
    with scheduler(config.dask) as options, _progress(progress and not config.dask.address):
        gpu_resource = bool(config.dask.address) and workers_declare_gpu(options["scheduler"])
        graph = build_graph(config, dataset, classes, str(directory), token, gpu_resource)
        cross = build_cross_class(config.analysis, config.embedding, graph, str(directory)) if cross_class else None
        computed, cross_entry = dask.compute(graph, cross, **options)
    return computed, cross_entry


def _stage_counts(computed: dict[int, dict[str, Any]], cross_entry: Entry | None) -> dict[str, dict[str, int]]:
    """Entries computed and found cached, per stage (and cross_class when it ran)."""
    counts = {stage: {"computed": 0, "cached": 0} for stage in STAGES}
    for tasks in computed.values():
        entries = list(tasks["shards"]) + [tasks[s] for s in STAGES[1:] + LENS_STAGES if s in tasks]
        for entry in entries:
            counts.setdefault(entry.stage, {"computed": 0, "cached": 0})
            counts[entry.stage]["computed" if entry.computed else "cached"] += 1
    if cross_entry is not None:
        counts["cross_class"] = {"computed": int(cross_entry.computed), "cached": int(not cross_entry.computed)}
    return counts


def assemble_cross_class(dataset: Dataset, entry: Entry) -> CrossClassResult:
    """Read the cross-class entry back as the CrossClassResult the report is drawn from."""
    arrays, meta = entry.read()
    classes = arrays["classes"]
    return CrossClassResult(
        ids=meta["ids"], classes=classes,
        class_names={int(i): dataset.class_names[int(i)] for i in np.unique(classes)},
        eigenvalues=arrays["eigenvalues"], n_clusters=int(meta["n_clusters"]), cluster_labels=arrays["labels"],
        embeddings={name: arrays[f"embedding_{name}"] for name in meta["embeddings"]}, notes=meta["notes"])


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in ("spray", "torch", "numpy", "scipy", "scikit-learn", "umap-learn", "dask", "pydantic"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions


@contextlib.contextmanager
def _progress(enabled: bool) -> Iterator[None]:
    """Per-stage progress bars for the local schedulers (tqdm on stderr)."""
    if not enabled:
        yield
        return
    from spray.progress import StageProgress

    with StageProgress(STAGES):
        yield
