"""The on-disk cache of intermediates, addressed by content keys.

An entry is a folder ``<directory>/<stage>/<key>/`` holding ``arrays.npz`` and ``meta.json``. It is written
under a temporary name and renamed into place, so an interrupted run leaves either a whole entry or none,
and the next run resumes from the entries that exist. Keys come from ``dask.base.tokenize`` of everything
that determines the result (config section, upstream keys, model and data tokens), never of timestamps.

Tasks hand each other the entry's path rather than its arrays: on a distributed cluster this keeps large
arrays off the network and out of worker memory, and it needs the cache folder on a filesystem that every
worker sees.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np


@dataclass(frozen=True)
class Entry:
    """A finished cache entry: where it is and whether this run computed it (False: found on disk)."""

    stage: str
    key: str
    path: str
    computed: bool

    def read(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return read_entry(self.path)


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
        return Entry(stage, key, str(final), computed=False)
    arrays, meta = compute(*args)
    staging = final.parent / f".{key}.{uuid.uuid4().hex}.tmp"
    staging.mkdir(parents=True)
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
    return Entry(stage, key, str(final), computed=True)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot store {type(value).__name__} in a cache entry's metadata")
