"""``python -m spray run CONFIG`` and ``python -m spray validate CONFIG``.

Exit codes (spray.errors): 0 success; 1 a cluster was flagged and --fail-on-flag was given; 2 invalid
config or command line; 3 unusable data; 4 unusable model; 5 the run failed.
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
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Sequence

from spray.errors import EXIT_FLAGGED, EXIT_OK, EXIT_RUN, SprayError

# The file an unexpected error's traceback goes to, in the output folder (or the temporary folder when the
# config did not load far enough to name one).
ERROR_LOG = "spray-error.log"
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spray", description="Audit a trained PyTorch classifier for Clever Hans behaviour with SpRAY."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the audit and write the report")
    run.add_argument("config", type=Path, help="the audit's YAML config")
    run.add_argument("--output", type=Path, help="folder for the report (overrides the config's output)")
    run.add_argument("--classes", nargs="+", metavar="CLASS", help="classes to audit (indices or names)")
    run.add_argument("--no-cache", action="store_true", help="recompute everything and store nothing")
    run.add_argument("--fail-on-flag", action="store_true", help=f"exit {EXIT_FLAGGED} when a cluster is flagged")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    validate = commands.add_parser("validate", help="check a config and that its files exist; run nothing")
    validate.add_argument("config", type=Path)
    for command in (run, validate):
        command.add_argument("--debug", action="store_true",
                             help="print the traceback of an unexpected error here too (it is always logged)")
    return parser


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
    except Exception as error:  # noqa: BLE001 - the last resort: one line and a logged traceback, never a bare crash
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
    return overrides


def _validate(arguments: argparse.Namespace) -> int:
    from spray.config import load_config
    from spray.data import load_dataset
    from spray.errors import DataError, ModelError

    config = load_config(arguments.config, _overrides(arguments))
    demo_builds = config.demo is not None
    if not demo_builds:
        if config.model.weights is not None and not Path(config.model.weights).exists():
            raise ModelError(f"model.weights: file not found: {config.model.weights}")
        factory_file = config.model.factory.rpartition(":")[0]
        if factory_file.endswith(".py") and not Path(factory_file).exists():
            raise ModelError(f"model.factory: file not found: {factory_file}")
        dataset = load_dataset(config.data)
        for index in [dataset.class_index(c) for c in (config.audit.classes or [])]:
            if index >= len(dataset.class_names):
                raise DataError(f"audit.classes: class {index} does not exist")
        missing = f", {len(dataset.missing)} listed file(s) missing" if dataset.missing else ""
        print(f"spray: {arguments.config}: valid; {len(dataset.samples)} samples in "
              f"{len(dataset.class_names)} classes{missing}")
        for sample_id, reason in dataset.missing[:20]:
            print(f"  missing: {sample_id}: {reason}")
    else:
        print(f"spray: {arguments.config}: valid; the demo case is built in {config.demo.directory} on first run")
    return EXIT_OK


def _run(arguments: argparse.Namespace) -> int:
    from spray.config import load_config
    from spray.pipeline import run_audit

    config = load_config(arguments.config, _overrides(arguments))
    arguments.output_folder = Path(config.output)
    outcome = run_audit(config, use_cache=not arguments.no_cache, progress=not arguments.quiet)
    computed = ", ".join(f"{stage} {c['computed']}/{c['computed'] + c['cached']}" for stage, c in outcome.stages.items())
    print(f"spray: tasks computed (the rest came from the cache): {computed}")
    for skipped in outcome.skipped_classes:
        print(f"spray: skipped class {skipped.class_name}: {skipped.reason}")
    if outcome.flagged:
        print(f"spray: {len(outcome.flagged)} cluster(s) flagged for Clever Hans evidence:")
        for result, cluster in outcome.flagged:
            print(f"  class {result.class_name}: cluster {cluster.id} ({cluster.size} of {result.n_samples} samples), "
                  f"score {cluster.score:.2f}")
    else:
        print("spray: no cluster flagged")
    print(f"spray: report: {outcome.report}")
    return EXIT_FLAGGED if outcome.flagged and arguments.fail_on_flag else EXIT_OK
