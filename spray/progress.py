"""Progress for Dask's local schedulers, counting finished tasks per pipeline stage.

Task keys start with their stage's name (``attribute-3-0-…``), so one bar can show how far each stage is.
On a terminal the progress is a bar on stderr; when stdout or stderr is not a terminal (a log file, a
scheduled job) or the terminal reports no size, it is plain log lines instead: one per tenth of the tasks, and at least
every ``PLAIN_INTERVAL_S`` seconds while tasks finish, so a log shows how far a run got without control
characters.
"""

from __future__ import annotations

import logging
import shutil
import sys
import time
from collections.abc import Sequence
from typing import Any

from dask.callbacks import Callback
from tqdm import tqdm

log = logging.getLogger("spray.progress")
PLAIN_INTERVAL_S = 30.0


def interactive() -> bool:
    """Whether a redrawn bar makes sense: stdout and stderr (where the bar goes) are terminals with a size.

    A scheduled job usually redirects both; one redirected stream is enough to mean a log is being kept.
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            if not stream.isatty():
                return False
        except (AttributeError, ValueError):  # replaced or closed streams
            return False
    return shutil.get_terminal_size(fallback=(0, 0)).columns > 0


class StageProgress(Callback):
    """``with StageProgress(stages): dask.compute(...)`` draws one bar on stderr: all tasks, and the tasks
    of each stage in ``stages`` (the first part of a task's key names its stage)."""

    def __init__(self, stages: Sequence[str], bar: bool | None = None) -> None:
        super().__init__()
        self._stages = tuple(stages)
        self._use_bar = interactive() if bar is None else bar
        self._bar: tqdm | None = None
        self._done: dict[str, int] = {}
        self._totals: dict[str, int] = {}
        self._logged_at = (0.0, 0)  # (time, tasks done) of the last plain line

    def _start_state(self, dsk: Any, state: Any) -> None:
        self._totals = {stage: 0 for stage in self._stages}
        for key in dsk:
            stage = self._stage_of(key)
            if stage:
                self._totals[stage] += 1
        self._done = {stage: 0 for stage in self._stages}
        self._logged_at = (time.monotonic(), 0)
        if self._use_bar:
            self._bar = tqdm(total=sum(self._totals.values()), desc="spray", unit="task", file=sys.stderr,
                             dynamic_ncols=True, mininterval=0.5)

    def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
        stage = self._stage_of(key)
        if not stage:
            return
        self._done[stage] += 1
        counts = " ".join(f"{s} {self._done[s]}/{self._totals[s]}" for s in self._stages if self._totals[s])
        if self._bar is not None:
            self._bar.set_postfix_str(counts, refresh=False)
            self._bar.update(1)
            return
        done, total = sum(self._done.values()), sum(self._totals.values())
        last_time, last_done = self._logged_at
        tenth = done * 10 // total > last_done * 10 // total
        if done == total or tenth or time.monotonic() - last_time >= PLAIN_INTERVAL_S:
            log.info("tasks %d/%d: %s", done, total, counts)
            self._logged_at = (time.monotonic(), done)

    def _finish(self, dsk: Any, state: Any, errored: bool) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


    def _stage_of(self, key: Any) -> str | None:
        name = key[0] if isinstance(key, tuple) else key
        if not isinstance(name, str):
            return None
        stage = name.split("-", 1)[0]
        return stage if stage in self._stages else None
