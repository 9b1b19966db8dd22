"""Errors that reach the user, each with the exit code the command line returns for it.

Every message names the culprit (the file, config key, layer or sample) and says what was expected,
so that a scheduled audit that fails can be fixed from its log alone.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FLAGGED = 1  # only with --fail-on-flag: the audit ran and found Clever Hans evidence
EXIT_CONFIG = 2  # the config file is missing, not YAML, or fails validation (argparse also uses 2)
EXIT_DATA = 3  # the data cannot be used: missing manifest, no readable image, too few samples
EXIT_MODEL = 4  # the model cannot be built, its weights do not load or do not fit, a layer is unsupported
EXIT_RUN = 5  # the run failed while computing (a bug, a NaN that cannot be skipped, a dead cluster)


class SprayError(Exception):
    """Base class of the errors spray reports to the user instead of a traceback."""

    exit_code = EXIT_RUN


class ConfigError(SprayError):
    """The configuration is invalid: the message names the key path and what was expected."""

    exit_code = EXIT_CONFIG


class DataError(SprayError):
    """The data cannot be used: the message names the file, sample or class."""

    exit_code = EXIT_DATA


class ModelError(SprayError):
    """The model cannot be built, loaded or explained: the message names the file or layer."""

    exit_code = EXIT_MODEL


class RunError(SprayError):
    """A stage failed while computing."""

    exit_code = EXIT_RUN
