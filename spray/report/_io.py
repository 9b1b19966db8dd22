"""Atomic writes: a reader (or a crashed run) never sees a half-written report file, nor a report whose
files come from different runs (a report is written into a staging folder and published as a whole)."""

from __future__ import annotations

import contextlib
import ctypes
import io
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, TextIO

from spray.cache import process_alive


def _process_umask() -> int:
    # mkstemp creates files readable by the owner only; a report must get the usual permissions instead.
    # Reading the umask means setting it, so do it once at import rather than on every (threaded) write.
    current = os.umask(0o022)
    os.umask(current)
    return current


_UMASK = _process_umask()
_FILE_MODE = 0o666 & ~_UMASK
_FOLDER_MODE = 0o777 & ~_UMASK


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
    except BaseException as error:
        # Leave no stray temporary file behind when the write or the rename fails.
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        if isinstance(error, OSError) and error.filename is None:  # a full disk, said without the file
            error.filename = str(path)
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


# What a report consists of; everything else in an output folder is carried over when a new report replaces it.
REPORT_FILES = ("index.html", "summary.json", "samples.csv", "classes")
_RENAME_EXCHANGE = 2  # renameat2 flag: swap two paths atomically (Linux >= 3.15)
_AT_FDCWD = -100


def staging_folder(output_dir: Path) -> Path:
    """A new hidden folder beside ``output_dir`` to write a report into before it is published."""
    output_dir = Path(output_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.staging-{os.getpid()}-", dir=output_dir.parent))
    # mkdtemp makes it private to the owner; once published it is the output folder, with the usual permissions
    os.chmod(staging, _FOLDER_MODE)
    return staging


def publish_folder(staging: Path, output_dir: Path) -> None:
    """Make the report written into ``staging`` the content of ``output_dir`` in one step, so that its files
    appear together or not at all; other files already in ``output_dir`` are kept. Concurrent publishers of
    one folder take turns (an exclusive lock on ``.<name>.lock`` beside it); the last one's report wins whole.
    """
    import fcntl  # POSIX only: imported here so that the module still loads elsewhere

    staging, output_dir = Path(staging), Path(output_dir)
    with open(output_dir.parent / f".{output_dir.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _sweep_staging(output_dir)
        if not output_dir.exists():
            os.rename(staging, output_dir)
            return
        for entry in sorted(output_dir.iterdir()):
            if entry.name not in REPORT_FILES:
                os.rename(entry, staging / entry.name)
        if not _exchange(staging, output_dir):
            aside = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.old-{os.getpid()}-", dir=output_dir.parent))
            os.rename(output_dir, aside / "report")
            os.rename(staging, output_dir)
            staging = aside
        shutil.rmtree(staging, ignore_errors=True)


def _exchange(first: Path, second: Path) -> bool:
    """Swap two directories atomically with renameat2(RENAME_EXCHANGE); False where that is unavailable."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    result = renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE)
    return result == 0


def _sweep_staging(output_dir: Path) -> None:
    """Remove staging folders of ``output_dir`` whose writer is gone (killed while drawing), first moving
    back any file of the output folder that it was carrying over."""
    for folder in output_dir.parent.glob(f".{output_dir.name}.*-*"):
        match = re.match(rf"\.{re.escape(output_dir.name)}\.(staging|old)-(\d+)-", folder.name)
        if not match or not folder.is_dir() or process_alive(int(match.group(2))):
            continue
        for entry in list(folder.iterdir()):
            if entry.name not in REPORT_FILES and entry.name != "report" and output_dir.exists() \
                    and not (output_dir / entry.name).exists():
                os.rename(entry, output_dir / entry.name)
        shutil.rmtree(folder, ignore_errors=True)
