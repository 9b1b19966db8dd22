"""Shared fixtures: a tiny three-class image case (tests/audit_cases.py) in a temporary folder.

Markers: ``e2e`` marks end-to-end tests (whole pipeline runs, model training, spray or report worker
processes, the browser); ``python -m pytest -m "not e2e"`` is the inner loop. ``slow`` is the older name of
the same marker: either one marks a test as both, so ``-m "not slow"`` and ``-m "not e2e"`` select alike.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from audit_cases import make_tiny_case, tiny_config, write_config

_END_TO_END = ("e2e", "slow")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if any(item.get_closest_marker(name) for name in _END_TO_END):
            for name in _END_TO_END:
                if item.get_closest_marker(name) is None:
                    item.add_marker(name)


@pytest.fixture
def tiny_case(tmp_path: Path) -> Path:
    return make_tiny_case(tmp_path / "case")


@pytest.fixture
def tiny_audit(tiny_case: Path) -> Callable[..., Path]:
    """``tiny_audit(**sections)`` writes a config for the tiny case and returns its path."""

    def write(**sections: Any) -> Path:
        return write_config(tiny_case, tiny_config(tiny_case, **sections))

    return write
