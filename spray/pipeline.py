"""The audit as a Dask graph: attribute -> preprocess -> analyse, embed -> flag, then the report.

Every task is a cached computation (``spray.cache.cached``) whose key is the token of what determines it:

- attribute (one task per shard of a class): the model token (factory source, kwargs, weight bytes), the
  attribution section, the image section, the shard's (id, label, file digest) list;
- preprocess: the preprocessing section and the shard keys;
- analyse / embed: their own section and the preprocess key;
- flag: the flagging section, the analyse and preprocess keys, the model token and the digests of the
  transplant images;
- cross_class (with ``audit.cross_class``): the analysis and embedding sections and every class's
  preprocess key.

Attribution entries stream their full-resolution relevance to a chunked zarr array (``cached_stream``);
every later stage holds only what it needs (preprocess: one chunk at a time; the report: the prototypes).
On a distributed cluster whose workers declare the resource "GPU", attribution tasks ask for one.

So an unchanged config recomputes nothing, an analysis-only change recomputes analysis and flagging, and a
changed weight file or image recomputes what depends on it. The report is always rewritten from the entries.
"""

from __future__ import annotations

import contextlib
import ctypes
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
from dask.base import tokenize

import spray.flag
from spray import __version__
from spray.analysis import import_umap
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
from spray.attribute import attribute_shard, attribution_settings, resolve_device
from spray.cache import CorruptEntry, Entry, cached, cached_stream, sweep_stale
from spray.checks import LABEL_SOURCES, LabelMapping, check_output_folders, preflight
from spray.config import SprayConfig
from spray.data import (
    Dataset,
    DigestIndex,
    Sample,
    dataset_token,
    iter_pixel_batches,
    load_dataset,
    load_pixels,
    read_pixels,
)
from spray.errors import DataError, RunError
from spray.flag import CONSISTENCY, NECESSITY, REGION_MASS, SUFFICIENCY
from spray.model import load_model, model_token
from spray.preprocess import preprocess
from spray.results import ClassResult, ClusterResult, CrossClassResult, RunInfo, SkippedClass, Thumbnail

log = logging.getLogger(__name__)
# Part of every key: a new release may compute differently. The flag thresholds are constants of the code,
# so they are part of the flag stage's key.
_CODE = __version__
# Bump the revision when what a stage stores changes within a release (2: flag entries hold refined labels;
# attribute 2: relevance in a chunked zarr array beside the npz).
_FLAG_CODE = (__version__, 4, CONSISTENCY, NECESSITY, SUFFICIENCY, REGION_MASS)
_ATTRIBUTE_CODE = (__version__, 2)
STAGES = ("attribute", "preprocess", "analyse", "embed", "flag")


@dataclass
class AuditOutcome:
    """What a run produced: where the report is, what was flagged, what was computed vs found cached."""

    report: Path
    classes: list[ClassResult]
    stages: dict[str, dict[str, int]]
    skipped_classes: list[SkippedClass] = field(default_factory=list)
    cross_class: CrossClassResult | None = None
    skipped_samples: list[tuple[str, str]] = field(default_factory=list)  # (sample id, reason)

    @property
    def flagged(self) -> list[tuple[ClassResult, ClusterResult]]:
        return [(result, cluster) for result in self.classes for cluster in result.clusters if cluster.flagged]


# ------------------------------------------------------------------------------------------------------
# task bodies: module-level functions so that process and distributed workers can run them


def _attribute_task(directory, key, samples, class_index, model_config, token, attribution, image) -> Entry:
    return cached_stream(directory, "attribute", key, attribute_shard, samples, class_index, model_config, token,
                         attribution, image)


def _preprocess(shards: list[Entry], shard_samples: list[list[Sample]], config) -> tuple[dict, dict]:
    """Preprocessed maps of every explained sample, reading each shard's relevance chunk by chunk, so that
    memory holds one chunk of full-resolution relevance and the (N, h, w) maps."""
    ids, logits, conservation, maps, skipped = [], [], [], [], []
    for entry, samples in zip(shards, shard_samples):
        arrays, meta = entry.read()
        shard_ids = [samples[i].id for i in arrays["index"]]
        relevance = entry.open_array("relevance")
        step = relevance.chunks[0]
        for start in range(0, relevance.shape[0], step):
            # each map is normalised on its own, so chunk by chunk gives the same maps as all at once
            maps.append(preprocess(relevance[start : start + step], config, shard_ids[start : start + step]))
        ids += shard_ids
        if len(shard_ids):  # a shard whose every image was skipped stores arrays without their columns
            logits.append(arrays["logits"])
            conservation.append(arrays["conservation"])
        skipped += meta["skipped"]
    return (
        {"maps": np.concatenate(maps) if maps else np.zeros((0, *config.size), np.float32),
         "logits": np.concatenate(logits) if logits else np.zeros((0, 0), np.float32),
         "conservation": np.concatenate(conservation) if conservation else np.zeros(0, np.float32)},
        {"ids": ids, "skipped": skipped},
    )


