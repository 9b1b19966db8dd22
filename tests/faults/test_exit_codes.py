"""One exit code per cause, and one line that says what happened: unexpected errors exit 5 with their
traceback in a log file, a full disk is named as such, SIGTERM is an interrupt, and 1 means flagged only."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from audit_cases import make_tiny_case, tiny_config, write_config
from fault_cases import leftovers, run_cli, spray_process

import spray.analysis.task


@pytest.fixture
def case(tmp_path: Path) -> Path:
    folder = make_tiny_case(tmp_path / "case")
    write_config(folder, tiny_config(folder))
    return folder


@pytest.mark.e2e
def test_an_unexpected_error_exits_5_with_one_line_and_a_logged_traceback(case, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug deep inside")

    monkeypatch.setattr(spray.analysis.task, "spectral_analysis", broken)
    assert run_cli("run", str(case / "audit.yaml"), "--quiet") == 5
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if line.startswith("spray: error")]
    assert "ZeroDivisionError: a bug deep inside" in line and "spray-error.log" in line
    assert "Traceback" not in err
    log = (case / "report" / "spray-error.log").read_text()
    assert "Traceback" in log and "def broken" not in err and "broken" in log


@pytest.mark.e2e
def test_debug_prints_the_traceback_too(case, monkeypatch, capsys):
    monkeypatch.setattr(spray.analysis.task, "spectral_analysis", lambda *a, **k: 1 / 0)
    assert run_cli("run", str(case / "audit.yaml"), "--quiet", "--debug") == 5
    assert "Traceback" in capsys.readouterr().err


@pytest.mark.e2e
def test_a_full_disk_says_disk_full_and_names_the_path(case, monkeypatch, capsys):
    def full(file, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(np, "savez", full)
    assert run_cli("run", str(case / "audit.yaml"), "--quiet") == 5
    err = capsys.readouterr().err
    assert "disk full" in err and str(case / "cache") in err
    assert not leftovers(case)


def _mount_tmpfs(folder: Path, size: str) -> None:
    folder.mkdir(parents=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs privileges): {result.stderr.strip()}")


@pytest.mark.e2e
def test_a_full_disk_under_the_output_leaves_the_previous_report_whole(case, tmp_path, capsys):
    full = tmp_path / "full"
    _mount_tmpfs(full, "96k")
    try:
        config = tiny_config(case, output=str(full / "report"))
        write_config(case, config)
        assert run_cli("run", str(case / "audit.yaml"), "--quiet") == 5
        err = capsys.readouterr().err
        assert "disk full" in err and str(full) in err
        # nothing of the report appeared (its files come together or not at all) and nothing was left over
        assert not (full / "report" / "summary.json").exists() and not (full / "report" / "index.html").exists()
        assert not leftovers(full) and not [p for p in full.iterdir() if ".staging" in p.name]
    finally:
        subprocess.run(["umount", str(full)], check=False)


@pytest.mark.e2e
def test_exit_1_only_for_a_flag_with_fail_on_flag(case):
    assert run_cli("run", str(case / "audit.yaml"), "--quiet") == 0
    flagged = json.loads((case / "report" / "summary.json").read_text())["flagged"]
    assert run_cli("run", str(case / "audit.yaml"), "--quiet", "--fail-on-flag") == (1 if flagged else 0)


@pytest.mark.e2e
def test_sigterm_is_an_interrupt_that_keeps_finished_entries_and_exits_5(case):
    run = spray_process("run", "audit.yaml", "--quiet", cwd=case)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list((case / "cache").glob("attribute/*/meta.json")):
        time.sleep(0.05)
    run.send_signal(signal.SIGTERM)
    _, err = run.communicate(timeout=120)
    if run.returncode == 0:
        pytest.skip("the run finished before SIGTERM arrived")
    assert run.returncode == 5
    assert "terminated (SIGTERM)" in err and "finished cache entries are kept" in err
    assert list((case / "cache").glob("attribute/*/checksums.json"))
    assert run_cli("run", str(case / "audit.yaml"), "--quiet") == 0
