"""What the terminal shows: the label mapping, skipped images, progress as plain lines in a log, the version."""

from __future__ import annotations

import logging

import pytest

from spray import __version__
from spray.cli import main
from spray.errors import EXIT_OK


@pytest.mark.e2e
def test_a_run_logged_to_a_file_shows_mapping_progress_and_skipped_images(tiny_audit, tiny_case, capsys, caplog):
    (tiny_case / "images" / "c0" / "003.png").unlink()
    (tiny_case / "images" / "c2" / "005.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    caplog.set_level(logging.INFO)
    assert main(["run", str(tiny_audit())]) == EXIT_OK  # not --quiet: progress is on, stderr is no terminal
    out = capsys.readouterr().out
    assert "2 image(s) skipped" in out
    assert "c0/003.png: file not found" in out and "c2/005.png: cannot decode image" in out
    logged = [record.getMessage() for record in caplog.records]
    assert "labels -> model outputs (integer labels are output indices):" in logged
    assert "  output 0 <- '0' (23 samples)" in logged  # the missing file is not a sample
    progress = [line for line in logged if line.startswith("tasks ")]
    assert 2 <= len(progress) <= 11 and progress[-1].startswith("tasks 21/21: attribute 6/6")
    assert any(line.startswith("report written in") for line in logged)
    assert not any("\r" in line for line in logged)


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"spray {__version__}"


def test_a_bar_only_on_terminals_that_report_a_size(monkeypatch):
    import io
    import os
    import sys

    from spray.progress import interactive

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stdout", Terminal())
    monkeypatch.setattr(sys, "stderr", Terminal())
    monkeypatch.setattr("shutil.get_terminal_size", lambda fallback=(0, 0): os.terminal_size((120, 40)))
    assert interactive()
    monkeypatch.setattr("shutil.get_terminal_size", lambda fallback=(0, 0): os.terminal_size((0, 0)))
    assert not interactive()  # a terminal without a size (some CI consoles)
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    monkeypatch.setattr("shutil.get_terminal_size", lambda fallback=(0, 0): os.terminal_size((120, 40)))
    assert not interactive()  # stdout redirected to a log
