"""``python -m spray run CONFIG`` and ``python -m spray validate CONFIG``.

Exit codes (spray.errors): 0 success; 1 a cluster was flagged and --fail-on-flag was given; 2 invalid
config or command line; 3 unusable data; 4 unusable model; 5 the run failed.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from spray.errors import EXIT_FLAGGED, EXIT_OK, EXIT_RUN, SprayError


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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="spray: %(message)s")
    # OpenMP busy-waiting makes torch several times slower when another process holds a core.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        if arguments.command == "validate":
            return _validate(arguments)
        return _run(arguments)
    except SprayError as error:
        print(f"spray: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("spray: interrupted; finished cache entries are kept and the next run resumes from them",
              file=sys.stderr)
        return EXIT_RUN


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
