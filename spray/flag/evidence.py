"""The evidence behind one cluster's flag as typed data: each line of evidence with its value and threshold,
the measurements behind them, the weakest line, the score and the verdict.

``weigh`` turns what the two passes over a class measured into an ``Evidence``; it is a pure function of
those numbers and the documented thresholds below, so the verdict can be checked without a model. This
module imports no torch: the report and ``summary.json`` read ``Evidence`` without loading the model stack.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np

CONSISTENCY = 0.9  # members' region pixels at most a tenth as spread as the rest of the class's
NECESSITY = 0.3  # masking costs members 0.3 median logits more than the rest of the class
SUFFICIENCY = 0.15  # pasting the members' region raises the class 0.15 median logits more than the control
# pasting the members' region turns more of the other classes' images into the class than the control does,
# beyond chance: McNemar's statistic (``decision_statistic``) at the one-sided 95 % quantile of the normal
DECISION = 1.645
LINE_NAMES = ("consistency", "necessity", "sufficiency", "decision")
NO_RECIPIENTS = "no images of other classes to transplant the region into"

# The keys of ``Evidence.to_dict`` in the order summary.json and the report list them (``thresholds`` follows
# ``weakest_evidence``); a key whose value was not recorded is left out.
_ORDER = (
    "region_area", "relevance_in_region", "relevance_in_region_rest", "consistency", "consistency_colour",
    "consistency_shape", "masking_drop",
    "masking_drop_rest", "necessity", "transplant_gain", "transplant_gain_control", "transplant_flip_rate",
    "transplant_flip_rate_control", "sufficiency", "decision", "not_scored", "weakest_evidence", "joined_by_pattern",
    "joined_by_effect", "spectral_size",
)


@dataclass(frozen=True)
class Line:
    """One line of evidence a flag is decided on: its measured value and the minimum a flag needs."""

    name: str  # one of LINE_NAMES
    value: float
    threshold: float  # > 0

    @property
    def ratio(self) -> float:
        """value / threshold: at least 1 when the line passes; NaN or inf when the value is."""
        return self.value / self.threshold

    @property
    def passed(self) -> bool:
        """Whether the value reaches the threshold (a NaN value never does)."""
        return bool(self.value >= self.threshold)


@dataclass(frozen=True)
class Transplant:
    """The sufficiency test's measurements: logit rises in median logits, flip rates as shares in [0, 1]."""

    gain: float  # mean rise of the audited logit when the members' region is pasted into other classes
    gain_control: float  # the same with the region pasted from the rest of the class
    flip_rate: float  # share of recipients that then are predicted as the audited class
    flip_rate_control: float
    # McNemar's statistic of the turned images against the control's, paired by recipient (``decision_statistic``)
    flip_statistic: float


@dataclass(frozen=True)
class Measured:
    """What the two passes over a class measured for one scored cluster, before it is weighed.

    Areas and relevance shares are fractions in [0, 1]; masking drops are in units of the class's median
    |logit|; ``transplant`` is None when there were no images of other classes to paste the region into.
    """

    region_area: float  # share of the image the region covers
    relevance_in_region: float  # mean share of the members' |relevance| inside the region
    relevance_in_region_rest: float  # the same for the rest of the class
    consistency: float  # the larger of the two below
    consistency_colour: float  # 1 - spread of the members' pattern pixels / spread of the rest's
    consistency_shape: float | None  # the same with 1 - NCC of grey levels: a shape in any colour; colour images
    masking_drop: float  # mean fall of the members' logit when the region is filled
    masking_drop_rest: float  # the same for the rest of the class
    transplant: Transplant | None


