"""Helpers of the fault-injection suite: run the tiny audit through the command line (in this process or
as a child process) and compare what two runs wrote, run metadata aside."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from spray.cli import main

REPOSITORY = Path(__file__).resolve().parents[2]


def run_cli(*argv: str) -> int:
    """``python -m spray ...`` in this process; the exit code."""
    return main(list(argv))


def spray_process(*argv: str, cwd: Path, **popen: Any) -> subprocess.Popen:
    """``python -m spray ...`` as a child process (its own session, so that signals reach it alone)."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPOSITORY)}
    return subprocess.Popen([sys.executable, "-m", "spray", *argv], cwd=cwd, env=environment,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            **popen)


def outcome(report: Path) -> tuple[dict[str, Any], str]:
    """summary.json without its run metadata (times, paths, cache counts) and samples.csv, as written."""
    summary = json.loads((report / "summary.json").read_text(encoding="utf-8"))
    summary.pop("run")
    return summary, (report / "samples.csv").read_text(encoding="utf-8")


def leftovers(folder: Path) -> list[str]:
    """Temporary files and folders anywhere under ``folder``: cache staging (``*.tmp``), report staging
    (``.<name>.staging-*``) and demo staging (``*.building*``)."""
    found = [p for pattern in ("*.tmp", ".*.staging-*", "*.building*") for p in folder.rglob(pattern)]
    return sorted(str(p.relative_to(folder)) for p in found)
