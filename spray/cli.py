"""``python -m spray run CONFIG``, ``validate CONFIG``, ``evaluate CONFIG``, ``init MODEL IMAGES`` and ``export
virelay CONFIG DIR``.

Exit codes (spray.errors): 0 success; 1 a cluster was flagged and --fail-on-flag was given (a series of
checkpoints: flagged at the last one), or a flag that the baseline did not have and --fail-on-new-flag was
given; 2 invalid config or command line (also a baseline folder without a readable summary.json, a weights
list naming a missing file, a weights pattern matching none); 3 unusable data; 4 unusable model; 5 the run
failed.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import signal
import sys
import tempfile
import traceback
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spray.errors import EXIT_FLAGGED, EXIT_OK, EXIT_RUN, SprayError

if TYPE_CHECKING:
    from spray.config import SprayConfig
    from spray.demo import DemoConfig
    from spray.diff import AuditDiff, Snapshot
    from spray.results import ClassResult
    from spray.timeline import Timeline

# The file an unexpected error's traceback goes to, in the output folder (or the temporary folder when the
# config did not load far enough to name one).
ERROR_LOG = "spray-error.log"
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spray", description="Audit a trained PyTorch classifier for Clever Hans behaviour with SpRAY."
    )
    from spray import __version__

    parser.add_argument("--version", action="version", version=f"spray {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the audit and write the report")
    run.add_argument("config", type=Path, help="the audit's YAML config")
    run.add_argument("--output", type=Path, help="folder for the report (overrides the config's output)")
    run.add_argument("--classes", nargs="+", metavar="CLASS", help="classes to audit (indices or names)")
    run.add_argument("--no-cache", action="store_true", help="recompute everything and store nothing")
    run.add_argument("--fail-on-flag", action="store_true", help=f"exit {EXIT_FLAGGED} when a cluster is flagged (a series of checkpoints: at the last one)")
    run.add_argument("--baseline", type=Path, metavar="DIR",
                     help="output folder of an earlier audit to compare with (overrides audit.baseline)")
    run.add_argument("--fail-on-new-flag", action="store_true",
                     help=f"exit {EXIT_FLAGGED} when a flag is new since the baseline (needs a baseline)")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    validate = commands.add_parser(
        "validate", help="check that the run will start: model, weights, images, labels, attribution, folders")
    validate.add_argument("config", type=Path)
    validate.add_argument("--output", type=Path, help="folder for the report (overrides the config's output)")
    validate.add_argument("--classes", nargs="+", metavar="CLASS", help="classes to audit (indices or names)")
    validate.add_argument("--baseline", type=Path, metavar="DIR", help="an earlier audit's output folder to read")
    init = commands.add_parser("init", help="write a commented starter config for a model and an image folder")
    init.add_argument("model", help="factory: models.py, models.py:build or package.module:build")
    init.add_argument("images", type=Path, help="folder with manifest.csv or one sub-folder per class")
    init.add_argument("--weights", type=Path, help="state_dict file (torch.save(model.state_dict(), path))")
    init.add_argument("--config", type=Path, default=Path("audit.yaml"), help="the file to write (default audit.yaml)")
    export = _export_parser(commands)
    evaluate = _evaluate_parser(commands)
    for command in (run, validate, init, export, evaluate):
        command.add_argument("--debug", action="store_true",
                             help="print the traceback of an unexpected error here too (it is always logged)")
    return parser


def _export_parser(commands: Any) -> argparse.ArgumentParser:
    """``export virelay CONFIG OUTPUT_DIR``: the config's audit (from the cache, computing what is missing)
    as a ViRelAy project."""
    export = commands.add_parser("export", help="write the config's audit in another tool's format")
    export.add_argument("format", choices=["virelay"], help="virelay: a ViRelAy project (HDF5 files and YAML)")
    export.add_argument("config", type=Path, help="the audit's YAML config")
    export.add_argument("output_dir", type=Path, help="folder for the project (project.yaml and its files)")
    export.add_argument("--classes", nargs="+", metavar="CLASS", help="classes to export (indices or names)")
    export.add_argument("--no-cache", action="store_true", help="recompute everything and store nothing")
    export.add_argument("--quiet", action="store_true", help="no progress bars")
    return export


def _evaluate_parser(commands: Any) -> argparse.ArgumentParser:
    """``evaluate CONFIG [--methods a,b]``: the faithfulness of each attribution method (spray.methods)."""
    evaluate = commands.add_parser(
        "evaluate", help="compare how faithful the heatmaps of attribution methods are for this model")
    evaluate.add_argument("config", type=Path, help="the audit's YAML config")
    evaluate.add_argument("--methods", metavar="A,B,...",
                          help="comma-separated LRP composites or methods (default: the configured attribution, "
                          "every named composite, gradient, gradient_x_input, integrated_gradients)")
    evaluate.add_argument("--output", type=Path, help="folder for methods.csv and methods.json (overrides output)")
    evaluate.add_argument("--classes", nargs="+", metavar="CLASS", help="classes to compare on (indices or names)")
    evaluate.add_argument("--quiet", action="store_true", help="no progress bars")
    return evaluate


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled as an interrupt: the same cleanup, the same message, exit 5."""


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit code (spray.errors). Every failure ends in one line on stderr:
    SprayError subclasses with their own code; a full disk naming the path (5); anything unexpected 5, its
    traceback in ``spray-error.log`` in the output folder (also on the terminal with ``--debug``)."""
    arguments = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="spray: %(message)s")
    # OpenMP busy-waiting makes torch several times slower when another process holds a core.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        with _sigterm_as_interrupt():
            if arguments.command == "validate":
                return _validate(arguments)
            if arguments.command == "init":
                return _init(arguments)
            if arguments.command == "export":
                return _export(arguments)
            if arguments.command == "evaluate":
                return _evaluate(arguments)
            return _run(arguments)
    except SprayError as error:
        print(f"spray: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt as interrupt:
        cause = "terminated (SIGTERM)" if isinstance(interrupt, Terminated) else "interrupted"
        print(f"spray: {cause}; finished cache entries are kept and the next run resumes from them",
              file=sys.stderr)
        return EXIT_RUN
    except OSError as error:
        if error.errno not in _DISK_FULL:
            return _unexpected(arguments, error)
        where = error.filename or getattr(arguments, "output_folder", None) or "an output or cache folder"
        print(f"spray: error: disk full writing {where}: free space there and re-run; finished cache entries "
              "are kept", file=sys.stderr)
        return EXIT_RUN
    except Exception as error:
        return _unexpected(arguments, error)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """While the command runs, SIGTERM (what schedulers and ``kill`` send) raises ``Terminated`` like
    Ctrl-C raises KeyboardInterrupt, so that it is cleaned up and reported alike."""
    def terminate(signum: int, frame: Any) -> None:
        raise Terminated()

    try:
        previous = signal.signal(signal.SIGTERM, terminate)
    except ValueError:  # not the main thread: signals cannot be handled here
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _unexpected(arguments: argparse.Namespace, error: BaseException) -> int:
    """Write the traceback to the error log, print one line naming it, return 5."""
    text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    log_path = _write_error_log(getattr(arguments, "output_folder", None), text)
    if getattr(arguments, "debug", False):
        print(text, file=sys.stderr, end="")
    first = str(error).strip().splitlines()[0] if str(error).strip() else ""
    where = f"the traceback is in {log_path}" if log_path else "the traceback could not be written; re-run with --debug"
    print(f"spray: error: the run failed unexpectedly: {type(error).__name__}"
          f"{': ' + first if first else ''} ({where})", file=sys.stderr)
    return EXIT_RUN


def _write_error_log(folder: Path | None, text: str) -> Path | None:
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    for candidate in ([Path(folder)] if folder else []) + [Path(tempfile.gettempdir())]:
        try:
            candidate.mkdir(parents=True, exist_ok=True)
            path = candidate / ERROR_LOG
            with open(path, "a", encoding="utf-8") as handle:
                handle.write(f"--- spray {stamp} (pid {os.getpid()})\n{text}")
            return path
        except OSError:
            continue
    return None


def _overrides(arguments: argparse.Namespace) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    if getattr(arguments, "output", None) is not None:
        overrides["output"] = str(arguments.output.resolve())
    if getattr(arguments, "classes", None):
        overrides["audit"] = {"classes": [int(c) if c.lstrip("-").isdigit() else c for c in arguments.classes]}
    if getattr(arguments, "baseline", None) is not None:
        overrides.setdefault("audit", {})["baseline"] = str(arguments.baseline.resolve())
    return overrides


def _load(arguments: argparse.Namespace) -> tuple[DemoConfig | None, SprayConfig]:
    """The config file with the command line's overrides, and its ``demo:`` section when it has one (the
    case the demo audits, built by ``_run`` before the audit)."""
    from spray.config import config_from_dict, merge, read_config_file

    path = Path(arguments.config)
    raw = merge(read_config_file(path), _overrides(arguments))
    if "demo" not in raw:
        return None, config_from_dict(raw, base_dir=path.parent, source=path)
    from spray.demo import load_demo

    return load_demo(raw, base_dir=path.parent, source=path)


# What validate cannot know before the audit runs; printed so that "valid" is not read as more than it is.
_NOT_CHECKED = (
    "not checked: every image decodes (one per class was decoded), every class has enough samples after "
    "skipped images, disk space for the cache and report, the numerical health of every heatmap",
    "not checked: that the model's outputs are in the order of the names above (spray cannot know what the "
    "model was trained on; give data.class_names when unsure)",
)


def _validate(arguments: argparse.Namespace) -> int:
    from spray.checks import check_output_folders, preflight
    from spray.config import LrpAttribution
    from spray.data import load_dataset
    from spray.pipeline import audited_classes, mapping_lines

    demo, config = _load(arguments)
    check_output_folders(config)
    baseline = _check_baseline(arguments, config)
    weights = config.model.weights[0] if isinstance(config.model.weights, list) else config.model.weights
    if demo is not None and not Path(weights or demo.directory).exists():
        print(f"spray: {arguments.config}: valid config; the demo case is built in {demo.directory} on "
              "first run, so the model and images are checked then")
        return EXIT_OK
    dataset = load_dataset(config.data)
    series = _checkpoints(config)
    checked = preflight(series[0], dataset, per_class=True)
    for checkpoint in series[1:] if len(series) > 1 else []:  # the first was checked above
        preflight(checkpoint, dataset)
    classes, skipped = audited_classes(config.audit, config.analysis.neighbors, dataset)
    attribution = config.attribution
    composite = f", composite {attribution.composite}" if isinstance(attribution, LrpAttribution) else ""
    print(f"spray: {arguments.config}: valid; {len(dataset.samples)} samples in {len(classes)} audited classes; "
          f"the model has {checked.n_outputs} outputs; one image of each class decoded and explained "
          f"({attribution.method}{composite})")
    for line in mapping_lines(checked.mapping):
        print(f"  {line}")
    if config.model.is_series:
        print(f"  a series of {len(series)} checkpoints, each loaded and checked, in this order: "
              + ", ".join(str(checkpoint.model.weights) for checkpoint in series))
    if baseline is not None:
        n_flags = sum(len(snapshot.flagged) for snapshot in baseline.classes.values())
        print(f"  baseline {config.audit.baseline}: {len(baseline.classes)} audited classes, {n_flags} flag(s) "
              "to compare with")
    for item in skipped:
        print(f"  skipped class {item.class_name}: {item.reason}")
    problems = list(dataset.missing) + list(checked.undecodable)
    if problems:
        print(f"  {len(problems)} image(s) that the run will skip, e.g.:")
        for sample_id, reason in problems[:5]:
            print(f"    {sample_id}: {reason}")
    for line in _NOT_CHECKED:
        print(f"  {line}")
    return EXIT_OK


def _init(arguments: argparse.Namespace) -> int:
    from spray.init import write_starter_config

    path = write_starter_config(arguments.config, arguments.model, arguments.images, arguments.weights)
    print(f"spray: wrote {path}; check the lines marked CHECK, then: python -m spray validate {path}")
    return EXIT_OK


def _run(arguments: argparse.Namespace) -> int:
    from spray.pipeline import run_audit

    demo, config = _load(arguments)
    arguments.output_folder = Path(config.output)
    _check_baseline(arguments, config)
    if demo is not None:
        from spray.checks import check_output_folders
        from spray.demo import prepare_demo

        check_output_folders(config)  # an output that cannot be written fails before the case is built
        prepare_demo(demo)
    outcome = run_audit(config, use_cache=not arguments.no_cache, progress=not arguments.quiet)
    computed = ", ".join(f"{stage} {c['computed']}/{c['computed'] + c['cached']}" for stage, c in outcome.stages.items())
    print(f"spray: tasks computed (the rest came from the cache): {computed}")
    for skipped in outcome.skipped_classes:
        print(f"spray: skipped class {skipped.class_name}: {skipped.reason}")
    if outcome.skipped_samples:
        print(f"spray: {len(outcome.skipped_samples)} image(s) skipped (all listed in the report), e.g.:")
        for sample_id, reason in outcome.skipped_samples[:5]:
            print(f"  {sample_id}: {reason}")
    if outcome.flagged:
        print(f"spray: {len(outcome.flagged)} cluster(s) flagged for Clever Hans evidence:")
        for result, cluster in outcome.flagged:
            print(f"  class {result.class_name}: cluster {cluster.id} ({cluster.size} of {result.n_samples} samples), "
                  f"score {cluster.score:.2f}{_finding_text(result, cluster.id)}")
    else:
        print("spray: no cluster flagged")
    if outcome.timeline is not None:
        _print_timeline(outcome.timeline)
    new_flags = _print_diff(outcome.diff) if outcome.diff is not None else []
    print(f"spray: report: {outcome.report}")
    if arguments.fail_on_new_flag and new_flags:
        print(f"spray: {len(new_flags)} flag(s) new since the baseline: {'; '.join(new_flags)}", file=sys.stderr)
        return EXIT_FLAGGED
    return EXIT_FLAGGED if outcome.flagged and arguments.fail_on_flag else EXIT_OK


def _checkpoints(config: SprayConfig) -> list[SprayConfig]:
    """The config of each checkpoint of a series (``model.weights`` a list), or ``[config]``."""
    from spray.model import checkpoint_configs

    return [config.model_copy(update={"model": model}) for model in checkpoint_configs(config.model)]


def _print_timeline(timeline: Timeline) -> None:
    """The series in one line, and one line per flagged pattern: where it was first flagged."""
    print(f"spray: {len(timeline.checkpoints)} checkpoints audited; the flags above are the last one's "
          f"({timeline.checkpoints[-1]}); the timeline is in the report and timeline.csv")
    for item in timeline.classes:
        for pattern in item.patterns:
            scores = " ".join("-" if point.cluster is None else f"{point.score:.2f}{'*' if point.flagged else ''}"
                              for point in pattern.points)
            print(f"  class {item.class_name}: pattern {pattern.id + 1} first flagged at "
                  f"{timeline.checkpoints[pattern.first_flagged]}; score per checkpoint (* flagged): {scores}")


def _check_baseline(arguments: argparse.Namespace, config: SprayConfig) -> Snapshot | None:
    """Before any work: ``--fail-on-new-flag`` needs a baseline, and the baseline must be an earlier run's
    output folder with a readable summary.json (ConfigError naming the folder otherwise). Returns its
    verdicts, None without a baseline."""
    if getattr(arguments, "fail_on_new_flag", False) and config.audit.baseline is None:
        from spray.errors import ConfigError

        raise ConfigError("--fail-on-new-flag compares with a baseline: give --baseline DIR or audit.baseline")
    if config.audit.baseline is not None:
        from spray.diff import load_baseline

        return load_baseline(config.audit.baseline)
    return None


def _finding_text(result: ClassResult, cluster: int) -> str:
    """How a flagged cluster's finding came together, when it is more than the spectral cluster."""
    finding = next((f for f in result.findings if f.cluster == cluster), None)
    if finding is None:
        return ""
    place = "a pattern that moves" if finding.anywhere else "one place"
    origins = ", ".join(str(c) for c in sorted(finding.clusters))
    return f"; {place}, members from cluster(s) {origins}"


