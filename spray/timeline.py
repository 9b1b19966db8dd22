"""A series of checkpoints (``model.weights`` a list or a glob) as a timeline: per class and checkpoint the
cluster count, the accuracy on the class and the highest cluster score, and each flagged pattern followed
across the checkpoints with the checkpoint where it was first flagged.

A *pattern* is a chain of flagged clusters, one per checkpoint at most, matched checkpoint after checkpoint
like flags against a baseline (``spray.diff``): by their members, two clusters being the same pattern when at
least ``MATCH_OVERLAP`` of the smaller one's samples (of those both checkpoints audited) lie in the other.
Training moves samples between clusters; where the members changed so much that no cluster matches, two
clusters whose distinctive regions overlap by at least ``REGION_OVERLAP`` (intersection over union, at
preprocessing resolution) are the same pattern. A flagged cluster that matches no pattern starts one: the
checkpoint where it was first flagged. At every other checkpoint the pattern is followed into the cluster
(flagged or not) that matches it best the same way, so its score is seen rising towards the flagging
threshold before the flag and falling after it; where no cluster matches, the pattern has no score there.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import asdict, astuple, dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from spray.diff import MATCH_OVERLAP, overlap, pair_greedily

if TYPE_CHECKING:
    from spray.flag.evidence import Evidence, Line
    from spray.results import ClassResult, SkippedClass

REGION_OVERLAP = 0.5
Matched = Literal["members", "region"]


@dataclass(frozen=True)
class LineRatios:
    """A cluster's lines of evidence (``spray.flag``) as measured / threshold, the weakest being its score
    (NaN where not measured), and the share of transplanted images of other classes that turned into the
    class (NaN where not measured): how strongly the model relies on the cluster's pattern."""

    consistency: float = math.nan
    necessity: float = math.nan
    sufficiency: float = math.nan
    decision: float = math.nan
    transplant_flip_rate: float = math.nan

    @classmethod
    def of(cls, evidence: Evidence) -> LineRatios:
        def ratio(line: Line | None) -> float:
            return math.nan if line is None else float(line.ratio)

        flips = evidence.transplant_flip_rate
        return cls(ratio(evidence.consistency), ratio(evidence.necessity), ratio(evidence.sufficiency),
                   ratio(evidence.decision), math.nan if flips is None else float(flips))


@dataclass(frozen=True)
class ClusterState:
    """One cluster at one checkpoint: its members, score (NaN when not scored), flag, distinctive region
    ``(h, w)`` bool at preprocessing resolution (None when not scored) and lines of evidence."""

    cluster: int
    members: frozenset[str]
    score: float
    flagged: bool
    region: np.ndarray | None
    lines: LineRatios = LineRatios()


@dataclass(frozen=True)
class ClassState:
    """One class at one checkpoint: the samples audited, the share predicted as the class, the clusters;
    ``skipped``: why the class could not be analysed at this checkpoint (then no clusters)."""

    class_index: int
    class_name: str
    ids: frozenset[str]
    accuracy: float
    clusters: tuple[ClusterState, ...]
    skipped: str | None = None

    @classmethod
    def of(cls, result: ClassResult) -> ClassState:
        """The state of an audited class (``spray.results.ClassResult``), without its images and maps."""
        labels, predictions = np.asarray(result.labels), np.asarray(result.predictions)
        accuracy = float((predictions == labels).mean()) if labels.size else math.nan
        clusters = tuple(ClusterState(int(c.id), frozenset(str(m) for m in c.members), float(c.score),
                                      bool(c.flagged), None if c.region is None else np.asarray(c.region, bool),
                                      LineRatios.of(c.evidence))
                         for c in result.clusters)
        return cls(int(result.class_index), str(result.class_name), frozenset(str(i) for i in result.ids),
                   accuracy, clusters)


@dataclass(frozen=True)
class CheckpointState:
    """What one checkpoint's audit said, per audited class index; ``weights`` as the report shows the path;
    ``stages``: entries computed and found cached per stage."""

    weights: str
    classes: dict[int, ClassState]
    stages: dict[str, dict[str, int]]

    @classmethod
    def of(cls, weights: str, results: Sequence[ClassResult], skipped: Sequence[SkippedClass],
           stages: dict[str, dict[str, int]]) -> CheckpointState:
        classes = {int(r.class_index): ClassState.of(r) for r in results}
        for item in skipped:
            classes[int(item.class_index)] = ClassState(int(item.class_index), item.class_name, frozenset(),
                                                        math.nan, (), item.reason)
        return cls(weights, classes, stages)


