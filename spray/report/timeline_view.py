"""The "Across checkpoints" section of index.html: a series of checkpoints' timeline (``spray.timeline``)
as a table per class and, for each class with a flagged pattern, a chart of the patterns' scores."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import PurePath
from typing import TYPE_CHECKING, Any

from spray.report import figures

if TYPE_CHECKING:
    from spray.timeline import ClassTimeline, Timeline


def checkpoint_labels(weights: tuple[str, ...]) -> list[str]:
    """Short names of the checkpoints for axes: the file names without suffix when they tell the
    checkpoints apart, else their positions (1-based)."""
    stems = [PurePath(path).stem for path in weights]
    return stems if len(set(stems)) == len(stems) else [str(i) for i in range(1, len(weights) + 1)]


def timeline_view(timeline: Timeline, title: Callable[[int, str], str], href: Callable[[int], str]) -> dict[str, Any]:
    """What the template draws: the checkpoints, and per class its rows and chart (classes with a flagged
    pattern first, then by index). ``title(index, name)``: a class's title; ``href(index)``: the link to the
    class's section or page in the last checkpoint's report."""
    labels = checkpoint_labels(timeline.checkpoints)
    classes = sorted(timeline.classes, key=lambda c: (not c.patterns, c.class_index))
    return {"checkpoints": [{"position": i + 1, "label": label, "weights": weights}
                            for i, (label, weights) in enumerate(zip(labels, timeline.checkpoints))],
            "threshold": timeline.threshold, "n_patterns": sum(len(c.patterns) for c in classes),
            "classes": [_class_view(c, labels, timeline) | {
                "title": title(c.class_index, c.class_name),
                # a class the last checkpoint could not analyse has no section in this report to link to
                "href": href(c.class_index) if c.steps[-1].n_clusters is not None else ""} for c in classes]}


def _class_view(item: ClassTimeline, labels: list[str], timeline: Timeline) -> dict[str, Any]:
    patterns = [figures.TimelineSeries(f"pattern {p.id + 1}", [q.score for q in p.points],
                                       [q.flagged for q in p.points],
                                       [q.lines.transplant_flip_rate for q in p.points]) for p in item.patterns]
    chart = (figures.timeline_figure(labels, patterns, [s.max_score for s in item.steps], timeline.threshold)
             if item.patterns else None)
    rows = []
    for position, step in enumerate(item.steps):
        scores = [{"pattern": p.id + 1, "cluster": p.points[position].cluster, "score": p.points[position].score,
                   "flagged": p.points[position].flagged, "turned": p.points[position].lines.transplant_flip_rate}
                  for p in item.patterns]
        rows.append({"label": labels[position], "n_clusters": step.n_clusters, "accuracy": step.accuracy,
                     "max_score": step.max_score, "n_flagged": step.n_flagged, "skipped": step.skipped,
                     "patterns": scores})
    first = [{"pattern": p.id + 1, "label": labels[p.first_flagged], "weights": timeline.checkpoints[p.first_flagged],
              "last_score": _last_finite([q.score for q in p.points])} for p in item.patterns]
    return {"index": item.class_index, "chart": chart, "rows": rows, "first": first,
            "n_patterns": len(item.patterns)}


def _last_finite(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return finite[-1] if finite else math.nan
