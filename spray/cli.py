"""``python -m spray run CONFIG``, ``python -m spray validate CONFIG`` and ``python -m spray init MODEL IMAGES``.

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
    from spray import __version__

    parser.add_argument("--version", action="version", version=f"spray {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the audit and write the report")
    run.add_argument("config", type=Path, help="the audit's YAML config")
    run.add_argument("--output", type=Path, help="folder for the report (overrides the config's output)")
    run.add_argument("--classes", nargs="+", metavar="CLASS", help="classes to audit (indices or names)")
    run.add_argument("--no-cache", action="store_true", help="recompute everything and store nothing")
    run.add_argument("--fail-on-flag", action="store_true", help=f"exit {EXIT_FLAGGED} when a cluster is flagged")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    validate = commands.add_parser(
        "validate", help="check that the run will start: model, weights, images, labels, attribution, folders")
    validate.add_argument("config", type=Path)
    validate.add_argument("--output", type=Path, help="folder for the report (overrides the config's output)")
    validate.add_argument("--classes", nargs="+", metavar="CLASS", help="classes to audit (indices or names)")
    init = commands.add_parser("init", help="write a commented starter config for a model and an image folder")
    init.add_argument("model", help="factory: models.py, models.py:build or package.module:build")
    init.add_argument("images", type=Path, help="folder with manifest.csv or one sub-folder per class")
    init.add_argument("--weights", type=Path, help="state_dict file (torch.save(model.state_dict(), path))")
    init.add_argument("--config", type=Path, default=Path("audit.yaml"), help="the file to write (default audit.yaml)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="spray: %(message)s")
    # OpenMP busy-waiting makes torch several times slower when another process holds a core.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        if arguments.command == "validate":
            return _validate(arguments)
        if arguments.command == "init":
            return _init(arguments)
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


# What validate cannot know before the audit runs; printed so that "valid" is not read as more than it is.
_NOT_CHECKED = (
    "not checked: every image decodes (one per class was decoded), every class has enough samples after "
    "skipped images, disk space for the cache and report, the numerical health of every heatmap",
    "not checked: that the model's outputs are in the order of the names above (spray cannot know what the "
    "model was trained on; give data.class_names when unsure)",
)


def _validate(arguments: argparse.Namespace) -> int:
    from spray.checks import check_output_folders, preflight
    from spray.config import load_config
    from spray.data import load_dataset
    from spray.pipeline import audited_classes, mapping_lines

    config = load_config(arguments.config, _overrides(arguments))
    check_output_folders(config)
    if config.demo is not None and not Path(config.model.weights or config.demo.directory).exists():
        print(f"spray: {arguments.config}: valid config; the demo case is built in {config.demo.directory} on "
              "first run, so the model and images are checked then")
        return EXIT_OK
    dataset = load_dataset(config.data)
    checked = preflight(config, dataset, per_class=True)
    classes, skipped = audited_classes(config, dataset)
    print(f"spray: {arguments.config}: valid; {len(dataset.samples)} samples in {len(classes)} audited classes; "
          f"the model has {checked.n_outputs} outputs; one image of each class decoded and explained "
          f"({config.attribution.method}"
          f"{', composite ' + config.attribution.composite if config.attribution.method == 'lrp' else ''})")
    for line in mapping_lines(checked.mapping):
        print(f"  {line}")
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
    from spray.config import load_config
    from spray.pipeline import run_audit

    config = load_config(arguments.config, _overrides(arguments))
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
                  f"score {cluster.score:.2f}")
    else:
        print("spray: no cluster flagged")
    print(f"spray: report: {outcome.report}")
    return EXIT_FLAGGED if outcome.flagged and arguments.fail_on_flag else EXIT_OK