@dataclass(frozen=True)
class PatternPoint:
    """A pattern at one checkpoint: the cluster carrying it (None: no cluster matched, or the class was
    not analysed), its size, score (NaN without one), flag, how it was matched to the pattern
    (``overlap``: member overlap, or region intersection over union when ``matched_by`` is "region") and its
    lines of evidence."""

    cluster: int | None
    size: int | None
    score: float
    flagged: bool
    overlap: float
    matched_by: Matched | None
    lines: LineRatios = LineRatios()

    @classmethod
    def of(cls, cluster: ClusterState, overlap: float, matched_by: Matched) -> PatternPoint:
        return cls(cluster.cluster, len(cluster.members), cluster.score, cluster.flagged, overlap, matched_by,
                   cluster.lines)


_NO_POINT = PatternPoint(None, None, math.nan, False, 0.0, None)


@dataclass(frozen=True)
class Pattern:
    """A flagged pattern of a class followed across the checkpoints: ``first_flagged`` is the position of
    the checkpoint where it was first flagged; ``points`` has one entry per checkpoint."""

    id: int
    first_flagged: int
    points: tuple[PatternPoint, ...]


@dataclass(frozen=True)
class ClassStep:
    """One class at one checkpoint: clusters found (None when skipped), share of its samples predicted as
    the class, highest cluster score (NaN when none was scored), flagged clusters, why it was skipped."""

    n_clusters: int | None
    accuracy: float
    max_score: float
    n_flagged: int
    skipped: str | None


@dataclass(frozen=True)
class ClassTimeline:
    """A class across the checkpoints: one step per checkpoint, and its flagged patterns."""

    class_index: int
    class_name: str
    steps: tuple[ClassStep, ...]
    patterns: tuple[Pattern, ...]


@dataclass(frozen=True)
class Timeline:
    """The timeline of a series: ``checkpoints`` (weights as shown), ``stages`` per checkpoint, one
    ``ClassTimeline`` per class audited at any checkpoint (by index), and the flagging ``threshold``."""

    checkpoints: tuple[str, ...]
    stages: tuple[dict[str, dict[str, int]], ...]
    classes: tuple[ClassTimeline, ...]
    threshold: float

    def to_dict(self) -> dict[str, Any]:
        """The ``timeline`` section of summary.json (strict JSON: a number that is not finite is null)."""
        return {"checkpoints": [{"index": i, "weights": w, "stages": s}
                                for i, (w, s) in enumerate(zip(self.checkpoints, self.stages))],
                "match_overlap": MATCH_OVERLAP, "region_overlap": REGION_OVERLAP, "threshold": self.threshold,
                "classes": [_class_dict(c, self.checkpoints) for c in self.classes]}

    def csv_text(self) -> str:
        """timeline.csv: one row per class, checkpoint and pattern (pattern columns empty for a class
        without a flagged pattern)."""
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for item in self.classes:
            for position, step in enumerate(item.steps):
                common = [item.class_index, item.class_name, position, self.checkpoints[position],
                          _cell(step.n_clusters), _cell(step.accuracy), _cell(step.max_score), step.n_flagged]
                if not item.patterns:
                    writer.writerow(common + [""] * (len(CSV_COLUMNS) - len(common)))
                for pattern in item.patterns:
                    point = pattern.points[position]
                    writer.writerow(common + [pattern.id, pattern.first_flagged, _cell(point.cluster),
                                              _cell(point.size), _cell(point.score), int(point.flagged),
                                              point.matched_by or ""]
                                    + [_cell(value) for value in astuple(point.lines)])
        return out.getvalue()


CSV_COLUMNS = ("class", "name", "checkpoint", "weights", "n_clusters", "accuracy", "max_score", "n_flagged",
               "pattern", "first_flagged", "cluster", "size", "score", "flagged", "matched_by", "consistency",
               "necessity", "sufficiency", "decision", "transplant_flip_rate")


def _cell(value: float | int | None) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _number(value: float) -> float | None:
    return round(float(value), 6) if math.isfinite(value) else None


def _class_dict(item: ClassTimeline, checkpoints: tuple[str, ...]) -> dict[str, Any]:
    steps = [{"checkpoint": i, "n_clusters": s.n_clusters, "accuracy": _number(s.accuracy),
              "max_score": _number(s.max_score), "n_flagged": s.n_flagged, "skipped": s.skipped}
             for i, s in enumerate(item.steps)]
    patterns = [{"id": p.id, "first_flagged": p.first_flagged, "first_flagged_weights": checkpoints[p.first_flagged],
                 "points": [{"checkpoint": i, "cluster": q.cluster, "size": q.size, "score": _number(q.score),
                             "flagged": q.flagged, "overlap": round(q.overlap, 4), "matched_by": q.matched_by,
                             "lines": {k: _number(v) for k, v in asdict(q.lines).items()}}
                            for i, q in enumerate(p.points)]}
                for p in item.patterns]
    return {"class": item.class_index, "name": item.class_name, "checkpoints": steps, "patterns": patterns}