def _print_diff(diff: AuditDiff) -> list[str]:
    """One line per new and per resolved flag; returns the new ones as 'class C cluster K' for stderr."""
    new = [f"class {c.class_index} cluster {c.current.cluster}" for c in diff.new if c.current is not None]
    print(f"spray: since the baseline {diff.baseline}: {len(diff.new)} new, {len(diff.persisting)} persisting, "
          f"{len(diff.resolved)} resolved flag(s)")
    for change in diff.new:
        if change.current is not None:
            print(f"  new: class {change.class_index} cluster {change.current.cluster} "
                  f"({len(change.current.members)} samples), score {change.current.score:.2f}")
    for change in diff.resolved:
        if change.baseline is not None:
            print(f"  resolved: class {change.class_index} cluster {change.baseline.cluster} of the baseline "
                  f"({len(change.baseline.members)} samples), score then {change.baseline.score:.2f}")
    return new


def _export(arguments: argparse.Namespace) -> int:
    """``export virelay``: the config's audit as a ViRelAy project in ``output_dir``."""
    from spray.export_audit import export_virelay

    demo, config = _load(arguments)
    config = _checkpoints(config)[-1]  # a series exports its last checkpoint, the one its report shows
    arguments.output_folder = Path(arguments.output_dir)
    if demo is not None:
        from spray.demo import prepare_demo

        prepare_demo(demo)
    path = export_virelay(config, arguments.output_dir, use_cache=not arguments.no_cache,
                          progress=not arguments.quiet)
    print(f"spray: wrote the ViRelAy project {path}; open it with `python -m virelay {path}` where ViRelAy is "
          "installed")
    return EXIT_OK


def _evaluate(arguments: argparse.Namespace) -> int:
    """``evaluate``: the faithfulness table of each method, printed and written to the output folder."""
    from spray.methods import compare_methods, format_table, resolve_methods, write_comparison

    demo, config = _load(arguments)
    arguments.output_folder = Path(config.output)
    names = [name.strip() for name in arguments.methods.split(",") if name.strip()] if arguments.methods else None
    resolve_methods(config.attribution, names)  # a wrong name fails before any work
    from spray.checks import check_output_folders

    check_output_folders(config)
    if demo is not None:
        from spray.demo import prepare_demo

        prepare_demo(demo)
    comparison = compare_methods(config, names, progress=not arguments.quiet)
    computed = ", ".join(f"{stage} {c['computed']}/{c['computed'] + c['cached']}"
                         for stage, c in comparison.stages.items())
    print(f"spray: tasks computed (the rest came from the cache): {computed}")
    for skipped in comparison.skipped_classes:
        print(f"spray: skipped class {skipped.class_name}: {skipped.reason}")
    print(format_table(comparison))
    paths = write_comparison(comparison, Path(config.output))
    print(f"spray: wrote {' and '.join(str(path) for path in paths)}")
    return EXIT_OK
