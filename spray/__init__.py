"""spray: Spectral Relevance Analysis (SpRAY) audits of PyTorch classifiers for Clever Hans behaviour.

``spray.audit(model, dataset, classes=[3], **sections)`` audits an in-memory model (``spray.api``); it is
imported on first use, so that ``import spray`` stays light (no torch).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from spray.api import AuditResult, audit

__all__ = ["AuditResult", "__version__", "audit"]


def __getattr__(name: str) -> Any:
    if name in ("audit", "AuditResult"):
        # looked up by name on first access: spray.api imports the stages, and they import this package's
        # __version__, so the package itself depends on none of them
        return getattr(importlib.import_module("spray.api"), name)
    raise AttributeError(f"module 'spray' has no attribute {name!r}")