def build_timeline(checkpoints: Sequence[CheckpointState], threshold: float) -> Timeline:
    """The timeline of the checkpoints' audits, in their order (``threshold``: ``flagging.threshold``)."""
    indices = sorted({index for state in checkpoints for index in state.classes})
    classes = []
    for index in indices:
        states = [state.classes.get(index) for state in checkpoints]
        name = next(s.class_name for s in states if s is not None)
        classes.append(ClassTimeline(index, name, tuple(_step(s) for s in states), follow_patterns(states)))
    return Timeline(tuple(s.weights for s in checkpoints), tuple(s.stages for s in checkpoints), tuple(classes),
                    threshold)


def _step(state: ClassState | None) -> ClassStep:
    if state is None:
        return ClassStep(None, math.nan, math.nan, 0, "not audited at this checkpoint")
    if state.skipped is not None:
        return ClassStep(None, math.nan, math.nan, 0, state.skipped)
    scores = [c.score for c in state.clusters if math.isfinite(c.score)]
    return ClassStep(len(state.clusters), state.accuracy, max(scores) if scores else math.nan,
                     sum(c.flagged for c in state.clusters), None)


@dataclass
class _Chain:
    """A pattern being followed: its flagged cluster at each checkpoint where it was flagged."""

    first: int
    flagged: dict[int, ClusterState]
    ids: dict[int, frozenset[str]]
    matched: dict[int, tuple[float, Matched]]  # how the flagged cluster joined the chain (its first: itself)

    def reference(self, position: int) -> tuple[ClusterState, frozenset[str]]:
        """The flagged cluster nearest in time to ``position`` (earlier ones on a tie) and its audited ids."""
        nearest = min(self.flagged, key=lambda t: (abs(t - position), t))
        return self.flagged[nearest], self.ids[nearest]


def follow_patterns(states: Sequence[ClassState | None]) -> tuple[Pattern, ...]:
    """A class's flagged patterns across checkpoints (``states``: the class at each checkpoint, None where it
    was not audited), in the order they were first flagged."""
    chains: list[_Chain] = []
    for position, state in enumerate(states):
        if state is None:
            continue
        flagged = [c for c in state.clusters if c.flagged]
        latest = [chain.reference(position) for chain in chains]
        pairs = match_clusters(flagged, [cluster for cluster, _ in latest], state.ids, [ids for _, ids in latest])
        for i, j, value, how in pairs:
            chains[j].flagged[position] = flagged[i]
            chains[j].ids[position] = state.ids
            chains[j].matched[position] = (value, how)
        paired = {i for i, _, _, _ in pairs}
        chains += [_Chain(position, {position: c}, {position: state.ids}, {position: (1.0, "members")})
                   for i, c in enumerate(flagged) if i not in paired]
    return tuple(Pattern(number, chain.first, _points(chain, states)) for number, chain in enumerate(chains))


def _points(chain: _Chain, states: Sequence[ClassState | None]) -> tuple[PatternPoint, ...]:
    points = []
    for position, state in enumerate(states):
        if position in chain.flagged:
            points.append(PatternPoint.of(chain.flagged[position], *chain.matched[position]))
            continue
        if state is None or not state.clusters:
            points.append(_NO_POINT)
            continue
        reference, ids = chain.reference(position)
        pairs = match_clusters(list(state.clusters), [reference], state.ids, [ids])
        if not pairs:
            points.append(_NO_POINT)
            continue
        i, _, value, how = pairs[0]
        points.append(PatternPoint.of(state.clusters[i], value, how))
    return tuple(points)


def match_clusters(now: Sequence[ClusterState], before: Sequence[ClusterState], now_ids: frozenset[str],
                   before_ids: Sequence[frozenset[str]]) -> list[tuple[int, int, float, Matched]]:
    """One-to-one matches ``(i, j, overlap, how)`` of clusters ``now`` (whose class audited ``now_ids``) to
    ``before`` (``before_ids[j]``: the ids audited where ``before[j]`` was found): by member overlap
    (``spray.diff.overlap`` >= ``MATCH_OVERLAP``) first, then the rest by region intersection over union
    (>= ``REGION_OVERLAP``)."""
    by_members = pair_greedily([(overlap(c.members, b.members, now_ids & before_ids[j]), i, j)
                                for i, c in enumerate(now) for j, b in enumerate(before)], MATCH_OVERLAP)
    used_now, used_before = {i for i, _, _ in by_members}, {j for _, j, _ in by_members}
    by_region = pair_greedily([(region_overlap(c.region, b.region), i, j)
                               for i, c in enumerate(now) if i not in used_now
                               for j, b in enumerate(before) if j not in used_before], REGION_OVERLAP)
    return ([(i, j, value, "members") for i, j, value in by_members]
            + [(i, j, value, "region") for i, j, value in by_region])


def region_overlap(a: np.ndarray | None, b: np.ndarray | None) -> float:
    """Intersection over union of two distinctive regions (bool, same shape); 0 when either is missing or
    empty, or their shapes differ."""
    if a is None or b is None or a.shape != b.shape:
        return 0.0
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0
