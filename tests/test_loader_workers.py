"""attribution.loader_workers: auto (the default) is one decoding thread per CPU, at most 8."""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError

from spray.config import LrpAttribution, default_loader_workers


def test_auto_is_one_thread_per_cpu_at_most_eight(monkeypatch):
    for cpus, expected in ((1, 1), (2, 2), (8, 8), (64, 8)):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid, cpus=cpus: set(range(cpus)), raising=False)
        assert default_loader_workers() == expected
        assert LrpAttribution().loader_workers == expected
        assert LrpAttribution(loader_workers="auto").loader_workers == expected
    assert LrpAttribution(loader_workers=0).loader_workers == 0


def test_a_negative_or_unknown_thread_count_is_refused():
    for value in (-1, "many"):
        with pytest.raises(ValidationError, match="loader_workers"):
            LrpAttribution(loader_workers=value)
