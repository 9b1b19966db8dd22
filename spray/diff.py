"""What changed since a previous audit: new, persisting and resolved flags, matched by their members.

A scheduled audit should say "a *new* shortcut appeared", not only "something is flagged". Clusters of two runs
are matched within each class by the samples they share. Sample ids are the key: when the data changed, only
the ids present in both runs count, so added or removed images neither make nor break a match; when the model
changed, the same images still identify the same group. Two flagged clusters match when their overlap,

    |A & B| / min(|A & S|, |B & S|)    (S: the ids audited in both runs),

reaches ``MATCH_OVERLAP``: at least half of the smaller cluster's shared samples lie in the other, so a
cluster that grew by pattern carriers or lost a few members still matches, while two different groups of a
class (which share no members, as clusters partition a class) never do.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spray.errors import ConfigError

if TYPE_CHECKING:
    from spray.results import ClassResult

MATCH_OVERLAP = 0.5


@dataclass(frozen=True)
class FlaggedCluster:
    """One flagged cluster of a run: its class, id, score and member sample ids."""

    class_index: int
    cluster: int
    score: float
    members: frozenset[str]


@dataclass(frozen=True)
class ClassSnapshot:
    """What a run said about one class: every sample id audited, the flagged clusters, the highest score."""

    class_index: int
    ids: frozenset[str]
    flagged: tuple[FlaggedCluster, ...]
    max_score: float


@dataclass(frozen=True)
class Snapshot:
    """A run's verdicts, per audited class index."""

    classes: dict[int, ClassSnapshot]


@dataclass(frozen=True)
class FlagChange:
    """A flag that is new (``baseline`` None), persisting (both) or resolved (``current`` None)."""

    class_index: int
    current: FlaggedCluster | None
    baseline: FlaggedCluster | None
    overlap: float

    def to_dict(self) -> dict[str, Any]:
        return {"class": self.class_index,
                "cluster": self.current.cluster if self.current else None,
                "baseline_cluster": self.baseline.cluster if self.baseline else None,
                "size": len(self.current.members) if self.current else None,
                "baseline_size": len(self.baseline.members) if self.baseline else None,
                "score": _finite(self.current.score) if self.current else None,
                "baseline_score": _finite(self.baseline.score) if self.baseline else None,
                "overlap": round(self.overlap, 4)}