def _preprocess_task(directory, key, shards, shard_samples, config) -> Entry:
    return cached(directory, "preprocess", key, _preprocess, shards, shard_samples, config)


def _flag(pre: Entry, analysis: Entry, samples_by_id: dict[str, Sample], recipients: list[Sample],
          class_index: int, model_config, image, flagging, device: str, batch_size: int = 256,
          loader_workers: int = 2) -> tuple[dict, dict]:
    pre_arrays, pre_meta = pre.read()
    analysis_arrays, analysis_meta = analysis.read()
    if "skipped" in analysis_meta:
        return {}, {"clusters": []}
    members = [samples_by_id[i] for i in pre_meta["ids"]]

    def batches() -> Iterator[np.ndarray]:
        # the class streams past twice (spray.flag.score_clusters); an image that decoded for attribution
        # and fails now has changed on disk since
        for batch in iter_pixel_batches(members, image, batch_size, loader_workers):
            if batch.failed:
                sample, reason = batch.failed[0]
                raise RunError(f"class {class_index}: sample {sample} can no longer be read ({reason}); "
                               "the images changed while auditing: re-run")
            yield batch.pixels

    recipient_pixels, _, _ = load_pixels(recipients, image)
    model = load_model(model_config)
    scored = spray.flag.score_clusters(model, class_index, batches, pre_arrays["maps"], analysis_arrays["labels"],
                                       recipient_pixels, image, flagging, resolve_device(device))
    labels = spray.flag.join_pattern_carriers(analysis_arrays["labels"], scored)
    regions = np.stack([s.region if s.region is not None else np.zeros(pre_arrays["maps"].shape[1:], bool)
                        for s in scored]) if scored else np.zeros((0, *pre_arrays["maps"].shape[1:]), bool)
    meta = {"clusters": [{"id": s.id, "size": s.size, "score": s.score, "flagged": s.flagged,
                          "evidence": s.evidence, "has_region": s.region is not None} for s in scored]}
    return {"regions": regions, "labels": labels}, meta


def _flag_task(directory, key, pre, analysis, samples_by_id, recipients, class_index, model_config, image,
               flagging, device, batch_size, loader_workers) -> Entry:
    return cached(directory, "flag", key, _flag, pre, analysis, samples_by_id, recipients, class_index,
                  model_config, image, flagging, device, batch_size, loader_workers)


# ------------------------------------------------------------------------------------------------------
# the graph


def audited_classes(config: SprayConfig, dataset: Dataset) -> tuple[list[int], list[SkippedClass]]:
    """Resolve ``audit.classes``; classes too small for the kNN graph are an error when asked for by name,
    and skipped with a reason when auditing every class."""
    by_class = dataset.by_class()
    explicit = config.audit.classes is not None
    wanted = [dataset.class_index(c) for c in config.audit.classes] if explicit else sorted(by_class)
    needed = config.analysis.neighbors + 1
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


