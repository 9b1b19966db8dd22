"""Write the generated tables of docs/benchmarks.md from the benchmarks' committed JSON results.

    python tools/benchmark_tables.py            # rewrite the tables between the markers in docs/benchmarks.md
    python tools/benchmark_tables.py --check    # exit 1 when a table differs from its JSON

A generated table sits between ``<!-- generated:NAME -->`` and ``<!-- /generated:NAME -->`` in
docs/benchmarks.md; NAME is a benchmark with a renderer below, and ``docs/benchmarks/NAME.json`` is what
``python benchmarks/NAME.py ... --json docs/benchmarks/NAME.json`` wrote (the command is in the JSON's
``command`` key when the run recorded it, and in the text above the table). ``tests/test_docs.py`` fails when
a table is not its JSON's rendering, so the numbers in the docs are the numbers a run printed.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
RESULTS = ROOT / "docs" / "benchmarks"


def _fastest(runs: list[dict[str, Any]], **match: Any) -> dict[str, Any]:
    chosen = [r for r in runs if all(r.get(k) == v for k, v in match.items())]
    if not chosen:
        raise ValueError(f"no run with {match}")
    return min(chosen, key=lambda r: r["seconds"])


def flag_memory(result: dict[str, Any]) -> str:
    """benchmarks/flag_memory.py: the stage's seconds and added memory, whole class against streamed."""
    runs = result["runs"]
    whole = next(r for r in runs if r["mode"] == "whole class")
    lines = ["| run | seconds | memory added by the stage | vs whole class |", "|---|---|---|---|"]
    for run in runs:
        label = "whole class in memory" if run["mode"] == "whole class" else "streamed from disk in batches"
        lines.append(f"| {label} | {run['seconds']:.1f} | {run['stage_memory_mb']:,.0f} MB | "
                     f"{run['stage_memory_mb'] / whole['stage_memory_mb']:.2f}x |")
    first = runs[0]
    flagged = [c["id"] for c in runs[-1]["clusters"] if c["flagged"]]
    lines.append("")
    lines.append(f"{first['n_images']:,} images of {first['side']} x {first['side']}; same clusters, flags and "
                 f"scores (within 1e-4): {'yes' if result['same_result'] else 'NO'}; flagged clusters: "
                 f"{', '.join(map(str, flagged)) or 'none'}.")
    return "\n".join(lines)


def report_scale(result: dict[str, Any]) -> str:
    """benchmarks/report_scale.py: write_report's seconds and memory, pages drawn in-process and by workers."""
    runs = result["runs"]
    workers = result["settings"]["workers"]
    lines = [f"| classes | pages drawn in-process | by {workers} workers | speed-up (cores used) | peak memory: main "
             "process (in-process / with workers), each worker | report | same bytes |",
             "|---|---|---|---|---|---|---|"]
    for n in sorted({r["classes"] for r in runs}):
        serial, parallel = _fastest(runs, classes=n, workers=1), _fastest(runs, classes=n, workers=workers)
        cores = parallel["cpu_seconds"] / parallel["seconds"]
        lines.append(
            f"| {n:,} | {serial['seconds']:.1f} s | {parallel['seconds']:.1f} s | "
            f"{serial['seconds'] / parallel['seconds']:.2f}x ({cores:.2f}) | "
            f"{serial['peak_memory_mb']:,.0f} / {parallel['peak_memory_mb']:,.0f} MB, "
            f"{parallel['worker_peak_memory_mb'] or 0:,.0f} MB | {serial['report_mb']:.0f} MB | "
            f"{'yes' if serial['same_bytes_as_serial'] else 'NO'} |")
    profile = result.get("page_profile") or {}
    if profile:
        page = profile["page"]
        parts = ", ".join(f"{name} {100 * ms / page:.0f} %" for name, ms in profile.items() if name != "page")
        lines += ["", f"One class page, drawn in-process: {page:.0f} ms ({parts})."]
    return "\n".join(lines)


RENDERERS: dict[str, Callable[[dict[str, Any]], str]] = {
    "flag_memory": flag_memory,
    "report_scale": report_scale,
}
_BLOCK = re.compile(r"<!-- generated:(?P<name>[a-z_]+) -->\n.*?<!-- /generated:(?P=name) -->", re.S)


def render(doc: str) -> str:
    """``doc`` with every generated block replaced by its JSON's rendering."""

    def table(match: re.Match[str]) -> str:
        name = match.group("name")
        if name not in RENDERERS:
            raise ValueError(f"docs/benchmarks.md: no renderer for generated block {name!r}")
        result = json.loads((RESULTS / f"{name}.json").read_text(encoding="utf-8"))
        return f"<!-- generated:{name} -->\n{RENDERERS[name](result)}\n<!-- /generated:{name} -->"

    return _BLOCK.sub(table, doc)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args(argv)
    doc = DOC.read_text(encoding="utf-8")
    text = render(doc)
    if args.check:
        if text != doc:
            print("docs/benchmarks.md is stale: run python tools/benchmark_tables.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(text, encoding="utf-8")
    print(f"wrote {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
