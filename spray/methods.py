"""``spray evaluate``: how faithful each attribution method's heatmaps are for this model, to choose one.

On the same sample of each audited class (``evaluation.samples`` drawn with ``evaluation.seed``, the
images the audit's own evaluate stage measures when no image is skipped), every method asked for explains
the class's logit (the attribute stage's cached task, with that method's attribution section) and region
perturbation measures its heatmaps (the evaluate stage's cached task): AOPC most relevant first, AOPC in a
random order and their difference, the gain, in logits. The time per image is the attributor's own time,
recorded in the attribute entry when it was computed (``attribution_s``; decoding and storing excluded).

Method names: a named LRP composite (``spray.names.COMPOSITE_NAMES``) or an attribution method other than
``lrp`` (``gradient``, ``gradient_x_input``, ``smoothgrad``, ``integrated_gradients``, ``occlusion``). The
configured attribution keeps its whole section (rules, parameters); another composite takes the configured
LRP parameters (epsilon, gamma, alpha, bounds) without its ``rules``; another method takes its defaults.
Every method takes the configured runtime settings (batch size, shard size, device, loader threads).

Every task is a cache entry keyed like the audit's (``spray.cache.entry_key``), so a second ``spray
evaluate`` with the same config computes nothing, and the configured method's entries are shared with an
audit whose shards hold the same samples.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import difflib
import io
import json
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask
import numpy as np

from spray.attribute import RUNTIME_SETTINGS, ShardTask, attribute_task, prepare_attributor, shard_key
from spray.cache import Entry
from spray.checks import check_attribution, check_writable_folder, decode_probes, preflight
from spray.config import (
    MIN_EVALUATION_PATCHES,
    AttributionConfig,
    LrpAttribution,
    SprayConfig,
    attribution_config,
)
from spray.data import Dataset, DigestIndex, Sample, dataset_token, load_dataset
from spray.errors import ConfigError, ModelError
from spray.evaluate import patch_grid
from spray.faithfulness import EvaluateTask, evaluate_task, read_evaluated, sampled_rows
from spray.faithfulness import store_key as evaluate_key
from spray.model import model_token
from spray.names import COMPOSITE_NAMES, METHODS
from spray.pipeline import audited_classes, cache_folder, scheduler
from spray.results import SkippedClass

METHOD_NAMES: tuple[str, ...] = COMPOSITE_NAMES + tuple(m for m in METHODS if m != "lrp")
"""What ``--methods`` accepts."""
OTHER_DEFAULT_METHODS: tuple[str, ...] = ("gradient", "gradient_x_input", "integrated_gradients")
"""Compared by default besides the configured attribution and every named composite."""
FILES = ("methods.csv", "methods.json")
"""What ``write_comparison`` writes into the output folder (kept there when an audit's report is published)."""
STAGES = ("attribute", "evaluate")
# Up to this many classes the terminal shows every class's rows; above, the files hold them.
PRINTED_CLASSES = 20


@dataclass(frozen=True)
class MethodSpec:
    """One compared method: its name (as on the command line), its attribution section, whether it is the
    config's own."""

    name: str
    attribution: AttributionConfig
    configured: bool


@dataclass(frozen=True)
class MethodScore:
    """A method's faithfulness on one class's sample (``class_index`` -1 and ``class_name`` "all": the mean
    of the class means, each class weighted alike, over the classes with a measured image).

    ``aopc_morf``, ``aopc_random``, ``aopc_gain`` in logits (NaN when ``n`` is 0); ``n`` images measured;
    ``ms_per_image``: the attributor's milliseconds per explained image (None where an entry did not record
    it); ``not_better``: measured classes whose gain is not above 0 (0 or 1 for a single class).
    """

    method: str
    class_index: int
    class_name: str
    n: int
    aopc_morf: float
    aopc_random: float
    aopc_gain: float
    ms_per_image: float | None
    not_better: int


@dataclass(frozen=True)
class EvaluationSetting:
    """How the heatmaps were perturbed: ``steps`` is the number actually destroyed (capped at the patches)."""

    samples: int
    seed: int
    patch_size: int
    steps: int
    perturbation: str


@dataclass(frozen=True)
class MethodComparison:
    """The outcome of ``compare_methods``: per method and class (``scores``, class-major in method order),
    per method over all classes (``overall``), the setting, the tasks computed and found cached per stage,
    and the classes that were not audited (too few samples)."""

    methods: tuple[MethodSpec, ...]
    scores: tuple[MethodScore, ...]
    overall: tuple[MethodScore, ...]
    setting: EvaluationSetting
    stages: dict[str, dict[str, int]]
    skipped_classes: tuple[SkippedClass, ...]


def configured_name(attribution: AttributionConfig) -> str:
    """The name the configured attribution goes by: its composite for LRP, its method otherwise."""
    return attribution.composite if isinstance(attribution, LrpAttribution) else attribution.method


def resolve_methods(attribution: AttributionConfig, names: Sequence[str] | None = None) -> list[MethodSpec]:
    """The methods to compare, in order, without repeats.

    ``names`` None: the configured attribution, the other named composites, then ``OTHER_DEFAULT_METHODS``.
    Raises ConfigError naming an unknown name (with the closest valid one) and listing the valid names.
    """
    own = configured_name(attribution)
    if names is None:
        names = [own, *COMPOSITE_NAMES, *OTHER_DEFAULT_METHODS]
    unknown = [name for name in names if name not in METHOD_NAMES]
    if unknown or not names:
        close = difflib.get_close_matches(unknown[0], METHOD_NAMES, n=1) if unknown else []
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        what = f"unknown method {unknown[0]!r}{hint}" if unknown else "no method given"
        raise ConfigError(f"--methods: {what}; expected comma-separated names among {', '.join(METHOD_NAMES)}")
    return [MethodSpec(name, attribution if name == own else _section(name, attribution), name == own)
            for name in dict.fromkeys(names)]


def _section(name: str, attribution: AttributionConfig) -> AttributionConfig:
    """The attribution section of ``name``, with the configured runtime settings (see the module docstring)."""
    runtime = {key: getattr(attribution, key) for key in RUNTIME_SETTINGS}
    if name not in COMPOSITE_NAMES:
        return attribution_config(method=name, **runtime)
    shared = (attribution.model_dump(exclude={"method", "composite", "rules", *RUNTIME_SETTINGS})
              if isinstance(attribution, LrpAttribution) else {})
    return LrpAttribution(**runtime, **shared, composite=name)


def check_evaluation(config: SprayConfig) -> int:
    """The number of patches destroyed per curve; ConfigError when ``evaluation.patch_size`` leaves fewer than
    ``MIN_EVALUATION_PATCHES`` patches (the config checks it only with ``evaluation.enabled``)."""
    height, width = config.data.image.size
    patches = int(patch_grid(height, width, config.evaluation.patch_size).max()) + 1
    if patches < MIN_EVALUATION_PATCHES:
        raise ConfigError(f"evaluation.patch_size {config.evaluation.patch_size} cuts the {height}x{width} images "
                          f"into {patches} patch(es); region perturbation needs at least {MIN_EVALUATION_PATCHES}")
    return min(config.evaluation.steps, patches)


def class_sample(samples: Sequence[Sample], count: int, seed: int) -> list[Sample]:
    """The ``min(count, len(samples))`` samples of a class that every method explains, drawn with ``seed`` as
    the evaluate stage draws among a class's explained samples."""
    return [samples[int(row)] for row in sampled_rows(len(samples), count, seed)]


def check_methods(config: SprayConfig, dataset: Dataset, methods: Sequence[MethodSpec]) -> None:
    """Explain one image with every method before any task runs: a method that cannot explain the model
    (an LRP composite meeting an unsupported layer) is a ModelError naming it now, not after hours of work.
    Running each method once also keeps one-time costs (first kernel launches, allocations) out of the
    times per image measured in the tasks."""
    image = config.data.image
    chosen, pixels, _ = decode_probes(dataset, image, per_class=False)
    token = model_token(config.model)
    for spec in methods:
        try:
            check_attribution(prepare_attributor(config.model, spec.attribution, image, token), pixels, image,
                              chosen[0].label)
        except ModelError as error:
            raise ModelError(f"method {spec.name} cannot explain this model (leave it out of --methods): "
                             f"{error}") from None


def compare_methods(config: SprayConfig, names: Sequence[str] | None = None, *,
                    progress: bool = True) -> MethodComparison:
    """Faithfulness of every method in ``names`` (default: ``resolve_methods``) on a sample of each audited
    class. Checks the model on real images first (as ``spray run`` does). Raises ConfigError, DataError,
    ModelError (a method whose engine cannot explain a layer) or RunError."""
    methods = resolve_methods(config.attribution, names)
    steps = check_evaluation(config)
    if config.cache.enabled:
        check_writable_folder(Path(config.cache.directory), "cache.directory")
    dataset = load_dataset(config.data)
    preflight(config, dataset)
    check_methods(config, dataset, methods)
    classes, skipped = audited_classes(config.audit, config.analysis.neighbors, dataset)
    by_class = dataset.by_class()
    chosen = {index: class_sample(by_class[index], config.evaluation.samples, config.evaluation.seed)
              for index in classes}
    with cache_folder(config.cache, use_cache=True) as directory:
        shards, evaluated, stages = _run(config, chosen, methods, str(directory), progress)
        scores = [_score(spec.name, index, dataset, shards[spec.name][index], evaluated[spec.name][index])
                  for index in classes for spec in methods]
    evaluation = config.evaluation
    setting = EvaluationSetting(evaluation.samples, evaluation.seed, evaluation.patch_size, steps,
                                evaluation.perturbation)
    overall = tuple(overall_score(spec.name, [s for s in scores if s.method == spec.name]) for spec in methods)
    return MethodComparison(tuple(methods), tuple(scores), overall, setting, stages, tuple(skipped))


def _run(config: SprayConfig, chosen: dict[int, list[Sample]], methods: list[MethodSpec], directory: str,
         progress: bool) -> tuple[dict[str, dict[int, list[Entry]]], dict[str, dict[int, Entry]],
                                  dict[str, dict[str, int]]]:
    """The attribute entries of every method and class, then their evaluate entries, and the counts.

    One method's attribution runs at a time (its classes in parallel), so that the times per image of the
    methods are measured under the same load; the evaluate tasks of all methods run afterwards.
    """
    token = model_token(config.model)
    counts = {stage: {"computed": 0, "cached": 0} for stage in STAGES}
    shards: dict[str, dict[int, list[Entry]]] = {}
    keys: dict[str, dict[int, list[str]]] = {}
    digests = DigestIndex(Path(directory) / "digests.sqlite")
    try:
        with scheduler(config.dask) as options:
            for spec in methods:
                tasks, keys[spec.name] = _attribute_tasks(config, spec, chosen, directory, token, digests)
                with _progress(progress and not config.dask.address):
                    (shards[spec.name],) = dask.compute(tasks, **options)
            evaluate = {spec.name: {index: _evaluate_task(config, spec, index, chosen[index], shards[spec.name][index],
                                                          keys[spec.name][index], directory, token)
                                    for index in chosen} for spec in methods}
            with _progress(progress and not config.dask.address):
                (evaluated,) = dask.compute(evaluate, **options)
    finally:
        digests.close()
    for entry in [e for by_index in shards.values() for entries in by_index.values() for e in entries] + \
            [e for by_index in evaluated.values() for e in by_index.values()]:
        counts[entry.stage]["computed" if entry.computed else "cached"] += 1
    return shards, evaluated, counts


def _attribute_tasks(config: SprayConfig, spec: MethodSpec, chosen: dict[int, list[Sample]], directory: str,
                     token: str, digests: DigestIndex) -> tuple[dict[int, list[Any]], dict[int, list[str]]]:
    """Delayed attribute tasks of one method per class, one per ``attribution.shard_size`` samples, and keys."""
    image, size = config.data.image, spec.attribution.shard_size
    tasks: dict[int, list[Any]] = {}
    keys: dict[int, list[str]] = {}
    for index, samples in chosen.items():
        tasks[index], keys[index] = [], []
        for number, start in enumerate(range(0, len(samples), size)):
            shard = samples[start : start + size]
            key = shard_key(token, index, spec.attribution, image, dataset_token(shard, digests))
            task = ShardTask(directory, key, shard, index, config.model, token, spec.attribution, image)
            tasks[index].append(dask.delayed(attribute_task, pure=True)(
                task, dask_key_name=f"attribute-{spec.name}-{index}-{number}-{key[:8]}"))
            keys[index].append(key)
    return tasks, keys


def _evaluate_task(config: SprayConfig, spec: MethodSpec, index: int, samples: list[Sample],
                   shards: list[Entry], shard_keys: list[str], directory: str, token: str) -> Any:
    """The delayed evaluate task of one method and class over its finished attribute entries."""
    size = spec.attribution.shard_size
    per_shard = tuple(tuple(samples[start : start + size]) for start in range(0, len(samples), size))
    key = evaluate_key(config.evaluation, config.data.image, shard_keys, token)
    job = EvaluateTask(index, config.model, config.data.image, config.evaluation, spec.attribution.device,
                       spec.attribution.batch_size, per_shard)
    return dask.delayed(evaluate_task, pure=True)(directory, key, shards, job,
                                                  dask_key_name=f"evaluate-{spec.name}-{index}-{key[:8]}")


def _progress(enabled: bool) -> Any:
    """A progress bar of the attribute and evaluate tasks (a context manager; a null one when disabled)."""
    if not enabled:
        return contextlib.nullcontext()
    from spray.progress import StageProgress

    return StageProgress(STAGES)


def _score(method: str, index: int, dataset: Dataset, shards: list[Entry], evaluated: Entry) -> MethodScore:
    """One method's scores on one class, from its evaluate entry and the times in its attribute entries."""
    result = read_evaluated(evaluated)
    explained, seconds = 0, 0.0
    timed = True
    for entry in shards:
        arrays, meta = entry.read()
        explained += len(arrays["index"])
        timed = timed and "attribution_s" in meta
        seconds += float(meta.get("attribution_s", 0.0))
    n = len(result.ids)
    mean = (lambda values: float(np.mean(values))) if n else (lambda values: math.nan)
    gain = mean(result.aopc_gain)
    return MethodScore(method, index, dataset.class_names[index], n, mean(result.aopc_morf),
                       mean(result.aopc_random), gain,
                       1000 * seconds / explained if timed and explained else None, int(n > 0 and not gain > 0))


def overall_score(method: str, scores: Sequence[MethodScore]) -> MethodScore:
    """A method over all classes: the mean of the class means over the classes with a measured image, the
    time per image weighted by the images measured (None unless every measured class has one), the
    measured classes not better than random summed."""
    measured = [s for s in scores if s.n]
    timed = [s for s in scores if s.ms_per_image is not None and s.n]

    def mean(name: str) -> float:
        return float(np.mean([getattr(s, name) for s in measured])) if measured else math.nan

    ms = (sum(s.ms_per_image * s.n for s in timed if s.ms_per_image is not None) / sum(s.n for s in timed)
          if timed and len(timed) == len(measured) else None)
    return MethodScore(method, -1, "all", sum(s.n for s in measured), mean("aopc_morf"), mean("aopc_random"),
                       mean("aopc_gain"), ms, sum(s.not_better for s in scores))


def _label(spec: MethodSpec) -> str:
    return f"{spec.name} (configured)" if spec.configured else spec.name


def _number(value: float | None, digits: int = 2) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def format_table(comparison: MethodComparison) -> str:
    """The comparison as terminal text: per class and method (up to ``PRINTED_CLASSES`` classes) AOPC MoRF,
    AOPC random, gain and ms per image, then per method over all classes, and the method of highest gain."""
    setting = comparison.setting
    labels = {spec.name: _label(spec) for spec in comparison.methods}
    width = max(len("method"), *(len(label) for label in labels.values()))
    lines = [f"region perturbation on up to {setting.samples} images per class (seed {setting.seed}): "
             f"{setting.patch_size}-pixel patches, {setting.steps} steps, {setting.perturbation}; AOPC in logits, "
             "gain = AOPC MoRF - AOPC random (higher: the heatmaps point at what the model uses)"]
    header = f"{'method':<{width}}  {'AOPC MoRF':>9}  {'AOPC random':>11}  {'gain':>7}  {'ms/image':>8}"
    n_classes = len({score.class_index for score in comparison.scores})
    if n_classes <= PRINTED_CLASSES:
        current = None
        for score in comparison.scores:
            if score.class_index != current:
                current = score.class_index
                shown = "" if score.class_name == str(current) else f" {score.class_name}"
                lines += ["", f"class {current}{shown} ({score.n} images)", header]
            lines.append(_row(score, labels[score.method], width))
    else:
        lines += ["", f"{n_classes} classes: per class in methods.csv"]
    lines += ["", f"all {n_classes} classes (mean of the class means)", header + "  gain <= 0"]
    lines += [_row(score, labels[score.method], width) + f"  {score.not_better:>4} of {n_classes}"
              for score in comparison.overall]
    ranked = [score for score in comparison.overall if not math.isnan(score.aopc_gain)]
    if ranked:
        best = max(ranked, key=lambda score: score.aopc_gain)
        lines.append(f"highest mean gain: {labels[best.method]} ({best.aopc_gain:.2f} logits)")
    return "\n".join(lines)


def _row(score: MethodScore, label: str, width: int) -> str:
    return (f"{label:<{width}}  {_number(score.aopc_morf):>9}  {_number(score.aopc_random):>11}  "
            f"{_number(score.aopc_gain):>7}  {_number(score.ms_per_image, 3):>8}")


CSV_COLUMNS = ("method", "configured", "class", "name", "n", "aopc_morf", "aopc_random", "aopc_gain",
               "ms_per_image")


def write_comparison(comparison: MethodComparison, folder: Path) -> list[Path]:
    """Write ``methods.csv`` (one row per method and class) and ``methods.json`` (the setting, the methods with
    their attribution sections, per method over all classes, per class) into ``folder``; each file is
    replaced whole. Returns their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    configured = {spec.name: spec.configured for spec in comparison.methods}
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for score in comparison.scores:
        writer.writerow([score.method, configured[score.method], score.class_index, score.class_name, score.n,
                         *(_csv_number(v) for v in (score.aopc_morf, score.aopc_random, score.aopc_gain,
                                                     score.ms_per_image))])
    document = {
        "setting": dataclasses.asdict(comparison.setting),
        "methods": [{"name": spec.name, "configured": spec.configured,
                     "attribution": spec.attribution.model_dump(mode="json", exclude=set(RUNTIME_SETTINGS))}
                    for spec in comparison.methods],
        "overall": [_json_score(score) for score in comparison.overall],
        "classes": [_json_score(score) for score in comparison.scores],
        "skipped_classes": [dataclasses.asdict(skipped) for skipped in comparison.skipped_classes],
    }
    paths = [folder / FILES[0], folder / FILES[1]]
    _replace(paths[0], table.getvalue())
    _replace(paths[1], json.dumps(document, indent=1) + "\n")
    return paths


def _csv_number(value: float | None) -> str:
    return "" if value is None or math.isnan(value) else repr(float(value))


def _json_score(score: MethodScore) -> dict[str, Any]:
    values = dataclasses.asdict(score)
    return {key: None if isinstance(value, float) and math.isnan(value) else value for key, value in values.items()}


def _replace(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in its folder, so a reader never sees half of it."""
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