def build_graph(config: SprayConfig, dataset: Dataset, classes: list[int], directory: str,
                token: str, gpu_resource: bool = False) -> dict[int, dict[str, Any]]:
    """Delayed tasks per class: {"shards": [...], "preprocess", "analyse", "embed", "flag"}.

    ``gpu_resource``: attribution tasks ask the distributed scheduler for one unit of the worker resource
    "GPU", so that each GPU explains one shard at a time and shards go only to workers that have one.
    """
    attribute_annotation = {"resources": {"GPU": 1}} if gpu_resource else {}
    by_class = dataset.by_class()
    rng = np.random.default_rng(config.flagging.seed)
    attribution, image = config.attribution, config.data.image
    graph: dict[int, dict[str, Any]] = {}
    # Unchanged images keep their stored digests, so a re-run does not read the whole dataset again.
    digests = DigestIndex(Path(directory) / "digests.sqlite")
    all_labels = np.array([sample.label for sample in dataset.samples])
    try:
        for index in classes:
            samples = by_class[index]
            name = dataset.class_names[index]
            shard_samples = [samples[i: i + attribution.shard_size] for i in range(0, len(samples), attribution.shard_size)]
            shard_keys, shards = [], []
            for number, shard in enumerate(shard_samples):
                key = tokenize("attribute", _ATTRIBUTE_CODE, token, index,
                               attribution_settings(attribution),
                               image.model_dump(), dataset_token(shard, digests))
                shard_keys.append(key)
                with dask.annotate(**attribute_annotation):
                    shards.append(dask.delayed(_attribute_task, pure=True)(
                        directory, key, shard, index, config.model, token, attribution, image,
                        dask_key_name=f"attribute-{index}-{number}-{key[:8]}"))
            pre_key = tokenize("preprocess", _CODE, config.preprocessing.model_dump(), shard_keys)
            pre = dask.delayed(_preprocess_task, pure=True)(
                directory, pre_key, shards, shard_samples, config.preprocessing, dask_key_name=f"preprocess-{index}-{pre_key[:8]}")
            analysis_key = analyse_key(config.analysis, pre_key)
            analysis = dask.delayed(analyse_task, pure=True)(
                directory, analysis_key, AnalyseJob(pre, config.analysis, name),
                dask_key_name=f"analyse-{index}-{analysis_key[:8]}")
            embedding_key = embed_key(config.embedding, pre_key)
            embedding = dask.delayed(embed_task, pure=True)(
                directory, embedding_key, EmbedJob(pre, config.embedding),
                dask_key_name=f"embed-{index}-{embedding_key[:8]}")
            others = np.flatnonzero(all_labels != index)
            chosen = sorted(rng.choice(len(others), size=min(config.flagging.transplant_images, len(others)),
                                       replace=False)) if len(others) else []
            recipients = [dataset.samples[others[i]] for i in chosen]
            flag_key = tokenize("flag", _FLAG_CODE, config.flagging.model_dump(), analysis_key, pre_key, token, image.model_dump(),
                                dataset_token(recipients, digests))
            flagged = dask.delayed(_flag_task, pure=True)(
                directory, flag_key, pre, analysis, {s.id: s for s in samples}, recipients, index, config.model,
                image, config.flagging, attribution.device, attribution.batch_size, attribution.loader_workers,
                dask_key_name=f"flag-{index}-{flag_key[:8]}")
            graph[index] = {"shards": shards, "preprocess": pre, "analyse": analysis, "embed": embedding,
                            "flag": flagged, "_pre_key": pre_key}
    finally:
        digests.close()
    return graph


def build_cross_class(config: SprayConfig, graph: dict[int, dict[str, Any]], directory: str) -> Any:
    """The cross-class task: one analysis of every audited class's preprocessed maps, keyed by them."""
    classes = sorted(graph)
    key = cross_class_key(config.analysis, config.embedding, [graph[index]["_pre_key"] for index in classes], classes)
    job = CrossClassJob(tuple(graph[index]["preprocess"] for index in classes), tuple(classes), config.analysis,
                        config.embedding)
    return dask.delayed(cross_class_task, pure=True)(directory, key, job, dask_key_name=f"cross_class-{key[:8]}")


def workers_declare_gpu(client: Any) -> bool:
    """Whether a worker of the distributed cluster declares the resource "GPU" (``dask worker --resources
    GPU=1``). Only then do attribution tasks ask for it: a resource no worker has would never be granted."""
    workers = client.scheduler_info(n_workers=-1).get("workers", {})
    return any("GPU" in (worker.get("resources") or {}) for worker in workers.values())


