"""What verifying the cache costs: reading a cached attribution entry with and without its checks.

    python benchmarks/cache_verify.py [--samples 2048] [--shape 3 64 64] [--chunk 256] [--repeats 5]

One entry is written with ``spray.cache.cached_stream`` as the attribute stage writes it: ``--samples``
maps of ``--shape`` float32 in a zarr array chunked by ``--chunk`` rows, and a small npz. Then, each
``--repeats`` times with the files in the page cache (the first, cold read is discarded), timed in this one
process and run:

- ``lookup``: finding the entry (``cached`` with the entry on disk: checksums of npz, meta.json and zarr
  metadata, size of every chunk file) against a plain ``exists`` check (the unverified baseline);
- ``read all``: the lookup, ``Entry.read`` and every chunk through ``Entry.open_array`` (each chunk's CRC-32
  checked as it is read) against ``read_entry`` and every chunk through unverified zarr;
- ``read 1 row``: the lookup and one row (what the report reads per prototype) against the same unverified.

The table shows the fastest repeat of each and the ratio verified / unverified.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from spray.cache import Entry, cached, cached_stream, create_stored_array, open_stored_array, read_entry


def build_entry(directory: Path, samples: int, shape: tuple[int, ...], chunk: int) -> Entry:
    rng = np.random.default_rng(0)

    def compute(folder: Path) -> tuple[dict, dict]:
        store = create_stored_array(folder, "relevance", (samples, *shape), chunk)
        for start in range(0, samples, chunk):
            rows = min(chunk, samples - start)
            store[start : start + rows] = rng.normal(size=(rows, *shape)).astype(np.float32)
        return {"index": np.arange(samples), "logits": rng.normal(size=(samples, 10))}, {"skipped": []}

    return cached_stream(str(directory), "attribute", "k" * 32, compute)


def fastest(function: Callable[[], object], repeats: int) -> float:
    function()  # the cold read is not what a re-run sees twice
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2048)
    parser.add_argument("--shape", type=int, nargs="+", default=[3, 64, 64])
    parser.add_argument("--chunk", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temporary:
        directory = Path(temporary)
        entry = build_entry(directory, args.samples, tuple(args.shape), args.chunk)
        path = Path(entry.path)
        megabytes = sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20
        def unused(*arguments: object) -> tuple[dict, dict]:
            raise AssertionError("recomputed")

        def verified_lookup() -> Entry:
            return cached(str(directory), "attribute", entry.key, unused)

        def read_all(verified: bool) -> None:
            found = verified_lookup() if verified else entry
            arrays = found.read() if verified else read_entry(path)
            array = found.open_array("relevance") if verified else open_stored_array(path, "relevance")
            for start in range(0, array.shape[0], array.chunks[0]):
                array[start : start + array.chunks[0]]
            del arrays

        def read_row(verified: bool) -> None:
            found = verified_lookup() if verified else entry
            array = found.open_array("relevance") if verified else open_stored_array(path, "relevance")
            array[args.samples // 2 : args.samples // 2 + 1]

        rows = [
            ("lookup", fastest(lambda: (path / "meta.json").exists(), args.repeats),
             fastest(verified_lookup, args.repeats)),
            ("read all", fastest(lambda: read_all(False), args.repeats), fastest(lambda: read_all(True), args.repeats)),
            ("read 1 row", fastest(lambda: read_row(False), args.repeats), fastest(lambda: read_row(True), args.repeats)),
        ]
    print(f"entry: {args.samples} x {tuple(args.shape)} float32 in chunks of {args.chunk} rows, {megabytes:.0f} MB")
    print(f"{'operation':<12} {'unverified s':>13} {'verified s':>11} {'ratio':>7}")
    for name, plain, checked in rows:
        print(f"{name:<12} {plain:>13.4f} {checked:>11.4f} {checked / plain:>7.2f}")


if __name__ == "__main__":
    main()
