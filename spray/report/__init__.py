"""Stage 4b: the audit's outputs, drawn from ``spray.results`` dataclasses only.

``write_report(output_dir, classes, run)`` writes three files into ``output_dir``:

- ``index.html``: the self-contained report for a reviewer (see ``spray.report.html``);
- ``summary.json``: the machine-readable outcome, a public contract (see ``spray.report.summary``);
- ``samples.csv``: one row per audited sample (see ``spray.report.samples``).

Each file is written atomically, so an interrupted run never leaves a truncated report behind. The data
files are written before the HTML: if drawing a figure fails, the numbers are still on disk.
"""

from __future__ import annotations

import json
from pathlib import Path

from spray.report._io import write_atomic
from spray.results import ClassResult, RunInfo

__all__ = ["write_report"]


def write_report(output_dir: Path, classes: list[ClassResult], run: RunInfo) -> Path:
    """Write index.html, summary.json and samples.csv into ``output_dir`` (created); return the HTML's path.

    Raises ValueError when a class's per-sample arrays are not aligned with its sample ids.
    """
    # Imported here so that `import spray.report` stays cheap for code that only needs the name.
    from spray.report.html import render_html
    from spray.report.samples import samples_csv
    from spray.report.summary import build_summary

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    csv_text = samples_csv(classes)  # validates the alignment of every class first
    summary = json.dumps(build_summary(classes, run), indent=2, ensure_ascii=False, allow_nan=False)
    write_atomic(output_dir / "summary.json", summary + "\n")
    write_atomic(output_dir / "samples.csv", csv_text)
    html_path = output_dir / "index.html"
    write_atomic(html_path, render_html(classes, run))
    return html_path
