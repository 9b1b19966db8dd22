"""A progress bar for Dask's local schedulers, counting finished tasks per pipeline stage.

Task keys start with their stage's name (``attribute-3-0-…``), so one bar can show how far each stage is.
"""

from __future__ import annotations

import sys
from typing import Any

from dask.callbacks import Callback
from tqdm import tqdm

from spray.pipeline import STAGES


class StageProgress(Callback):
    """``with StageProgress(): dask.compute(...)`` draws one bar on stderr: all tasks, per-stage counts."""

    def __init__(self) -> None:
        super().__init__()
        self._bar: tqdm | None = None
        self._done: dict[str, int] = {}
        self._totals: dict[str, int] = {}

    def _start_state(self, dsk: Any, state: Any) -> None:
        self._totals = {stage: 0 for stage in STAGES}
        for key in dsk:
            stage = _stage_of(key)
            if stage:
                self._totals[stage] += 1
        self._done = {stage: 0 for stage in STAGES}
        self._bar = tqdm(total=sum(self._totals.values()), desc="spray", unit="task", file=sys.stderr,
                         dynamic_ncols=True, mininterval=0.5)

    def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
        stage = _stage_of(key)
        if stage and self._bar is not None:
            self._done[stage] += 1
            self._bar.set_postfix_str(
                " ".join(f"{s} {self._done[s]}/{self._totals[s]}" for s in STAGES if self._totals[s]), refresh=False
            )
            self._bar.update(1)

    def _finish(self, dsk: Any, state: Any, errored: bool) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _stage_of(key: Any) -> str | None:
    name = key[0] if isinstance(key, tuple) else key
    if not isinstance(name, str):
        return None
    stage = name.split("-", 1)[0]
    return stage if stage in STAGES else None
