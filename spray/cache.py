"""The on-disk cache of intermediates, addressed by content keys, verified on every read.

An entry is a folder ``<directory>/<stage>/<key>/`` holding ``arrays.npz``, ``meta.json``, for stages that
stream large arrays (``cached_stream``) chunked zarr stores beside them (``<name>.zarr``), and
``checksums.json``: the size and CRC-32 of every other file of the entry, written last. It is written under
a temporary name and renamed into place, so an interrupted run leaves either a whole entry or none, and the
next run resumes from the entries that exist.

Nothing in an entry is trusted blindly. When a task finds its entry on disk, ``arrays.npz``, ``meta.json``
and the zarr metadata are checked against their checksums, and every zarr chunk file must exist with its
recorded size; the content of a chunk is checked when it is read (``Entry.open_array``), so a re-run whose
later stages are cached does not read all relevance just to verify it. An entry that fails a check is
discarded with one logged line naming it: found on lookup, it is recomputed at once; found while a chunk is
read, ``CorruptEntry`` is raised and ``spray.pipeline.run_audit`` runs the graph once more, which recomputes
it. A folder without ``checksums.json`` (a half-made or foreign entry) is discarded the same way, so it never
blocks its stage. CRC-32 guards against accidental damage (truncation, lost or garbled blocks, edits), not
against an attacker who can write the cache; it hashes several GB/s (``benchmarks/cache_verify.py``).

A process killed while writing leaves its hidden staging folder (``.<key>.<host>.<pid>.<uuid>.tmp``) behind;
it is never read, and it is removed once that process is gone (``sweep_stale``, at the start of a run, and
whenever the same key is finished). Keys come from ``dask.base.tokenize`` of everything that determines the
result (config section, upstream keys, model and data tokens), never of timestamps.

Tasks hand each other the entry's path rather than its arrays: on a distributed cluster this keeps large
arrays off the network and out of worker memory, and it needs the cache folder on a filesystem that every
worker sees.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import uuid
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from dask.base import tokenize

from spray import __version__
from spray.errors import RunError

if TYPE_CHECKING:
    import zarr

log = logging.getLogger(__name__)

CHECKSUMS = "checksums.json"
# Files are hashed in blocks of this many bytes, so that verifying a large chunk needs no more memory.
_HASH_BLOCK = 1 << 22


class CorruptEntry(RunError):
    """A cache entry failed verification while it was read; it has been discarded (the message names it)."""


@dataclass(frozen=True)
class Entry:
    """A finished cache entry: where it is and whether this run computed it (False: found on disk)."""

    stage: str
    key: str
    path: str
    computed: bool

    def read(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """The entry's small arrays and metadata; raises CorruptEntry (after discarding it) when they
        cannot be read."""
        try:
            return read_entry(self.path)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
            raise _discarded(Path(self.path), f"unreadable: {error}") from None

    def open_array(self, name: str) -> VerifiedArray:
        """A chunked array the entry streamed to disk (``cached_stream``), opened read-only: slicing it
        reads only the chunks it touches, each checked against its checksum the first time."""
        return VerifiedArray(Path(self.path), name)


def open_stored_array(path: str | Path, name: str) -> zarr.Array:
    """The zarr array ``<path>/<name>.zarr``, read-only and unverified (see ``Entry.open_array``)."""
    import zarr

    return zarr.open_array(str(Path(path) / f"{name}.zarr"), mode="r")


def read_entry(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The arrays and metadata of an entry folder (unverified: ``Entry.read`` verifies)."""
    path = Path(path)
    with np.load(path / "arrays.npz", allow_pickle=False) as stored:
        arrays = {name: stored[name] for name in stored.files}
    meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
    return arrays, meta