@dataclass(frozen=True)
class Evidence:
    """The evidence of one cluster and its verdict (the meaning of each measurement: ``spray.flag``).

    A cluster that was not scored (too small, the whole class, repeated images) has only ``not_scored``,
    score 0 and no flag. A scored cluster has its four ``Line``s, the measurements behind them, the name of
    the weakest line and ``score`` = that line's ratio; ``not_scored`` then says which line could not be
    measured, if any. ``joined_by_pattern`` and ``spectral_size`` are set on flagged clusters once pattern
    carriers have joined them (``spray.flag.form_findings``), ``joined_by_effect`` once the samples whose
    most relevant window acts like the pattern have (``spray.flag.join_by_effect``).
    """

    score: float = 0.0
    flagged: bool = False
    consistency: Line | None = None
    necessity: Line | None = None
    sufficiency: Line | None = None
    decision: Line | None = None
    weakest: str | None = None  # the name of the line with the lowest ratio
    not_scored: str | None = None
    region_area: float | None = None
    relevance_in_region: float | None = None
    relevance_in_region_rest: float | None = None
    consistency_colour: float | None = None
    consistency_shape: float | None = None
    masking_drop: float | None = None
    masking_drop_rest: float | None = None
    transplant_gain: float | None = None
    transplant_gain_control: float | None = None
    transplant_flip_rate: float | None = None
    transplant_flip_rate_control: float | None = None
    joined_by_pattern: int | None = None  # samples of other clusters that joined for carrying the pattern
    joined_by_effect: int | None = None  # samples that joined because their hotspot acts like the pattern
    spectral_size: int | None = None  # members the spectral clustering gave the cluster, before they joined

    @property
    def lines(self) -> tuple[Line, ...]:
        """The recorded lines of evidence, in the order consistency, necessity, sufficiency, decision."""
        return tuple(line for line in (self.consistency, self.necessity, self.sufficiency, self.decision)
                     if line is not None)

    @property
    def weakest_line(self) -> Line | None:
        """The line that set the score, or None when the cluster was not scored."""
        return next((line for line in self.lines if line.name == self.weakest), None)

    def entries(self) -> list[tuple[str, float | int | str, float | None]]:
        """``(key, value, threshold or None)`` of everything recorded, in summary.json's order; a line's
        threshold is given, every other entry is a measurement (or a name or reason) without one."""
        entries: list[tuple[str, float | int | str, float | None]] = []
        for key in _ORDER:
            value = getattr(self, "weakest" if key == "weakest_evidence" else key)
            if isinstance(value, Line):
                entries.append((key, value.value, value.threshold))
            elif value is not None:
                entries.append((key, value, None))
        return entries

    def to_dict(self) -> dict[str, Any]:
        """The evidence as summary.json and the flag cache entry store it: flat keys, the lines' thresholds
        under ``thresholds``; score and flag are stored beside it, not in it."""
        data: dict[str, Any] = {}
        for key, value, _ in self.entries():
            data[key] = value
            if key == "weakest_evidence":
                data["thresholds"] = {line.name: line.threshold for line in self.lines}
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, score: float, flagged: bool) -> Evidence:
        """Read back what ``to_dict`` wrote (a value stored as null is NaN); raises ValueError naming an
        unknown key, so that an entry written by other code is not half read."""
        unknown = set(data) - set(_ORDER) - {"thresholds"}
        if unknown:
            raise ValueError(f"unknown evidence key(s) {sorted(unknown)}; expected some of {list(_ORDER)}")
        thresholds = data.get("thresholds") or {}
        values: dict[str, Any] = {"score": float(score), "flagged": bool(flagged)}
        for name in LINE_NAMES:
            if name in data:
                values[name] = Line(name, _number(data[name]), float(thresholds[name]))
        names = {field.name for field in fields(cls)} - {"score", "flagged", *LINE_NAMES}
        for key in names & set(data):
            values[key] = data[key] if key == "not_scored" else _typed(key, data[key])
        if "weakest_evidence" in data:
            values["weakest"] = str(data["weakest_evidence"])
        return cls(**values)

    def joined(self, carriers: int, spectral_size: int) -> Evidence:
        """This evidence with ``carriers`` samples joined by pattern to the ``spectral_size`` it had."""
        return replace(self, joined_by_pattern=int(carriers), spectral_size=int(spectral_size))

    def joined_effect(self, samples: int) -> Evidence:
        """This evidence with ``samples`` joined by the effect of their most relevant window."""
        return replace(self, joined_by_effect=int(samples))


class Judged:
    """What carries an ``evidence`` (a cluster, a finding): its score and flag are the evidence's."""

    evidence: Evidence

    @property
    def score(self) -> float:
        """The weakest line of evidence's ratio measured / threshold; 0 when not scored."""
        return self.evidence.score

    @property
    def flagged(self) -> bool:
        return self.evidence.flagged


def _number(value: Any) -> float:
    return math.nan if value is None else float(value)


def _typed(key: str, value: Any) -> float | int:
    return int(value) if key in ("joined_by_pattern", "joined_by_effect", "spectral_size") else _number(value)


