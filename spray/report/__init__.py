"""Stage 4b: the audit's outputs, drawn from ``spray.results`` dataclasses only.

``write_report(output_dir, classes, run)`` writes three files into ``output_dir``:

- ``index.html``: the self-contained report for a reviewer (see ``spray.report.html``); with more than
  20 audited classes it holds the verdict, the ranked summary table and the run, and each class has a
  self-contained page ``classes/<index>.html`` of its own;
- ``summary.json``: the machine-readable outcome, a public contract (see ``spray.report.summary``);
- ``samples.csv``: one row per audited sample (see ``spray.report.samples``).

Each file is written atomically, so an interrupted run never leaves a truncated report behind. The data
files are written before the HTML: if drawing a figure fails, the numbers are still on disk.
"""

from __future__ import annotations

import json
from pathlib import Path

from spray.report._io import write_atomic
from spray.results import ClassResult, CrossClassResult, RunInfo

__all__ = ["write_report"]


def write_report(output_dir: Path, classes: list[ClassResult], run: RunInfo,
                 cross_class: CrossClassResult | None = None) -> Path:
    """Write index.html, summary.json and samples.csv into ``output_dir`` (created); return the HTML's path.

    ``cross_class``: the analysis of all audited classes together, shown in its own section of index.html
    and under the key ``cross_class`` of summary.json.

    Raises ValueError when a class's per-sample arrays are not aligned with its sample ids.
    """
    # Imported here so that `import spray.report` stays cheap for code that only needs the name.
    from spray.report.html import CLASS_PAGES, class_page, is_paged, iter_pages
    from spray.report.samples import samples_csv
    from spray.report.summary import build_summary, cross_class_summary

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    csv_text = samples_csv(classes)  # validates the alignment of every class first
    document = build_summary(classes, run)
    if cross_class is not None:
        document["cross_class"] = cross_class_summary(cross_class)
    summary = json.dumps(document, indent=2, ensure_ascii=False, allow_nan=False)
    write_atomic(output_dir / "summary.json", summary + "\n")
    write_atomic(output_dir / "samples.csv", csv_text)
    written = {class_page(result.class_index) for result in classes} if is_paged(classes) else set()
    pages_dir = output_dir / CLASS_PAGES
    # Class pages of an earlier run into the same folder would be stale: remove those not written now.
    if pages_dir.is_dir():
        for stale in pages_dir.glob("*.html"):
            if stale.stem.isdigit() and f"{CLASS_PAGES}/{stale.name}" not in written:
                stale.unlink()
    html_path = output_dir / "index.html"
    # index.html comes last: it links to the class pages, which exist by then
    for relative, text in iter_pages(classes, run, cross_class=cross_class):
        (output_dir / relative).parent.mkdir(parents=True, exist_ok=True)
        write_atomic(output_dir / relative, text)
    return html_path
