"""The on-disk cache of intermediates, addressed by content keys.

An entry is a folder ``<directory>/<stage>/<key>/`` holding ``arrays.npz`` and ``meta.json``, and for
stages that stream large arrays (``cached_stream``) chunked zarr stores beside them (``<name>.zarr``). It is
written under a temporary name and renamed into place, so an interrupted run leaves either a whole entry or
none, and the next run resumes from the entries that exist. A process killed while writing leaves its hidden
staging folder (``.<key>.<host>.<pid>.<uuid>.tmp``) behind; it is never read, and it is removed once the same
key is finished on the same host and that process is gone. Keys come from ``dask.base.tokenize`` of everything
that determines the result (config section, upstream keys, model and data tokens), never of timestamps.

Tasks hand each other the entry's path rather than its arrays: on a distributed cluster this keeps large
arrays off the network and out of worker memory, and it needs the cache folder on a filesystem that every
worker sees.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

if TYPE_CHECKING:
    import zarr


@dataclass(frozen=True)
class Entry:
    """A finished cache entry: where it is and whether this run computed it (False: found on disk)."""

    stage: str
    key: str
    path: str
    computed: bool

    def read(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return read_entry(self.path)

    def open_array(self, name: str) -> "zarr.Array":
        """A chunked array the entry streamed to disk (``cached_stream``), opened read-only: slicing it
        reads only the chunks it touches."""
        return open_stored_array(self.path, name)


def open_stored_array(path: str | Path, name: str) -> "zarr.Array":
    """The zarr array ``<path>/<name>.zarr``, read-only."""
    import zarr

    return zarr.open_array(str(Path(path) / f"{name}.zarr"), mode="r")


def read_entry(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The arrays and metadata of an entry folder."""
    path = Path(path)
    with np.load(path / "arrays.npz", allow_pickle=False) as stored:
        arrays = {name: stored[name] for name in stored.files}
    meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
    return arrays, meta


def cached(
    directory: str,
    stage: str,
    key: str,
    compute: Callable[..., tuple[dict[str, np.ndarray], dict[str, Any]]],
    *args: Any,
) -> Entry:
    """Return the entry for ``key``, computing and storing it first when it is not on disk.

    ``compute(*args)`` returns ``(arrays, meta)``: numpy arrays (no object dtype) and a JSON-able dict.
    """
    final = Path(directory) / stage / key
    if (final / "meta.json").exists():
        _sweep_dead_staging(final)
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
    if (final / "meta.json").exists():
        _sweep_dead_staging(final)
        return Entry(stage, key, str(final), computed=False)
    staging = _staging(final)
    try:
        arrays, meta = compute(staging, *args)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return _publish(staging, final, stage, key, arrays, meta)


def _staging(final: Path) -> Path:
    """A new hidden staging folder next to the entry, named after the key, this host and this process."""
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.parent / f".{final.name}.{_HOST}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
    staging.mkdir()
    return staging


def _publish(staging: Path, final: Path, stage: str, key: str, arrays: dict[str, np.ndarray],
             meta: dict[str, Any]) -> Entry:
    """Write the small arrays and meta.json into ``staging`` and rename it to ``final``."""
    try:
        np.savez(staging / "arrays.npz", **arrays)
        # meta.json is written last: its presence is what marks an entry complete.
        (staging / "meta.json").write_text(json.dumps(meta, default=_json_default), encoding="utf-8")
        try:
            os.rename(staging, final)
        except OSError:
            # Another worker finished the same entry first; both computed the same content.
            if not (final / "meta.json").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _sweep_dead_staging(final)
    return Entry(stage, key, str(final), computed=True)


def create_stored_array(folder: Path, name: str, shape: tuple[int, ...], chunk_rows: int,
                        dtype: str = "float32") -> "zarr.Array":
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
    for staging in final.parent.glob(f".{final.name}.{_HOST}.*.tmp"):
        try:
            pid = int(staging.name.split(".")[3])
        except (IndexError, ValueError):
            continue
        if pid != os.getpid() and not _alive(pid):
            shutil.rmtree(staging, ignore_errors=True)


def _alive(pid: int) -> bool:
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
