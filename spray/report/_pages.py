"""Writing the class pages of a many-class report, in this process or in worker processes.

Drawing a page is mostly matplotlib and Pillow work that holds the GIL, so threads would not help: pages are
drawn by a pool of worker processes, each of which writes the pages it draws itself (atomically), so that
only a page's path comes back and the parent never holds more than its own share of figures.

The workers are started with the ``spawn`` method, never forked: the audit's parent process runs threads
(Dask's task pool, torch's and BLAS's thread pools, the attribution loader), and a child forked from a
threaded process may inherit a lock that another thread held at the fork and deadlock on it. A spawned
worker is a fresh interpreter that imports only the report's modules (a start-up cost paid once per worker;
benchmarks/report_scale.py measures the whole). As with
any ``multiprocessing`` code, a script that calls ``write_report`` with more than one worker must guard its
entry point with ``if __name__ == "__main__":`` (``python -m spray`` does not need to).
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, TypeVar, overload

from spray.errors import RunError
from spray.report._io import write_atomic
from spray.report.html import ClassPageRenderer, PageContext, class_page, drawing_failed
from spray.results import ClassResult

_T = TypeVar("_T")

# Set in each worker process by _start_worker: where pages go and the renderer with its compiled template.
_worker: tuple[Path, ClassPageRenderer] | None = None


# Each worker holds matplotlib and a compiled template; past a few workers the report is limited by writing,
# so more only cost memory on a many-core node (benchmarks/report_scale.py measures both).
MAX_DEFAULT_WORKERS = 8


def default_workers() -> int:
    """The CPUs this process may run on (its affinity where the platform says, else the CPU count), at most
    ``MAX_DEFAULT_WORKERS``."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, MAX_DEFAULT_WORKERS))


def _matplotlib_settings() -> dict[str, Any]:
    """This process's matplotlib settings, for the workers: a page drawn by a worker must be the page this
    process would draw, even where a caller changed ``matplotlib.rcParams`` before writing the report."""
    import matplotlib

    return {key: value for key, value in matplotlib.rcParams.items() if key != "backend"}


def _start_worker(output_dir: str, context: PageContext, settings: dict[str, Any]) -> None:
    import matplotlib

    global _worker
    matplotlib.rcParams.update(settings)  # type: ignore[arg-type]  # keys read from rcParams itself
    _worker = (Path(output_dir), ClassPageRenderer(context))


def _draw_and_write(result: ClassResult, rank: int) -> str:
    """In a worker: draw one class's page and write it; returns its path relative to the output folder."""
    assert _worker is not None, "the worker was not started by _start_worker"
    output_dir, render = _worker
    relative = class_page(result.class_index)
    write_atomic(output_dir / relative, render(result, rank))
    return relative


@overload
def write_class_pages(output_dir: Path, classes: list[ClassResult], context: PageContext, workers: int | None = None,
                      *, while_drawing: Callable[[], _T]) -> _T: ...


@overload
def write_class_pages(output_dir: Path, classes: list[ClassResult], context: PageContext, workers: int | None = None,
                      while_drawing: None = None) -> None: ...


def write_class_pages(output_dir: Path, classes: list[ClassResult], context: PageContext,
                      workers: int | None = None, while_drawing: Callable[[], _T] | None = None) -> _T | None:
    """Write ``classes/<index>.html`` for each of ``classes`` (given in rank order) into ``output_dir``.

    ``workers``: processes drawing pages at once (default ``default_workers()``, never more than there are
    pages); with 1 the pages are drawn in this process, one after the other. Either way every page is written
    atomically and holds the same bytes. ``while_drawing`` is called in this process while the workers draw
    (after the pages, when they are drawn here); what it returns is returned.

    Raises RunError naming the class whose page could not be drawn; the pages being drawn at that moment are
    finished and no further page is started.
    """
    output_dir = Path(output_dir)
    processes = min(default_workers() if workers is None else int(workers), len(classes))
    if processes <= 1:
        render = ClassPageRenderer(context)
        for rank, result in enumerate(classes, start=1):
            try:
                page = render(result, rank)
            except Exception as error:
                raise drawing_failed(result, error) from error
            write_atomic(output_dir / class_page(result.class_index), page)
        return while_drawing() if while_drawing is not None else None

    pool = ProcessPoolExecutor(
        max_workers=processes, mp_context=multiprocessing.get_context("spawn"), initializer=_start_worker,
        initargs=(str(output_dir), context, _matplotlib_settings()),
    )
    try:
        # Every page is queued at once: the pool pickles a class only when a worker is about to take it (at
        # most `processes + 1` are in its queue), so the queue adds nothing to what the caller already holds.
        futures: dict[Future, ClassResult] = {
            pool.submit(_draw_and_write, result, rank): result for rank, result in enumerate(classes, start=1)
        }
        made = while_drawing() if while_drawing is not None else None
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failed = [future for future in futures if future in done and future.exception() is not None]
        if not failed:
            return made
        pool.shutdown(wait=True, cancel_futures=True)
        # The first class (in rank order) whose own drawing failed; a dead worker fails every unfinished page.
        own = [(future, failure) for future in failed
               if (failure := future.exception()) is not None and not isinstance(failure, BrokenProcessPool)]
        if own:
            first, failure = own[0]
            raise drawing_failed(futures[first], failure) from failure
        written = sum(1 for f in futures if f.done() and not f.cancelled() and f.exception() is None)
        raise RunError(
            f"a worker process drawing the report's class pages died (killed, or out of memory?) after {written} "
            f"of {len(futures)} pages were written; write_report(..., workers=1) draws them in this process"
        ) from failed[0].exception()
    finally:
        # Also on KeyboardInterrupt: pages not yet started are dropped, and no worker outlives the call.
        pool.shutdown(wait=True, cancel_futures=True)