class VerifiedArray:
    """A read-only zarr array of an entry whose chunk files are checked against the entry's checksums
    before they are first read. Supports what the pipeline uses: ``shape``, ``chunks``, ``dtype`` and
    slicing along the first axis (the only axis the arrays are chunked along)."""

    def __init__(self, folder: Path, name: str):
        self._folder = folder
        self._array = open_stored_array(folder, name)
        self._expected = _load_checksums(folder)
        self._chunk_files = _chunk_files(self._expected, f"{name}.zarr/")
        self._verified: set[int] = set()
        self.shape, self.chunks, self.dtype = self._array.shape, self._array.chunks, self._array.dtype

    def __getitem__(self, selection: Any) -> np.ndarray:
        rows = selection[0] if isinstance(selection, tuple) else selection
        if isinstance(rows, slice):
            start, stop, _ = rows.indices(self.shape[0])
        elif isinstance(rows, (int, np.integer)):
            start, stop = int(rows) % max(self.shape[0], 1), int(rows) % max(self.shape[0], 1) + 1
        else:
            start, stop = 0, self.shape[0]
        step = self.chunks[0]
        for chunk in range(start // step, (max(stop, start + 1) - 1) // step + 1):
            if chunk not in self._verified:
                for relative in self._chunk_files.get(chunk, []):
                    problem = _check_file(self._folder, relative, self._expected[relative], content=True)
                    if problem:
                        raise _discarded(self._folder, problem)
                self._verified.add(chunk)
        return np.asarray(self._array[selection])


def _chunk_files(expected: dict[str, list[int]], prefix: str) -> dict[int, list[str]]:
    """Chunk files of one zarr array by their index along the first axis (zarr 3 ``c/<i>/...``, zarr 2
    ``<i>.<j>...``); metadata files are not chunks."""
    found: dict[int, list[str]] = {}
    for relative in expected:
        if not relative.startswith(prefix):
            continue
        rest = relative[len(prefix):]
        match = re.match(r"c/(\d+)(/|$)", rest) or re.match(r"(\d+)([./]|$)", rest)
        if match:
            found.setdefault(int(match.group(1)), []).append(relative)
    return found


def _crc32(path: Path) -> int:
    value = 0
    with open(path, "rb") as handle:
        while block := handle.read(_HASH_BLOCK):
            value = zlib.crc32(block, value)
    return value


def _is_chunk(relative: str) -> bool:
    _head, _, rest = relative.partition(".zarr/")
    return bool(rest) and bool(re.match(r"(c/)?\d", rest))


def _check_file(folder: Path, relative: str, expected: list[int], content: bool) -> str | None:
    """What is wrong with one file of an entry (None: nothing). ``content``: compare the checksum too,
    not only that the file exists with its size."""
    path = folder / relative
    try:
        size = path.stat().st_size
        if size != expected[0]:
            return f"{relative} has {size} bytes, {expected[0]} were written"
        if content and _crc32(path) != expected[1]:
            return f"{relative} does not match its checksum"
    except FileNotFoundError:
        return f"{relative} is missing"
    return None


def _load_checksums(folder: Path) -> dict[str, list[int]]:
    try:
        manifest = json.loads((folder / CHECKSUMS).read_text(encoding="utf-8"))
        files = manifest["files"]
        if not isinstance(files, dict):
            raise ValueError("no file list")
        return files
    except FileNotFoundError:
        raise _discarded(folder, f"{CHECKSUMS} is missing (the entry was never finished)") from None
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise _discarded(folder, f"{CHECKSUMS} is unreadable: {error}") from None


def verify_entry(folder: Path) -> str | None:
    """What is wrong with an entry folder (None: nothing): a missing ``checksums.json``, a file it lists that
    is missing or has another size, or any file but a zarr chunk whose checksum differs (chunks are checked
    when read)."""
    try:
        manifest = json.loads((folder / CHECKSUMS).read_text(encoding="utf-8"))
        expected = manifest["files"]
    except FileNotFoundError:
        return f"{CHECKSUMS} is missing (the entry was never finished)"
    except (OSError, ValueError, KeyError, TypeError) as error:
        return f"{CHECKSUMS} is unreadable: {error}"
    if not {"arrays.npz", "meta.json"} <= set(expected):
        return f"{CHECKSUMS} does not list arrays.npz and meta.json"
    for relative, value in sorted(expected.items()):
        problem = _check_file(folder, relative, value, content=not _is_chunk(relative))
        if problem:
            return problem
    return None


def entry_key(stage: str, store_version: int, *parts: Any) -> str:
    """The content key of a ``stage`` entry: spray's version (a new release may compute differently), the
    stage's ``STORE_VERSION`` (what its entries hold), and ``parts``, everything that determines the entry
    (config sections tokenize by their values: ``spray.config``)."""
    return tokenize(stage, __version__, store_version, *parts)


def cached(
    directory: str,
    stage: str,
    key: str,
    compute: Callable[..., tuple[dict[str, np.ndarray], dict[str, Any]]],
    *args: Any,
) -> Entry:
    """Return the entry for ``key``, computing and storing it first when it is not on disk (or fails
    verification).

    ``compute(*args)`` returns ``(arrays, meta)``: numpy arrays (no object dtype) and a JSON-able dict.
    """
    final = Path(directory) / stage / key
    if _usable(final):
        return Entry(stage, key, str(final), computed=False)
    arrays, meta = compute(*args)
    # The staging folder is made only now, so a run that fails elsewhere while this computes leaves nothing.
    return _publish(_staging(final), final, stage, key, arrays, meta)


def cached_stream(
    directory: str,
    stage: str,
    key: str,
    compute: Callable[..., tuple[dict[str, np.ndarray], dict[str, Any]]],
    *args: Any,
) -> Entry:
    """Like ``cached``, for computations that write large arrays as they go.

    ``compute(folder, *args)`` may write chunked arrays into ``folder`` (the entry's staging folder, e.g.
    with ``create_stored_array``) while it runs, so that they never have to be in memory whole; it returns
    the small ``(arrays, meta)`` stored beside them. Everything becomes visible at once, when the staging
    folder is renamed to the entry's name.
    """
    final = Path(directory) / stage / key
    if _usable(final):
        return Entry(stage, key, str(final), computed=False)
    staging = _staging(final)
    try:
        arrays, meta = compute(staging, *args)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return _publish(staging, final, stage, key, arrays, meta)


def _usable(final: Path) -> bool:
    """Whether a verified entry is at ``final``; a folder there that fails verification is discarded."""
    if not final.exists():
        return False
    problem = verify_entry(final)
    if problem is None:
        _sweep_dead_staging(final)
        return True
    _discarded(final, problem)
    return False


def _discarded(folder: Path, problem: str) -> CorruptEntry:
    """Move a damaged entry out of the way (renaming is atomic: a concurrent reader sees it whole or not at
    all), delete it, log one line naming it, and return the error to raise where it was being read."""
    aside = folder.parent / f".{folder.name}.{_HOST}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
    try:
        os.rename(folder, aside)
    except FileNotFoundError:
        pass  # another process discarded it first
    else:
        shutil.rmtree(aside, ignore_errors=True)
    message = f"cache entry {folder} failed verification ({problem}): discarded, it is recomputed"
    log.warning("%s", message)
    return CorruptEntry(message)


def _staging(final: Path) -> Path:
    """A new hidden staging folder next to the entry, named after the key, this host and this process."""
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.parent / f".{final.name}.{_HOST}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
    staging.mkdir()
    return staging


def _write_checksums(staging: Path) -> None:
    """checksums.json: [size, CRC-32] of every file of the entry, by path relative to it."""
    files = {}
    for path in sorted(p for p in staging.rglob("*") if p.is_file()):
        relative = path.relative_to(staging).as_posix()
        if relative != CHECKSUMS:
            files[relative] = [path.stat().st_size, _crc32(path)]
    (staging / CHECKSUMS).write_text(json.dumps({"algorithm": "crc32", "files": files}), encoding="utf-8")


def _publish(staging: Path, final: Path, stage: str, key: str, arrays: dict[str, np.ndarray],
             meta: dict[str, Any]) -> Entry:
    """Write the small arrays, meta.json and checksums.json into ``staging`` and rename it to ``final``."""
    try:
        np.savez(staging / "arrays.npz", allow_pickle=False, **arrays)
        (staging / "meta.json").write_text(json.dumps(meta, default=_json_default), encoding="utf-8")
        # checksums.json is written last: its presence is what marks an entry complete.
        _write_checksums(staging)
        try:
            os.rename(staging, final)
        except OSError:
            # Another worker finished the same entry first (both computed the same content), or a damaged
            # folder is in the way: discard that one and publish this.
            problem = verify_entry(final) if final.exists() else "missing"
            if problem == "missing":
                raise
            if problem is not None:
                _discarded(final, problem)
                os.rename(staging, final)
    except OSError as error:
        if error.filename is None:  # numpy and zipfile report a full disk without naming the file
            error.filename = str(staging)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _sweep_dead_staging(final)
    return Entry(stage, key, str(final), computed=True)


def create_stored_array(folder: Path, name: str, shape: tuple[int, ...], chunk_rows: int,
                        dtype: str = "float32") -> zarr.Array:
    """A chunked on-disk array ``<folder>/<name>.zarr`` chunked along its first axis only (``chunk_rows``
    rows per chunk), so that writing or reading a few rows touches one or two chunk files."""
    import zarr

    # open_array(mode="w") rather than zarr 3's create_array: the same call works with zarr 2 (Python 3.10)
    return zarr.open_array(str(Path(folder) / f"{name}.zarr"), mode="w", shape=shape,
                           chunks=(max(1, chunk_rows), *shape[1:]), dtype=dtype)


_HOST = socket.gethostname().replace(".", "-")


def _sweep_dead_staging(final: Path) -> None:
    """Remove staging folders of this finished key left by processes of this host that no longer run
    (a worker killed mid-write). Folders of live processes, or of other hosts (whose processes this one
    cannot see), are left alone: they may still be writing."""
    _sweep(final.parent.glob(f".{final.name}.{_HOST}.*.tmp"))


def sweep_stale(directory: str | Path) -> int:
    """Remove every staging or discarded folder in the cache ``directory`` that a process of this host left
    behind and that no longer runs, whatever its key (a run killed while computing an entry whose key no
    later run asks for). Returns how many were removed."""
    return _sweep(Path(directory).glob(f"*/.*.{_HOST}.*.tmp"))


def _sweep(candidates: Any) -> int:
    removed = 0
    for staging in candidates:
        match = re.search(rf"\.{re.escape(_HOST)}\.(\d+)\.[0-9a-f]+\.tmp$", staging.name)
        if match is None:
            continue
        pid = int(match.group(1))
        if not process_alive(pid):
            shutil.rmtree(staging, ignore_errors=True)
            removed += 1
    return removed


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host (this process counts as alive)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot store {type(value).__name__} in a cache entry's metadata")
