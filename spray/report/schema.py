"""The schema of ``summary.json``, the public contract scheduled audits read.

The models below describe the document ``spray.report.summary.build_summary`` writes; their JSON Schema is
published as ``docs/summary.schema.json`` (``python -m spray.report.schema`` prints it; a test keeps the two
equal) and every summary the tests produce is validated against them. ``SCHEMA_VERSION`` changes when a key
is renamed or removed or its meaning changes; new keys may be added within a version, so every object also
accepts keys it does not list.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class Neon(_Open):
    competitor: int = Field(description="the cluster the members are most often nearest to after their own")
    mean_logit: float | None = Field(description="the members' mean NEON membership logit (squared-distance "
                                                 "units of the preprocessed maps)")
    positive_share_in_region: float | None = Field(
        description="share of the mean membership map's positive relevance inside the cluster's distinctive "
                    "region; null without a region")
    layer: str | None = Field(
        default=None, description="null: NEON over the preprocessed heatmaps; a layer name: the deep-feature lens "
        "(analysis.space features), membership at that layer's activations (mean_logit in their squared-distance "
        "units) propagated to the input by LRP")
    present_share: float | None = Field(
        default=None, description="share of the mean membership map's positive relevance that comes from what the "
        "members have (cells where their heatmaps exceed the boundary point to a competitor), the rest from what "
        "they lack; null where not split (the deep-feature lens)")
    present_share_in_region: float | None = Field(
        default=None, description="share of the positive relevance of what the members have inside the cluster's "
        "distinctive region; null without a region or where not split")


class Faithfulness(_Open):
    aopc_morf: float | None = Field(description="mean area over the most-relevant-first perturbation curve, logits")
    aopc_random: float | None = Field(description="the same for a random patch order")
    aopc_gain: float | None = Field(description="aopc_morf - aopc_random; not above 0: heatmaps no better than random")
    n: int = Field(description="sampled samples measured")


class Cluster(_Open):
    id: int = Field(description="the cluster's label within its class")
    size: int = Field(description="number of members")
    members: list[str] = Field(description="sample ids of every member")
    score: float | None = Field(description="Clever Hans score: the weakest line of evidence over its "
                                            "threshold (>= 1 passes every line); null when not scored")
    flagged: bool
    evidence: dict[str, Any] = Field(description="the measurements behind the score (docs/method.md)")
    prototypes: list[str] = Field(description="sample ids of the most typical members")
    neon: Neon | None = Field(default=None, description="NEON: what sets the cluster apart from its nearest "
                                                        "cluster; null for a class with one cluster")
    faithfulness: Faithfulness | None = Field(
        default=None, description="region perturbation over the cluster's sampled members; null when none was "
                                  "sampled or evaluation is off")


class Finding(_Open):
    cluster: int = Field(description="the flagged cluster the finding's members are listed under")
    size: int = Field(description="number of members")
    clusters: dict[str, int] = Field(description="spectral cluster id -> members it gave the finding")
    groups: list[int] = Field(description="flagged groups merged into the finding: spectral cluster ids, and -1, "
                                          "-2, ... for patterns found anywhere, -101, -102, ... for their carriers "
                                          "measured at one place")
    anywhere: bool = Field(description="found at each member's own place (a pattern that moves), not at one place")
    position_spread: float | None = Field(description="mean distance of the members' pattern windows from their "
                                                      "mean position, as a share of the image diagonal")
    score: float | None = Field(description="the strongest merged group's score")
    members: list[str] = Field(description="sample ids of every member")
    prototype: list[Any] = Field(description="the members' mean pattern, height x width x channels, 0-255; "
                                              "-1 outside the pattern's pixels")
    evidence: dict[str, Any] = Field(description="the strongest merged group's evidence (docs/method.md)")


class Conservation(_Open):
    median: float | None
    min: float | None
    max: float | None
    n: int
    n_missing: int


class AuditedClass(_Open):
    class_index: int = Field(alias="class", description="the model output audited")
    name: str
    n_samples: int
    eigenvalues: list[float | None]
    n_clusters: int = Field(description="clusters the eigengap chose")
    flagged: bool
    max_score: float | None
    conservation: Conservation = Field(description="sum of input relevance over the logit, per sample")
    embeddings: list[str]
    notes: list[str]
    clusters: list[Cluster]
    findings: list[Finding] = Field(default_factory=list, description="one per shortcut: flagged groups that share "
                                                                        "their carriers or pattern, strongest first")
    faithfulness: Faithfulness | None = Field(
        default=None, description="region perturbation over the class's sampled samples; null when evaluation is off")


class SkippedClass(_Open):
    class_index: int = Field(alias="class")
    name: str
    reason: str


class SkippedSample(_Open):
    id: str
    reason: str


class Output(_Open):
    output: int
    name: str


class LabelMapping(_Open):
    source: str = Field(description="how dataset labels were mapped onto model outputs")
    outputs: list[Output]


class Run(_Open):
    config_path: str
    config: dict[str, Any]
    model: str
    data: str
    versions: dict[str, str]
    started: str
    duration_s: float | None
    device: str
    stages: dict[str, dict[str, int]] = Field(description="per stage, tasks computed and found cached")


class FlagChange(_Open):
    class_index: int = Field(alias="class", description="the class the flag is in")
    cluster: int | None = Field(description="the flagged cluster in this run; null when resolved")
    baseline_cluster: int | None = Field(description="the flagged cluster in the baseline; null when new")
    size: int | None = Field(description="members of the cluster in this run")
    baseline_size: int | None = Field(description="members of the cluster in the baseline")
    score: float | None
    baseline_score: float | None
    overlap: float = Field(description="shared members over the smaller cluster's members that both runs "
                                       "audited (0 for new and resolved flags)")


class ScoreChange(_Open):
    baseline: float | None = Field(description="the class's highest cluster score in the baseline")
    current: float | None = Field(description="the class's highest cluster score in this run")
    change: float | None = Field(description="current - baseline; null when either is missing")


class Diff(_Open):
    baseline: str = Field(description="the baseline's output folder, shown like the run's other paths")
    match_overlap: float = Field(description="the overlap at which two flagged clusters are the same flag")
    new: list[FlagChange] = Field(description="flags this run has and the baseline did not")
    persisting: list[FlagChange] = Field(description="flags of the baseline matched by a flag of this run")
    resolved: list[FlagChange] = Field(description="flags of the baseline that this run no longer has")
    score_change: dict[str, ScoreChange] = Field(description="per class audited in both runs (by index)")
    classes_only_now: list[int]
    classes_only_in_baseline: list[int]


class TimelineCheckpoint(_Open):
    index: int = Field(description="position in the series, from 0")
    weights: str = Field(description="the checkpoint's weights file, shown like the run's other paths")
    stages: dict[str, dict[str, int]] = Field(description="per stage, tasks computed and found cached for it")


class TimelineStep(_Open):
    checkpoint: int = Field(description="position of the checkpoint in the series")
    n_clusters: int | None = Field(description="clusters the eigengap chose; null when the class was skipped")
    accuracy: float | None = Field(description="share of the class's audited samples the model predicts as it")
    max_score: float | None = Field(description="the highest cluster score; null when none was scored")
    n_flagged: int
    skipped: str | None = Field(description="why the class was not analysed at this checkpoint; null when it was")


class TimelineLines(_Open):
    consistency: float | None = Field(description="measured / threshold; the lowest of the four is the score")
    necessity: float | None = Field(description="measured / threshold")
    sufficiency: float | None = Field(description="measured / threshold")
    decision: float | None = Field(description="measured / threshold")
    transplant_flip_rate: float | None = Field(description="share of transplanted images of other classes "
                                                           "that turned into the class")


class TimelinePoint(_Open):
    checkpoint: int
    cluster: int | None = Field(description="the cluster carrying the pattern; null when none matches")
    size: int | None
    score: float | None
    flagged: bool
    overlap: float = Field(description="member overlap with the pattern (region intersection over union when "
                                       "matched_by is 'region')")
    matched_by: str | None = Field(description="'members', 'region', or null when no cluster matches")
    lines: TimelineLines = Field(description="the cluster's evidence (null where not measured)")


class TimelinePattern(_Open):
    id: int = Field(description="the pattern's number within its class, in the order first flagged")
    first_flagged: int = Field(description="position of the checkpoint where it was first flagged")
    first_flagged_weights: str
    points: list[TimelinePoint] = Field(description="one per checkpoint")


class TimelineClass(_Open):
    class_index: int = Field(alias="class")
    name: str
    checkpoints: list[TimelineStep] = Field(description="one per checkpoint")
    patterns: list[TimelinePattern] = Field(description="flagged patterns followed across the checkpoints")


class Timeline(_Open):
    checkpoints: list[TimelineCheckpoint] = Field(description="the series, in the order audited")
    match_overlap: float = Field(description="member overlap at which two clusters carry the same pattern")
    region_overlap: float = Field(description="region intersection over union at which two clusters whose "
                                              "members do not match carry the same pattern")
    threshold: float = Field(description="flagging.threshold: the score at which a cluster is flagged")
    classes: list[TimelineClass]


class Summary(_Open):
    """The whole summary.json."""

    schema_version: int = Field(description=f"{SCHEMA_VERSION} for this release's layout")
    classes: list[AuditedClass]
    skipped_classes: list[SkippedClass]
    skipped_samples: list[SkippedSample]
    flagged: bool = Field(description="whether any cluster of any class is flagged")
    n_flagged_clusters: int
    label_mapping: LabelMapping
    run: Run
    diff: Diff | None = Field(default=None, description="what changed since the baseline audit (--baseline or "
                                                        "audit.baseline); absent without one")
    timeline: Timeline | None = Field(default=None, description="a series of checkpoints (model.weights a list or "
                                                                "a glob): each class across them; the rest of "
                                                                "the summary is the last checkpoint's; absent "
                                                                "for a single weights file")


def json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of summary.json."""
    schema = Summary.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "spray summary.json"
    return schema


def validate_summary(document: dict[str, Any]) -> Summary:
    """Check a parsed summary.json against the schema; raises pydantic's ValidationError naming the key."""
    return Summary.model_validate(document)


if __name__ == "__main__":
    print(json.dumps(json_schema(), indent=2))
