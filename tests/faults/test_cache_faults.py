"""A damaged cache is never trusted: every kind of cache file, damaged or deleted, is found, the entry is
discarded with one line naming it, recomputed, and the audit's outcome is what an undamaged run gives."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import pytest
from fault_cases import leftovers, outcome, run_cli

pytestmark = pytest.mark.e2e  # every test here runs the whole pipeline


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny case audited once: its cache and report are the reference every damaged re-run must match."""
    from audit_cases import make_tiny_case, tiny_config, write_config

    folder = tmp_path_factory.mktemp("finished")
    make_tiny_case(folder)
    write_config(folder, tiny_config(folder))
    assert run_cli("run", str(folder / "audit.yaml"), "--quiet") == 0
    return folder


@pytest.fixture
def copy(finished: Path, tmp_path: Path) -> Path:
    """A copy of the finished case, its cache and its report, to damage."""
    target = tmp_path / "case"
    shutil.copytree(finished, target)
    return target


def _garble(path: Path) -> None:
    """Flip bytes in the middle of a file, keeping its size (what a bad block or a stray write does)."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    for i in range(middle, min(middle + 8, len(data))):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: max(1, path.stat().st_size // 2)])


def _one(copy: Path, pattern: str) -> Path:
    found = sorted((copy / "cache").glob(pattern))
    assert found, pattern
    return found[0]


DAMAGES = {
    "npz garbled": ("preprocess/*/arrays.npz", _garble),
    "npz truncated": ("analyse/*/arrays.npz", _truncate),
    "npz deleted": ("flag/*/arrays.npz", Path.unlink),
    "meta.json garbled": ("embed/*/meta.json", lambda p: p.write_text("{not json")),
    "meta.json deleted (a half-made entry)": ("attribute/*/meta.json", Path.unlink),
    "checksums.json deleted": ("preprocess/*/checksums.json", Path.unlink),
    "zarr chunk deleted": ("attribute/*/relevance.zarr/c/0/0/0/0", Path.unlink),
    "zarr chunk garbled, same size": ("attribute/*/relevance.zarr/c/0/0/0/0", _garble),
    "zarr metadata garbled": ("attribute/*/relevance.zarr/zarr.json", _garble),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_cache_file_is_found_discarded_and_recomputed(damage, finished, copy, caplog):
    pattern, spoil = DAMAGES[damage]
    victim = _one(copy, pattern)
    entry = victim.relative_to(copy / "cache").parts[:2]
    spoil(victim)
    with caplog.at_level(logging.WARNING, logger="spray.cache"):
        assert run_cli("run", str(copy / "audit.yaml"), "--quiet") == 0
    named = [r.getMessage() for r in caplog.records if "/".join(entry) in r.getMessage()]
    assert len(named) == 1 and "failed verification" in named[0] and "recomputed" in named[0]
    assert outcome(copy / "report") == outcome(finished / "report")
    assert not leftovers(copy)


def test_a_folder_in_the_place_of_an_entry_never_blocks_its_stage(finished, copy):
    entry = _one(copy, "analyse/*")
    shutil.rmtree(entry)
    entry.mkdir()
    (entry / "unrelated.txt").write_text("half made")
    assert run_cli("run", str(copy / "audit.yaml"), "--quiet") == 0
    assert (entry / "checksums.json").exists()
    assert outcome(copy / "report") == outcome(finished / "report")


def test_staging_folders_of_dead_processes_are_swept_whatever_their_key(copy):
    import spray.cache

    dead = os.fork()
    if dead == 0:
        os._exit(0)
    os.waitpid(dead, 0)
    stale = copy / "cache" / "attribute" / f".0123abcd.{spray.cache._HOST}.{dead}.{'f' * 32}.tmp"
    stale.mkdir()
    (stale / "arrays.npz").write_bytes(b"partial")
    mine = copy / "cache" / "attribute" / f".4567abcd.{spray.cache._HOST}.{os.getpid()}.{'e' * 32}.tmp"
    mine.mkdir()
    assert run_cli("run", str(copy / "audit.yaml"), "--quiet") == 0
    assert not stale.exists()
    assert mine.exists()  # a live process may still be writing it