@contextlib.contextmanager
def _scheduler(config: SprayConfig) -> Iterator[dict[str, Any]]:
    """Keyword arguments for dask.compute: a distributed client when an address is given."""
    if config.dask.address:
        from distributed import Client

        try:
            client = Client(config.dask.address, timeout="20s")
        except OSError as error:
            raise RunError(f"cannot reach the Dask scheduler at dask.address={config.dask.address!r}: {error}") from None
        with client:
            yield {"scheduler": client}
        return
    options: dict[str, Any] = {"scheduler": config.dask.scheduler}
    if config.dask.workers and config.dask.scheduler != "synchronous":
        options["num_workers"] = config.dask.workers
    if config.dask.scheduler == "processes":
        # the processes scheduler makes its own pool and waits for it when the run ends, even on error; its
        # workers die with this process, so a killed run leaves none computing (and writing to the cache)
        options["initializer"] = die_with_parent
    if config.dask.scheduler != "threads":
        yield options
        return
    from dask.system import CPU_COUNT
    from dask.threaded import ContextAwareThreadPoolExecutor

    # A pool of this run's own, waited for when the run ends: when one task fails, dask raises at once while
    # the other running tasks go on in the background; waiting for them means that when run_audit returns,
    # no task of it is still writing to the cache (or racing a re-run for the same entries).
    pool = ContextAwareThreadPoolExecutor(config.dask.workers or CPU_COUNT, thread_name_prefix="spray-task")
    try:
        yield {**options, "pool": pool}
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


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


def run_audit(config: SprayConfig, *, use_cache: bool = True, progress: bool = True) -> AuditOutcome:
    """Run the whole audit and write the report; raises SprayError subclasses with exit codes."""
    started_at = datetime.now(timezone.utc)
    started = time.perf_counter()
    # an output that cannot be written fails now, not after the whole audit has been computed
    check_output_folders(config)
    if config.demo is not None:
        from spray.demo import build_case

        log.info("demo case in %s (built once, then reused)", config.demo.directory)
        record = build_case(config.demo)
        if "artifact_flip_rate" in record:
            log.info(
                "demo model: held-out accuracy %.0f %%; pasting the %s into held-out images of other classes "
                "turns %.0f %% of them into class %d (%.0f %% without it): the model uses the shortcut",
                100 * record["test_accuracy"], config.demo.artifact, 100 * record["artifact_flip_rate"],
                config.demo.target_class, 100 * record["flip_rate_without_artifact"])
    dataset = load_dataset(config.data)
    token = model_token(config.model)
    # Fail fast, before any task runs: the model must load, take the configured images, have one output per
    # class, and every layer must be explainable (the same checks as `spray validate`).
    checked = preflight(config, dataset)
    log_label_mapping(checked.mapping)
    classes, skipped_classes = audited_classes(config, dataset)
    if "umap" in config.embedding.methods:
        # Imported here, once, in this thread: concurrent first imports from task threads can race.
        import_umap()

    temporary = None
    if use_cache and config.cache.enabled:
        directory = Path(config.cache.directory)
    else:
        temporary = directory = Path(tempfile.mkdtemp(prefix="spray-run-"))
    directory.mkdir(parents=True, exist_ok=True)
    sweep_stale(directory)
    try:
        for attempt in range(_CORRUPT_ATTEMPTS):
            try:
                done = _compute(config, dataset, classes, directory, token, progress)
                break
            except CorruptEntry:
                # the damaged entry was found while a chunk was read and is gone now: running the graph
                # again recomputes it (and every entry that was being computed from it)
                if attempt == _CORRUPT_ATTEMPTS - 1:
                    raise
    finally:
        if temporary is not None:
            shutil.rmtree(temporary, ignore_errors=True)
    computed, cross_entry, results, cross_result = done.entries, done.cross_entry, done.results, done.cross_result
    skipped_classes = skipped_classes + done.skipped_classes
    stages = _stage_counts(computed)
    if cross_entry is not None:
        stages["cross_class"] = {"computed": int(cross_entry.computed), "cached": int(not cross_entry.computed)}
    skipped_samples = [(i, r) for i, r in dataset.missing] + done.skipped_samples
    for result in results:
        skipped_samples += result.skipped_samples
    shown = PathShower(config)
    run = RunInfo(
        config_path=shown(config.path) if config.path else "",
        config=shown.config(),
        model=shown(config.model.factory) + (f" with weights {shown(config.model.weights)}" if config.model.weights else ""),
        data=f"{shown(dataset.source)} ({len(dataset.samples)} samples, {len(dataset.class_names)} classes)",
        versions=_versions(),
        started=started_at.isoformat(timespec="seconds"),
        duration_s=time.perf_counter() - started,
        device=str(resolve_device(config.attribution.device)),
        skipped_samples=[(i, shown.text(r, dataset.source)) for i, r in skipped_samples],
        skipped_classes=[SkippedClass(s.class_index, s.class_name, shown.text(s.reason, dataset.source))
                         for s in skipped_classes],
        stages=stages,
        label_names=list(checked.mapping.names),
        label_source=checked.mapping.source,
    )
    from spray.report import write_report

    # the synchronous scheduler is for debugging: the report is drawn in this process too
    in_process = config.dask.scheduler == "synchronous" and not config.dask.address
    log.info("writing the report (%d classes) to %s", len(results), config.output)
    drawing = time.perf_counter()
    report = write_report(Path(config.output), results, run, cross_result,
                          workers=1 if in_process else config.dask.workers)
    log.info("report written in %.1f s", time.perf_counter() - drawing)
    return AuditOutcome(report, results, stages, skipped_classes, cross_result, skipped_samples)


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
                  ("output",), ("demo", "directory"))

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
            holder = dumped
            for key in keys[:-1]:
                holder = holder.get(key) if isinstance(holder, dict) else None
            if isinstance(holder, dict) and holder.get(keys[-1]) is not None:
                holder[keys[-1]] = self(Path(holder[keys[-1]]))
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
    with _scheduler(config) as options, _progress(progress and not config.dask.address):
        gpu_resource = bool(config.dask.address) and workers_declare_gpu(options["scheduler"])
        graph = build_graph(config, dataset, classes, str(directory), token, gpu_resource)
        cross = build_cross_class(config, graph, str(directory)) if config.audit.cross_class else None
        computed, cross_entry = dask.compute(graph, cross, **options)
    by_class = dataset.by_class()
    log.info("reading the results back: prototypes, and every member of the flagged clusters")
    results, skipped, skipped_samples = [], [], []
    for index in classes:
        _, analysis_meta = computed[index]["analyse"].read()
        if "skipped" in analysis_meta:
            skipped.append(SkippedClass(index, dataset.class_names[index], analysis_meta["skipped"]))
            skipped_samples += [(str(i), str(r)) for i, r in computed[index]["preprocess"].read()[1]["skipped"]]
        else:
            results.append(assemble_class(config, dataset, index, by_class[index], computed[index]))
    if skipped and not results:
        raise DataError("no class could be audited: " + "; ".join(f"{s.class_name}: {s.reason}" for s in skipped))
    cross_result = assemble_cross_class(dataset, cross_entry) if cross_entry is not None else None
    return _Computed(computed, cross_entry, results, cross_result, skipped, skipped_samples)