def not_scored(reason: str) -> Evidence:
    """The evidence of a cluster that was not scored, and why: score 0, not flagged."""
    return Evidence(not_scored=reason)


def weakest_evidence(ratios: dict[str, float]) -> tuple[str, float]:
    """The weakest line of evidence and the score it gives (its ratio measured / threshold).

    A ratio that is not finite (NaN from an empty or degenerate measurement, inf from a division by zero)
    is never passing evidence: it is the weakest line, and the score is 0, so the cluster is not flagged.
    """
    broken = [name for name, ratio in ratios.items() if not math.isfinite(ratio)]
    if broken:
        return broken[0], 0.0
    weakest = min(ratios, key=lambda name: ratios[name])
    return weakest, float(ratios[weakest])


def decision_statistic(turned: np.ndarray, turned_control: np.ndarray) -> float:
    """How far beyond chance the members' region turns more recipients into the class than the control
    region does: McNemar's statistic with continuity correction, ``(b - c - 1) / sqrt(b + c)``, in standard
    errors.

    turned, turned_control: (M,) per recipient (an image of another class, the same one in both), whether it
    is predicted as the class after the members' region, or the control's, is pasted in (and was not before).
    ``b`` counts the recipients only the members' region turns, ``c`` those only the control turns; under
    "the region turns images no more often than the control" b is a fair coin's share of b + c, so a value
    of at least ``DECISION`` (1.645) has a one-sided chance below 5 %. A few more turned images than the
    control's are chance on a few hundred recipients: a region the model reads as one more part of the class
    (a patch of sky shared by the crops of one photo) raises the logit a little and changes hardly any
    decision. 0 when no recipient is turned by one and not the other.
    """
    turned, turned_control = np.asarray(turned, bool), np.asarray(turned_control, bool)
    if turned.shape != turned_control.shape or turned.ndim != 1:
        raise ValueError(f"turned {turned.shape} and turned_control {turned_control.shape} must be (M,) each, "
                         "paired by recipient")
    more, fewer = int((turned & ~turned_control).sum()), int((turned_control & ~turned).sum())
    if more + fewer == 0:
        return 0.0
    return (more - fewer - 1) / math.sqrt(more + fewer)


def weigh(measured: Measured, flag_threshold: float) -> Evidence:
    """The evidence of one scored cluster: its four lines against ``CONSISTENCY``, ``NECESSITY``,
    ``SUFFICIENCY`` and ``DECISION``, the weakest, the score (the weakest ratio) and the flag (score >=
    ``flag_threshold``).

    Necessity is the members' masking drop minus the rest's; sufficiency the transplant gain minus its
    control; decision how far beyond chance the transplant turns more images than its control
    (``decision_statistic``); both 0 without images of other classes (so nothing is flagged then).
    """
    transplant = measured.transplant
    lines = (
        Line("consistency", measured.consistency, CONSISTENCY),
        Line("necessity", measured.masking_drop - measured.masking_drop_rest, NECESSITY),
        Line("sufficiency", transplant.gain - transplant.gain_control if transplant else 0.0, SUFFICIENCY),
        Line("decision", transplant.flip_statistic if transplant else 0.0, DECISION),
    )
    ratios = {line.name: line.ratio for line in lines}
    weakest, score = weakest_evidence(ratios)
    reason = None if transplant else NO_RECIPIENTS
    if not math.isfinite(ratios[weakest]):
        reason = f"the {weakest} evidence is not a finite number (NaN or inf)"
    return Evidence(
        score=score, flagged=score >= flag_threshold, consistency=lines[0], necessity=lines[1],
        sufficiency=lines[2], decision=lines[3], weakest=weakest, not_scored=reason, region_area=measured.region_area,
        relevance_in_region=measured.relevance_in_region,
        relevance_in_region_rest=measured.relevance_in_region_rest,
        consistency_colour=measured.consistency_colour, consistency_shape=measured.consistency_shape,
        masking_drop=measured.masking_drop,
        masking_drop_rest=measured.masking_drop_rest,
        transplant_gain=transplant.gain if transplant else None,
        transplant_gain_control=transplant.gain_control if transplant else None,
        transplant_flip_rate=transplant.flip_rate if transplant else None,
        transplant_flip_rate_control=transplant.flip_rate_control if transplant else None,
    )
