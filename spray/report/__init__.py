"""Stage 4b: the audit's outputs, drawn from ``spray.results`` dataclasses only.

``write_report(output_dir, classes, run)`` writes these files into ``output_dir``:

- ``index.html``: the self-contained report for a reviewer (see ``spray.report.html``); with more than
  20 audited classes it holds the verdict, the ranked summary table and the run, and each class has a
  self-contained page ``classes/<index>.html`` of its own;
- ``summary.json``: the machine-readable outcome, a public contract (see ``spray.report.summary``);
- ``samples.csv``: one row per audited sample (see ``spray.report.samples``);
- ``timeline.csv`` for a series of checkpoints: one row per class, checkpoint and flagged pattern
  (see ``spray.timeline``).

The files are written into a hidden staging folder beside ``output_dir`` and published together
(``spray.report._io.publish_folder``: an atomic swap), so ``output_dir`` holds either the whole new report
or the whole previous one, never a mix nor a truncated file; other files in ``output_dir`` are kept. The
class pages are drawn by worker processes, each writing its own pages (see ``spray.report._pages``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from spray.report._io import atomic_text_writer, publish_folder, staging_folder, write_atomic
from spray.results import ClassResult, CrossClassResult, RunInfo

if TYPE_CHECKING:
    from spray.diff import AuditDiff
    from spray.timeline import Timeline

__all__ = ["write_report"]


def write_report(output_dir: Path, classes: list[ClassResult], run: RunInfo,
                 cross_class: CrossClassResult | None = None, *, workers: int | None = None,
                 diff: AuditDiff | None = None, timeline: Timeline | None = None) -> Path:
    """Write index.html, summary.json and samples.csv into ``output_dir`` (created); return the HTML's path.

    ``cross_class``: the analysis of all audited classes together, shown in its own section of index.html
    and under the key ``cross_class`` of summary.json.

    ``diff``: what changed since a baseline audit (``spray.diff``), shown in a box at the top of index.html
    and under the key ``diff`` of summary.json.

    ``timeline``: a series of checkpoints followed across (``spray.timeline``; ``classes`` are then the
    last checkpoint's), shown in its own section of index.html, under the key ``timeline`` of summary.json
    and as ``timeline.csv``.

    ``workers``: how many processes draw the class pages of a report with pages (more than 20 classes) at
    once; default: one per CPU this process may use; 1 draws them in this process. The pages are the same
    bytes whatever the number. Each worker holds one class's figures at a time (about 100-150 MB resident
    with matplotlib). A report on one page is always drawn in this process.

    Raises ValueError when a class's per-sample arrays are not aligned with its sample ids, and RunError
    naming the class whose page or section cannot be drawn (index.html is then not written).
    """
    # Imported here so that `import spray.report` stays cheap for code that only needs the name.
    from spray.report.samples import check_aligned

    output_dir = Path(output_dir)
    for result in classes:  # before anything is written
        check_aligned(result)
    staging = staging_folder(output_dir)
    try:
        _write_files(staging, classes, run, cross_class, workers, diff, timeline)
        publish_folder(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return output_dir / "index.html"


def _write_files(folder: Path, classes: list[ClassResult], run: RunInfo, cross_class: CrossClassResult | None,
                 workers: int | None, diff: AuditDiff | None = None, timeline: Timeline | None = None) -> None:
    """Write the report's files into the (new, empty) staging ``folder``."""
    from spray.report._pages import write_class_pages
    from spray.report.html import CLASS_PAGES, PageContext, index_html, is_paged, ranked
    from spray.report.samples import write_samples_csv
    from spray.report.summary import build_summary, cross_class_summary

    document = build_summary(classes, run)
    if cross_class is not None:
        document["cross_class"] = cross_class_summary(cross_class)
    if diff is not None:
        document["diff"] = diff.to_dict()
    if timeline is not None:
        document["timeline"] = timeline.to_dict()
        write_atomic(folder / "timeline.csv", timeline.csv_text())
    # Streamed into the file (not built as one string first): a million-sample audit's summary lists every id.
    with atomic_text_writer(folder / "summary.json") as text:
        json.dump(document, text, indent=2, ensure_ascii=False, allow_nan=False)
        text.write("\n")
    del document
    write_samples_csv(folder / "samples.csv", classes)  # class by class, not the whole table at once
    paged = is_paged(classes)
    context = PageContext.of(classes, run)

    def draw_index() -> str:
        return index_html(classes, run, paged, cross_class, context, diff, timeline)

    if paged:
        (folder / CLASS_PAGES).mkdir(parents=True, exist_ok=True)
        # index.html is drawn here while the workers draw the class pages
        index = write_class_pages(folder, ranked(classes), context, workers, while_drawing=draw_index)
    else:
        index = draw_index()
    write_atomic(folder / "index.html", index)
