"""Progress bars per pipeline stage for Dask's local schedulers.

Task keys start with their stage's name (``attribute-3-0-…``), so one tqdm bar per stage can follow the
graph as it runs; stages with a single task per class still show how many classes are done.
"""

from __future__ import annotations

import sys
from typing import Any

from dask.callbacks import Callback
from tqdm import tqdm

from spray.pipeline import STAGES


class StageProgress(Callback):
    """``with StageProgress(): dask.compute(...)`` draws one bar per stage on stderr."""

    def __init__(self) -> None:
        super().__init__()
        self._bars: dict[str, tqdm] = {}

    def _start_state(self, dsk: Any, state: Any) -> None:
        totals = {stage: 0 for stage in STAGES}
        for key in dsk:
            stage = _stage_of(key)
            if stage:
                totals[stage] += 1
        for position, stage in enumerate(s for s in STAGES if totals[s]):
            self._bars[stage] = tqdm(total=totals[stage], desc=f"{stage:>10}", unit="task", position=position,
                                     file=sys.stderr, leave=True, dynamic_ncols=True)

    def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
        stage = _stage_of(key)
        if stage in self._bars:
            self._bars[stage].update(1)

    def _finish(self, dsk: Any, state: Any, errored: bool) -> None:
        for bar in self._bars.values():
            bar.close()
        self._bars.clear()


def _stage_of(key: Any) -> str | None:
    name = key[0] if isinstance(key, tuple) else key
    if not isinstance(name, str):
        return None
    stage = name.split("-", 1)[0]
    return stage if stage in STAGES else None