def _stage_counts(computed: dict[int, dict[str, Any]]) -> dict[str, dict[str, int]]:
    counts = {stage: {"computed": 0, "cached": 0} for stage in STAGES}
    for tasks in computed.values():
        entries = list(tasks["shards"]) + [tasks[s] for s in STAGES[1:]]
        for entry in entries:
            counts[entry.stage]["computed" if entry.computed else "cached"] += 1
    return counts


def assemble_class(config: SprayConfig, dataset: Dataset, index: int, samples: list[Sample],
                   tasks: dict[str, Any]) -> ClassResult:
    """Read one class's entries back (``samples``: the class's samples, in shard order) and build the
    ClassResult the report is drawn from."""
    pre_arrays, pre_meta = tasks["preprocess"].read()
    analysis_arrays, analysis_meta = tasks["analyse"].read()
    embeddings, _ = tasks["embed"].read()
    flag_arrays, flag_meta = tasks["flag"].read()
    ids = pre_meta["ids"]
    maps = pre_arrays["maps"]
    labels = flag_arrays["labels"]  # the spectral clusters, with pattern carriers moved into flagged ones
    logits = pre_arrays["logits"]
    samples_by_id = {s.id: s for s in samples}
    relevance_by_id = _relevance_lookup(tasks["shards"], samples, config)
    clusters = []
    for position, cluster in enumerate(flag_meta["clusters"]):
        member_index = np.flatnonzero(labels == cluster["id"])
        mean_map = maps[member_index].mean(0)
        distance = ((maps[member_index] - mean_map) ** 2).reshape(len(member_index), -1).sum(1)
        typical = [ids[i] for i in member_index[np.argsort(distance)][: config.flagging.prototypes]]
        images = [_display(read_pixels(samples_by_id[i].path, config.data.image)) for i in typical]
        heatmaps = [relevance_by_id(i) for i in typical]
        members = [ids[i] for i in member_index]
        shown = (member_thumbnails(members[:MAX_MEMBERS_SHOWN], samples_by_id, relevance_by_id, config.data.image)
                 if cluster["flagged"] else [])
        clusters.append(ClusterResult(
            id=cluster["id"], members=members, score=cluster["score"],
            flagged=cluster["flagged"], evidence=cluster["evidence"], mean_map=mean_map,
            region=flag_arrays["regions"][position] if cluster["has_region"] else None,
            prototypes=typical, prototype_images=images, prototype_heatmaps=heatmaps, members_shown=shown))
    clusters.sort(key=lambda c: (not c.flagged, -c.score))
    notes = list(analysis_meta.get("notes", []))
    return ClassResult(
        class_index=index, class_name=dataset.class_names[index], ids=ids,
        labels=np.full(len(ids), index), predictions=logits.argmax(1) if len(logits) else np.zeros(0, int),
        logits=logits[:, index] if len(logits) else np.zeros(0), conservation=pre_arrays["conservation"],
        eigenvalues=analysis_arrays["eigenvalues"], n_clusters=int(analysis_meta["n_clusters"]),
        cluster_labels=labels, embeddings=dict(embeddings), clusters=clusters,
        class_mean_map=maps.mean(0), notes=notes,
        skipped_samples=[(str(i), str(r)) for i, r in pre_meta["skipped"]])


