"""Shared fixtures: a tiny three-class image case (tests/audit_cases.py) in a temporary folder."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from audit_cases import make_tiny_case, tiny_config, write_config


@pytest.fixture
def tiny_case(tmp_path: Path) -> Path:
    return make_tiny_case(tmp_path / "case")


@pytest.fixture
def tiny_audit(tiny_case: Path) -> Callable[..., Path]:
    """``tiny_audit(**sections)`` writes a config for the tiny case and returns its path."""

    def write(**sections: Any) -> Path:
        return write_config(tiny_case, tiny_config(tiny_case, **sections))

    return write