@dataclass(frozen=True)
class AuditDiff:
    """New, persisting and resolved flags; per class audited in both runs the change of the highest cluster
    score (``max_scores``: (baseline, current); NaN where a run scored no cluster of the class); classes
    audited in only one of the runs."""

    baseline: str
    new: tuple[FlagChange, ...]
    persisting: tuple[FlagChange, ...]
    resolved: tuple[FlagChange, ...]
    score_change: dict[int, float]
    only_now: tuple[int, ...]
    only_before: tuple[int, ...]
    max_scores: dict[int, tuple[float, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The ``diff`` section of summary.json (strict JSON: a score that is not finite is null)."""
        scores = {str(index): {"baseline": _finite(before), "current": _finite(now),
                               "change": _finite(self.score_change.get(index, math.nan))}
                  for index, (before, now) in self.max_scores.items()}
        return {"baseline": self.baseline, "match_overlap": MATCH_OVERLAP,
                "new": [c.to_dict() for c in self.new],
                "persisting": [c.to_dict() for c in self.persisting],
                "resolved": [c.to_dict() for c in self.resolved],
                "score_change": scores,
                "classes_only_now": list(self.only_now), "classes_only_in_baseline": list(self.only_before)}


def _finite(value: float) -> float | None:
    """``value`` rounded to 6 decimals, None when it is not a finite number (JSON has no NaN)."""
    return round(float(value), 6) if math.isfinite(value) else None


def _number(value: Any) -> float:
    """A score as summary.json writes it (null when missing) as a float, NaN for null."""
    return math.nan if value is None else float(value)


def snapshot_from_summary(summary: dict[str, Any], source: str = "summary.json") -> Snapshot:
    """Read a run's verdicts from its parsed summary.json; a file that is not one names what is missing."""
    try:
        classes = {}
        for entry in summary["classes"]:
            index = int(entry["class"])
            ids: set[str] = set()
            flagged = []
            for cluster in entry["clusters"]:
                members = frozenset(str(m) for m in cluster["members"])
                ids |= members
                if cluster["flagged"]:
                    flagged.append(FlaggedCluster(index, int(cluster["id"]), _number(cluster["score"]), members))
            classes[index] = ClassSnapshot(index, frozenset(ids), tuple(flagged), _number(entry["max_score"]))
    except (KeyError, TypeError, ValueError) as error:
        raise ConfigError(f"{source} is not a spray summary (missing or malformed {error}); "
                          "point the baseline at the output folder of an earlier spray run") from None
    return Snapshot(classes)


def snapshot_from_results(classes: Sequence[ClassResult]) -> Snapshot:
    """A run's verdicts from its ``spray.results.ClassResult`` list (what the report is drawn from)."""
    snapshots = {}
    for result in classes:
        index = int(result.class_index)
        flagged = tuple(FlaggedCluster(index, int(c.id), float(c.score), frozenset(str(m) for m in c.members))
                        for c in result.clusters if c.flagged)
        scores = [float(c.score) for c in result.clusters if math.isfinite(float(c.score))]
        snapshots[index] = ClassSnapshot(index, frozenset(str(i) for i in result.ids), flagged,
                                         max(scores) if scores else math.nan)
    return Snapshot(snapshots)


def load_baseline(folder: str | Path) -> Snapshot:
    """The verdicts of the run whose output folder is ``folder`` (its summary.json)."""
    from spray.report.schema import SCHEMA_VERSION

    if not Path(folder).is_dir():
        raise ConfigError(f"baseline {folder}: no such folder; give the output folder of an earlier run")
    path = Path(folder) / "summary.json"
    if not path.is_file():
        raise ConfigError(f"baseline {folder}: no summary.json there; give the output folder of an earlier run")
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ConfigError(f"baseline {path}: cannot be read as JSON ({error})") from None
    version = summary.get("schema_version", SCHEMA_VERSION) if isinstance(summary, dict) else SCHEMA_VERSION
    if version != SCHEMA_VERSION:
        raise ConfigError(f"baseline {path}: summary.json schema_version {version}; this spray reads "
                          f"{SCHEMA_VERSION} (re-run the baseline audit with this version)")
    return snapshot_from_summary(summary, str(path))


def overlap(a: frozenset[str], b: frozenset[str], shared: frozenset[str]) -> float:
    """``|A & B| / min(|A & S|, |B & S|)``; 0 when either has no shared sample."""
    smaller = min(len(a & shared), len(b & shared))
    return len(a & b) / smaller if smaller else 0.0


def compare(current: Snapshot, baseline: Snapshot, baseline_name: str) -> AuditDiff:
    """Match each class's flagged clusters across the two runs (best overlap first, each used once)."""
    new: list[FlagChange] = []
    persisting: list[FlagChange] = []
    resolved: list[FlagChange] = []
    score_change = {}
    max_scores = {}
    for index in sorted(set(current.classes) & set(baseline.classes)):
        now, before = current.classes[index], baseline.classes[index]
        pairs = _matched(now, before)
        persisting += pairs
        matched_now = {id(p.current) for p in pairs}
        matched_before = {id(p.baseline) for p in pairs}
        new += [FlagChange(index, c, None, 0.0) for c in now.flagged if id(c) not in matched_now]
        resolved += [FlagChange(index, None, b, 0.0) for b in before.flagged if id(b) not in matched_before]
        score_change[index] = now.max_score - before.max_score
        max_scores[index] = (before.max_score, now.max_score)
    for index in sorted(set(current.classes) - set(baseline.classes)):
        new += [FlagChange(index, c, None, 0.0) for c in current.classes[index].flagged]
    return AuditDiff(baseline=baseline_name, new=tuple(new), persisting=tuple(persisting), resolved=tuple(resolved),
                     score_change=score_change, max_scores=max_scores,
                     only_now=tuple(sorted(set(current.classes) - set(baseline.classes))),
                     only_before=tuple(sorted(set(baseline.classes) - set(current.classes))))


def _matched(now: ClassSnapshot, before: ClassSnapshot) -> list[FlagChange]:
    shared = now.ids & before.ids
    candidates = [(overlap(c.members, b.members, shared), i, j)
                  for i, c in enumerate(now.flagged) for j, b in enumerate(before.flagged)]
    pairs = [FlagChange(now.class_index, now.flagged[i], before.flagged[j], value)
             for i, j, value in pair_greedily(candidates, MATCH_OVERLAP)]
    return sorted(pairs, key=lambda pair: pair.current.cluster if pair.current else -1)


def pair_greedily(candidates: Iterable[tuple[float, int, int]], minimum: float) -> list[tuple[int, int, float]]:
    """One-to-one pairs ``(i, j, value)`` from scored candidates ``(value, i, j)``: the highest value first,
    each ``i`` and each ``j`` used once, values below ``minimum`` never."""
    used_i: set[int] = set()
    used_j: set[int] = set()
    pairs = []
    for value, i, j in sorted(candidates, reverse=True):
        if value < minimum or i in used_i or j in used_j:
            continue
        used_i.add(i)
        used_j.add(j)
        pairs.append((i, j, value))
    return pairs