# Members of a flagged cluster shown in the report's gallery, and their side in pixels: a reviewer checks
# that every member carries the pattern; the ids of all members are in summary.json and samples.csv.
MAX_MEMBERS_SHOWN = 2000
MEMBER_SIDE = 48


def member_thumbnails(ids: list[str], samples_by_id: dict[str, Sample], relevance_by_id: Any,
                      image: Any) -> list[Thumbnail]:
    """Small image + relevance of each sample id, for the gallery (at most MEMBER_SIDE pixels a side)."""
    from spray.report.images import resize_float, shrink

    thumbnails = []
    for sample_id in ids:
        pixels = shrink(_display(read_pixels(samples_by_id[sample_id].path, image)), MEMBER_SIDE)
        heatmap = resize_float(np.asarray(relevance_by_id(sample_id), dtype=np.float64), *pixels.shape[:2])
        thumbnails.append(Thumbnail(sample_id, pixels, heatmap.astype(np.float32)))
    return thumbnails


def assemble_cross_class(dataset: Dataset, entry: Entry) -> CrossClassResult:
    """Read the cross-class entry back as the CrossClassResult the report is drawn from."""
    arrays, meta = entry.read()
    classes = arrays["classes"]
    return CrossClassResult(
        ids=meta["ids"], classes=classes,
        class_names={int(i): dataset.class_names[int(i)] for i in np.unique(classes)},
        eigenvalues=arrays["eigenvalues"], n_clusters=int(meta["n_clusters"]), cluster_labels=arrays["labels"],
        embeddings={name: arrays[f"embedding_{name}"] for name in meta["embeddings"]}, notes=meta["notes"])


def _relevance_lookup(shards: list[Entry], samples: list[Sample], config: SprayConfig):
    """sample id -> (H, W) channel-summed full-resolution relevance, reading only that sample's chunk."""
    shard_size = config.attribution.shard_size
    position_of = {s.id: i for i, s in enumerate(samples)}
    opened: dict[int, tuple[dict[int, int], Any]] = {}

    def lookup(sample_id: str) -> np.ndarray:
        number, offset = divmod(position_of[sample_id], shard_size)
        if number not in opened:
            arrays, _ = shards[number].read()
            opened[number] = ({int(i): row for row, i in enumerate(arrays["index"])},
                              shards[number].open_array("relevance"))
        rows, relevance = opened[number]
        row = rows[offset]
        return np.asarray(relevance[row : row + 1])[0].sum(0)

    return lookup


def _display(pixels: np.ndarray) -> np.ndarray:
    """(H, W, C) in [0, 1] -> (H, W, 3) uint8 for the report."""
    rgb = np.repeat(pixels, 3, axis=2) if pixels.shape[2] == 1 else pixels
    return (np.clip(rgb, 0, 1) * 255).round().astype(np.uint8)


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

    with StageProgress():
        yield
