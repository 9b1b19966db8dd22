"""Atomic file writes: a reader (or a crashed run) never sees a half-written report file."""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterator, TextIO


def _process_umask() -> int:
    # mkstemp creates files readable by the owner only; a report must get the usual permissions instead.
    # Reading the umask means setting it, so do it once at import rather than on every (threaded) write.
    current = os.umask(0o022)
    os.umask(current)
    return current


_FILE_MODE = 0o666 & ~_process_umask()


@contextlib.contextmanager
def atomic_writer(path: Path) -> Iterator[BinaryIO]:
    """A binary file to write in parts that becomes ``path`` when the block ends, and vanishes on an error.

    It is a temporary file next to the target, renamed with ``os.replace``: on one file system, POSIX and
    Windows both make the rename atomic.
    """
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if hasattr(os, "fchmod"):  # POSIX; on Windows the default permissions are fine
            os.fchmod(fd, _FILE_MODE)
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        # Leave no stray temporary file behind when the write or the rename fails.
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise


@contextlib.contextmanager
def atomic_text_writer(path: Path) -> Iterator[TextIO]:
    """``atomic_writer`` for text: UTF-8, newlines written as given (as ``write_atomic`` writes a str)."""
    with atomic_writer(path) as handle:
        text = io.TextIOWrapper(handle, encoding="utf-8", newline="")
        yield text
        text.flush()
        text.detach()  # the file is closed by atomic_writer


def write_atomic(path: Path, data: bytes | str) -> Path:
    """Write ``data`` (str as UTF-8) to ``path`` atomically (see ``atomic_writer``)."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_writer(path) as handle:
        handle.write(payload)
    return Path(path)
