"""``index.html``: the self-contained report, rendered with Jinja2 from the audit's result dataclasses.

Everything the page needs is inside the one file: CSS inline, figures as base64 PNG data URIs, no script,
no font or stylesheet from the network, so it opens offline and can be archived or mailed as is. Every
string that comes from data (ids, class names, evidence, config values, paths) goes through Jinja's
autoescaping; the template never marks data as safe.
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml
from jinja2 import Environment, FileSystemLoader, StrictUndefined

from spray.errors import RunError
from spray.flag.evidence import CONSISTENCY, DECISION, NECESSITY, SUFFICIENCY, Evidence
from spray.report import explain, figures, images
from spray.report.summary import (
    class_order_key,
    cluster_order_key,
    conservation_stats,
    cross_class_clusters,
    finite_or_nan,
    max_score,
    to_jsonable,
)
from spray.report.timeline_view import timeline_view
from spray.results import ClassResult, ClusterResult, CrossClassResult, FindingResult, RunInfo

if TYPE_CHECKING:
    from spray.diff import AuditDiff, FlagChange
    from spray.timeline import Timeline

TEMPLATES = Path(__file__).parent / "templates"
MAX_PROTOTYPES = 8  # prototypes shown per cluster, most typical first
PROTOTYPE_SIDE = 72  # pixels per prototype tile, as shown: keeps 1,200 tiles near 7 MB of HTML
MEMBER_TILE = 48  # pixels per member tile in a flagged cluster's gallery
MAX_SKIPPED_SAMPLES_SHOWN = 200  # the full list is always in summary.json
EMBEDDING_TITLES = {"tsne": "t-SNE", "umap": "UMAP", "pca": "PCA"}
# Above this many classes each class gets a page of its own (classes/<index>.html): the figures of a class
# of 10 clusters take up to 0.8 MB (tests/test_report.py), so 1,000 classes on one page would be near 1 GB,
# which browsers do not open; 20 stay near 16 MB.
MAX_CLASSES_ON_ONE_PAGE = 20
CLASS_PAGES = "classes"


def format_number(value: Any) -> str:
    """A number as a reviewer reads it: 4 significant digits, integers as they are, '—' when missing."""
    if value is None:
        return "—"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        number = float(value)
        if not math.isfinite(number):
            return "—"
        if number == 0:
            return "0"
        if 1e-3 <= abs(number) < 1e5:
            return f"{number:.4g}"
        return f"{number:.3e}"
    return str(value)


def format_duration(seconds: Any) -> str:
    """``3725.4`` -> ``'1 h 02 min'``, ``192`` -> ``'3 min 12 s'``, ``12.34`` -> ``'12.3 s'``."""
    value = finite_or_nan(seconds)
    if math.isnan(value):
        return "—"
    if value < 60:
        return f"{value:.1f} s"
    minutes, secs = divmod(round(value), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def class_title(index: int, name: str) -> str:
    """``'3 · three'``, or ``'3'`` when the class has no name beyond its index (plain text, escaped later)."""
    name = str(name)
    return str(int(index)) if name in ("", str(int(index))) else f"{int(index)} · {name}"


def format_started(started: str) -> str:
    """An ISO 8601 time as ``2026-11-26 06:30 UTC`` (or with its offset); as given when it is not ISO."""
    try:
        moment = _dt.datetime.fromisoformat(str(started))
    except ValueError:
        return str(started)
    text = moment.strftime("%Y-%m-%d %H:%M")
    offset = moment.utcoffset()
    if offset is None:
        return text
    return f"{text} UTC" if offset == _dt.timedelta(0) else f"{text} {moment.isoformat()[-6:]}"


def evidence_rows(evidence: Evidence) -> list[dict[str, Any]]:
    """A cluster's evidence as table rows: key, human name, meaning, unit, formatted value and, for the lines
    of evidence a flag is decided on, threshold and verdict.

    Those lines come first, the weakest marked as the one that set the score, then the name of the weakest
    (these rows are ``primary``), then the measurements behind them in ``Evidence.entries`` order. A line
    whose value is not a finite number is shown as measured, without a verdict.
    """
    rows = [_evidence_row(key, value, threshold, evidence.weakest) for key, value, threshold in evidence.entries()]
    rows.sort(key=lambda row: (not row["threshold"], row["key"] != "weakest_evidence"))
    for row in rows:
        row["primary"] = bool(row["threshold"]) or row["key"] == "weakest_evidence"
    return rows


def _evidence_row(key: str, value: float | int | str, threshold: float | None, weakest: str | None) -> dict[str, Any]:
    number = math.nan if isinstance(value, str) else finite_or_nan(value)
    shown_threshold = None if math.isnan(number) else threshold  # a value that is not a number gets no verdict
    described = explain.term(key)
    return {
        "key": key,
        "name": described.name,
        "meaning": described.meaning,
        "unit": described.unit,
        "value": format_number(value),
        "numeric": not isinstance(value, str),
        "threshold": format_number(shown_threshold) if shown_threshold is not None else "",
        "passed": bool(number >= shown_threshold) if shown_threshold is not None else None,
        "weakest": key == weakest,
    }


_COUNTS = {1: "one", 2: "two", 3: "three", 4: "four"}


def score_formula(evidence: Evidence) -> str:
    """How a cluster's score was formed, e.g. ``'= necessity 0.31 / threshold 0.15, the weakest of the four
    ratios'``; '' when the cluster was not scored."""
    line = evidence.weakest_line
    if line is None:
        return ""
    return (f"= {explain.term(line.name).name.split(' (')[0].lower()} {format_number(line.value)} "
            f"/ threshold {format_number(line.threshold)}, the weakest of the {_COUNTS[len(evidence.lines)]} ratios")


def _prototype_views(cluster: ClusterResult) -> list[dict[str, Any]]:
    # The region is outlined on the prototypes of flagged clusters only: there the reviewer must check that
    # it covers the suspected artifact; on clean clusters the outlines would only add clutter.
    region = cluster.region if cluster.flagged else None
    views = []
    triples = zip(cluster.prototypes, cluster.prototype_images, cluster.prototype_heatmaps)
    neon_maps = list(cluster.prototype_neon_maps)
    for position, (sample_id, image, heatmap) in enumerate(list(triples)[:MAX_PROTOTYPES]):
        height, width = np.asarray(image).shape[:2]
        views.append(
            {
                "id": str(sample_id),
                "image": images.image_tile(image, PROTOTYPE_SIDE),
                "overlay": images.overlay_tile(image, heatmap, region, PROTOTYPE_SIDE),
                "neon": images.map_tile(neon_maps[position], target=PROTOTYPE_SIDE) if position < len(neon_maps)
                else None,
                # Small inputs (e.g. 32x32 digits) are enlarged by the browser: keep their pixels crisp.
                "pixelated": max(height, width) < PROTOTYPE_SIDE,
            }
        )
    return views


def class_page(index: int) -> str:
    """Where a class's own page is, relative to index.html."""
    return f"{CLASS_PAGES}/{int(index)}.html"


def _class_href(index: int, paged: bool, anchor: str = "") -> str:
    """Link from index.html to a class (or a cluster of it): an anchor on this page, or on its own page."""
    anchor = anchor or f"class-{int(index)}"
    return f"{class_page(index)}#{anchor}" if paged else f"#{anchor}"


def _cluster_view(cluster: ClusterResult, result: ClassResult, colour: str) -> dict[str, Any]:
    has_region = cluster.region is not None and bool(np.any(cluster.region))
    return {
        "id": int(cluster.id),
        "anchor": f"class-{int(result.class_index)}-cluster-{int(cluster.id)}",
        "colour": colour,
        "size": int(cluster.size),
        "share": cluster.size / result.n_samples if result.n_samples else math.nan,
        "score": finite_or_nan(cluster.score),
        "flagged": bool(cluster.flagged),
        "evidence": evidence_rows(cluster.evidence),
        "score_formula": score_formula(cluster.evidence),
        "mean_map": images.map_tile(cluster.mean_map, cluster.region if has_region else None),
        **_neon_view(cluster, has_region),
        "faithfulness": cluster.faithfulness,
        "has_region": has_region,
        "region_missing": cluster.region is None,
        "prototypes": _prototype_views(cluster),
        "members": _member_views(cluster),
        "n_members_hidden": max(0, int(cluster.size) - len(cluster.members_shown)) if cluster.members_shown else 0,
    }


def _finding_view(finding: FindingResult, result: ClassResult) -> dict[str, Any]:
    """One finding: its prototype, where its members carry it, the clusters it gathers and its evidence."""
    prototype = images.to_rgb_uint8(finding.prototype) if finding.prototype.size else np.zeros((1, 1, 3), np.uint8)
    factor = max(1, 96 // max(prototype.shape[:2]))
    outside = ~np.isfinite(finding.prototype).all(-1) if finding.prototype.size else np.zeros((1, 1), bool)
    prototype = np.repeat(np.repeat(prototype, factor, 0), factor, 1)
    rows, cols = np.indices(prototype.shape[:2])
    checker = np.where(((rows // 4 + cols // 4) % 2)[..., None] == 0, 236, 250).astype(np.uint8)
    # pixels outside the pattern (a frame's inside, a logo's background where copies differ) read as empty
    outside = np.repeat(np.repeat(outside, factor, 0), factor, 1)
    prototype[outside] = np.broadcast_to(checker, prototype.shape)[outside]
    origins = ", ".join(f"{count} from cluster {cluster}" for cluster, count in sorted(finding.clusters.items()))
    return {
        "cluster": int(finding.cluster),
        "anchor": f"class-{int(result.class_index)}-cluster-{int(finding.cluster)}",
        "size": int(finding.size),
        "share": finding.size / result.n_samples if result.n_samples else math.nan,
        "score": finite_or_nan(finding.score),
        "anywhere": bool(finding.anywhere),
        "position_spread": finding.position_spread,
        "n_groups": len(finding.groups),
        "origins": origins,
        "prototype": images.png_data_uri(prototype),
        "coverage": images.map_tile(finding.coverage, target=128),
        "evidence": evidence_rows(finding.evidence),
    }


def _neon_view(cluster: ClusterResult, has_region: bool) -> dict[str, Any]:
    """The cluster's NEON map (what sets it apart from its nearest cluster) and its one-line explanation."""
    neon = cluster.neon
    if neon is None:
        return {"neon_map": None, "neon_text": explain.NEON_SINGLE, "neon_competitor": None, "neon_share": None,
                "neon_prototype_text": ""}
    if neon.present_map is not None:  # what the members have (spray.neon), the share from what they lack named
        return {"neon_map": images.map_tile(neon.present_map, cluster.region if has_region else None),
                "neon_text": explain.neon_present_text(neon.competitor, format_number(neon.mean_logit),
                                                       neon.present_share),
                "neon_competitor": neon.competitor, "neon_share": neon.present_share_in_region,
                "neon_prototype_text": explain.NEON_PROTOTYPE}
    return {"neon_map": images.map_tile(neon.mean_map, cluster.region if has_region else None),
            "neon_text": explain.neon_text(neon.competitor, format_number(neon.mean_logit), neon.layer),
            "neon_competitor": neon.competitor, "neon_share": neon.positive_share_in_region,
            "neon_prototype_text": explain.NEON_PROTOTYPE if neon.layer is None else explain.NEON_LENS_PROTOTYPE}


def _faithfulness_view(result: ClassResult) -> dict[str, Any] | None:
    """The class's region perturbation: curves, numbers, explanation, and whether its clusters can be trusted."""
    faithfulness = result.faithfulness
    if faithfulness is None:
        return None
    summary = faithfulness.summary
    return {"figure": figures.faithfulness_figure(faithfulness.morf_curve, faithfulness.random_curve),
            "summary": summary, "trusted": summary.trusted, "warning": explain.UNFAITHFUL,
            "text": explain.faithfulness_text(summary.n, faithfulness.patch_size, faithfulness.perturbation)}


def _member_views(cluster: ClusterResult) -> list[dict[str, Any]]:
    """Every member of a flagged cluster as small image and relevance tiles (the gallery)."""
    views = []
    for thumb in cluster.members_shown:
        image_height, image_width = np.asarray(thumb.image).shape[:2]
        height, width = images.fit_size(image_height, image_width, MEMBER_TILE)
        views.append({"id": str(thumb.id), "height": height, "width": width,
                      "image": images.image_tile(thumb.image, MEMBER_TILE),
                      "overlay": images.overlay_tile(thumb.image, thumb.heatmap, None, MEMBER_TILE)})
    return views


def _summary_row(result: ClassResult, rank: int, paged: bool) -> dict[str, Any]:
    """What the summary table shows of a class: cheap numbers only, no figure (many classes, one page)."""
    labels = np.asarray(result.labels)
    predictions = np.asarray(result.predictions)
    n_correct = int(np.sum(predictions == labels)) if labels.size else 0
    n_flagged = sum(bool(cluster.flagged) for cluster in result.clusters)
    return {
        "rank": rank,
        "index": int(result.class_index),
        "title": class_title(result.class_index, result.class_name),
        "href": _class_href(result.class_index, paged),
        "n_samples": int(result.n_samples),
        "n_clusters": int(result.n_clusters),
        "flagged": bool(result.flagged),
        "n_flagged": n_flagged,
        "max_score": max_score(result),
        "accuracy": n_correct / result.n_samples if result.n_samples else math.nan,
        "conservation": conservation_stats(result.conservation),
    }


def _class_view(result: ClassResult, rank: int) -> dict[str, Any]:
    clusters = sorted(result.clusters, key=cluster_order_key)
    flagged_ids = [int(cluster.id) for cluster in clusters if cluster.flagged]
    all_ids = [int(c.id) for c in clusters] + [int(label) for label in np.unique(result.cluster_labels)]
    colours = figures.cluster_colours(all_ids, flagged_ids)
    embeddings = {str(name): np.asarray(coords) for name, coords in result.embeddings.items()}
    ordered_names = [n for n in ("tsne", "umap") if n in embeddings] + sorted(
        n for n in embeddings if n not in ("tsne", "umap")
    )
    embeddings = {name: embeddings[name] for name in ordered_names}
    labels = np.asarray(result.labels)
    predictions = np.asarray(result.predictions)
    n_correct = int(np.sum(predictions == labels)) if labels.size else 0
    return {
        "rank": rank,
        "index": int(result.class_index),
        "name": str(result.class_name),
        "title": class_title(result.class_index, result.class_name),
        "anchor": f"class-{int(result.class_index)}",
        "href": f"#class-{int(result.class_index)}",
        "n_samples": int(result.n_samples),
        "n_clusters": int(result.n_clusters),
        "flagged": bool(result.flagged),
        "n_flagged": len(flagged_ids),
        "max_score": max_score(result),
        "accuracy": n_correct / result.n_samples if result.n_samples else math.nan,
        "conservation": conservation_stats(result.conservation),
        "notes": [str(note) for note in result.notes],
        "spectrum": figures.spectrum_figure(result.eigenvalues, result.n_clusters),
        "conservation_figure": figures.conservation_figure(result.conservation),
        "mean_map": images.map_tile(result.class_mean_map),
        "faithfulness": _faithfulness_view(result),
        "embedding_names": [EMBEDDING_TITLES.get(name, name) for name in embeddings],
        "embedding_width": figures.embedding_display_width(len(embeddings)),
        "embedding": (
            figures.embedding_figure(
                embeddings, result.cluster_labels, flagged_ids,
                titles={name: EMBEDDING_TITLES.get(name, name) for name in embeddings},
            )
            if embeddings
            else None
        ),
        "clusters": [_cluster_view(cluster, result, colours[int(cluster.id)]) for cluster in clusters],
        "findings": [_finding_view(finding, result) for finding in result.findings],
    }


def _cross_class_view(result: CrossClassResult, paged: bool) -> dict[str, Any]:
    embeddings = {str(name): np.asarray(coords) for name, coords in result.embeddings.items()}
    clusters = cross_class_clusters(result)
    colours = figures.cluster_colours([c["id"] for c in clusters], [])
    views = []
    for cluster in sorted(clusters, key=lambda c: (-c["size"], c["id"])):
        shown = cluster["classes"][:5]
        views.append({
            "id": cluster["id"], "colour": colours[cluster["id"]], "size": cluster["size"],
            "share": cluster["size"] / result.n_samples if result.n_samples else math.nan,
            "n_classes": len(cluster["classes"]),
            "largest_share": shown[0]["count"] / cluster["size"] if shown else math.nan,
            "classes": [{"title": class_title(c["class"], c["name"]), "href": _class_href(c["class"], paged),
                         "count": c["count"]} for c in shown],
            "more": len(cluster["classes"]) - len(shown),
        })
    return {
        "n_samples": int(result.n_samples),
        "n_classes": len(result.class_names),
        "n_clusters": int(result.n_clusters),
        "notes": [str(note) for note in result.notes],
        "spectrum": figures.spectrum_figure(result.eigenvalues, result.n_clusters),
        "embedding_names": [EMBEDDING_TITLES.get(name, name) for name in embeddings],
        "embedding_width": figures.embedding_display_width(len(embeddings)),
        "embedding": figures.embedding_figure(
            embeddings, result.cluster_labels, [], titles={n: EMBEDDING_TITLES.get(n, n) for n in embeddings},
        ) if embeddings else None,
        "clusters": views,
    }


def _verdict(classes: list[ClassResult], run: RunInfo, paged: bool = False) -> dict[str, Any]:
    flagged_classes = [result for result in sorted(classes, key=class_order_key) if result.flagged]
    n_flagged = sum(cluster.flagged for result in classes for cluster in result.clusters)
    return {
        "n_audited": len(classes),
        "n_flagged_clusters": n_flagged,
        "n_flagged_classes": len(flagged_classes),
        "flagged_classes": [
            {
                "index": int(result.class_index),
                "name": str(result.class_name),
                "title": class_title(result.class_index, result.class_name),
                "href": _class_href(result.class_index, paged),
                "clusters": [
                    {
                        "id": int(cluster.id),
                        "href": _class_href(result.class_index, paged,
                                            f"class-{int(result.class_index)}-cluster-{int(cluster.id)}"),
                        "size": int(cluster.size),
                        "score": finite_or_nan(cluster.score),
                    }
                    for cluster in sorted(result.clusters, key=cluster_order_key)
                    if cluster.flagged
                ],
            }
            for result in flagged_classes
        ],
        "n_skipped_classes": len(run.skipped_classes),
        "n_skipped_samples": len(run.skipped_samples),
    }


def _diff_view(diff: AuditDiff, names: list[str], paged: bool) -> dict[str, Any]:
    """The "Since the baseline" box: new, persisting and resolved flags, and per class the highest score in
    both runs (``names``: the class of each model output, for titles)."""
    from spray.diff import MATCH_OVERLAP

    def title(index: int) -> str:
        return class_title(index, names[index] if 0 <= index < len(names) else str(index))

    def flag(change: FlagChange) -> dict[str, Any]:
        now, before = change.current, change.baseline
        return {"title": title(change.class_index), "href": _class_href(change.class_index, paged),
                "cluster": now.cluster if now else None, "size": len(now.members) if now else None,
                "score": now.score if now else None,
                "cluster_href": _class_href(change.class_index, paged,
                                            f"class-{change.class_index}-cluster-{now.cluster}") if now else "",
                "baseline_cluster": before.cluster if before else None,
                "baseline_size": len(before.members) if before else None,
                "baseline_score": before.score if before else None, "overlap": change.overlap}

    scores = [{"title": title(index), "baseline": before, "current": now,
               "change": diff.score_change.get(index, math.nan)}
              for index, (before, now) in sorted(diff.max_scores.items())]
    return {"baseline": diff.baseline, "match_overlap": MATCH_OVERLAP,
            "new": [flag(c) for c in diff.new], "persisting": [flag(c) for c in diff.persisting],
            "resolved": [flag(c) for c in diff.resolved], "scores": scores,
            "only_now": [title(i) for i in diff.only_now], "only_before": [title(i) for i in diff.only_before]}


class _ConfigDumper(yaml.SafeDumper):
    """YAML as a person writes a config: short lists of plain values inline (``size: [32, 32]``)."""


def _represent_list(dumper: yaml.SafeDumper, items: list) -> yaml.Node:
    inline = len(items) <= 12 and all(isinstance(item, (int, float, bool, str)) for item in items)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", items, flow_style=inline)


_ConfigDumper.add_representer(list, _represent_list)


def config_yaml(config: dict[str, Any]) -> str:
    """The validated config as YAML, keys in their original order."""
    return yaml.dump(
        to_jsonable(config), Dumper=_ConfigDumper, sort_keys=False, allow_unicode=True, width=100
    )


def _run_view(run: RunInfo) -> dict[str, Any]:
    stages = [
        {
            "name": str(stage),
            "computed": to_jsonable(counts.get("computed", 0)),
            "cached": to_jsonable(counts.get("cached", 0)),
        }
        for stage, counts in run.stages.items()
    ]
    skipped = [(str(sample_id), str(reason)) for sample_id, reason in run.skipped_samples]
    return {
        "config_path": str(run.config_path),
        "config_yaml": config_yaml(run.config),
        "model": str(run.model),
        "data": str(run.data),
        "versions": sorted((str(k), str(v)) for k, v in run.versions.items()),
        "started": str(run.started),
        "started_short": format_started(run.started),
        "duration": format_duration(run.duration_s),
        "device": str(run.device),
        "stages": stages,
        "skipped_classes": [
            {"index": int(s.class_index), "name": str(s.class_name), "reason": str(s.reason)}
            for s in run.skipped_classes
        ],
        "skipped_samples": skipped[:MAX_SKIPPED_SAMPLES_SHOWN],
        "n_skipped_samples": len(skipped),
        "label_mapping": list(enumerate(str(name) for name in run.label_names)),
        "label_source": _label_source_text(run.label_source),
        "score_text": _score_text(run.config),
        "conservation_text": explain.CONSERVATION + " " + _conservation_range(run.config),
    }


def _label_source_text(source: str) -> str:
    from spray.checks import LABEL_SOURCES  # imports torch: only when a report is drawn

    return LABEL_SOURCES.get(source, source)


def _conservation_range(config: dict[str, Any]) -> str:
    attribution = (config.get("attribution") or {}) if isinstance(config, dict) else {}
    return explain.conservation_range(str(attribution.get("method", "lrp")),
                                      str(attribution.get("composite", "epsilon_plus_flat")),
                                      bool(attribution.get("rules")))


def _score_text(config: dict[str, Any]) -> str:
    threshold = (config.get("flagging") or {}).get("threshold", 1.0) if isinstance(config, dict) else 1.0
    return explain.SCORE.format(consistency=format_number(CONSISTENCY), necessity=format_number(NECESSITY),
                                sufficiency=format_number(SUFFICIENCY), decision=format_number(DECISION),
                                threshold=format_number(threshold))


def _environment() -> Environment:
    environment = Environment(
        loader=FileSystemLoader(str(TEMPLATES)),
        autoescape=True,  # every template, whatever its file name: data strings are always escaped
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["num"] = format_number
    environment.filters["pct"] = lambda v: "—" if not math.isfinite(finite_or_nan(v)) else f"{100 * v:.0f} %"
    return environment


def render_html(classes: list[ClassResult], run: RunInfo) -> str:
    """The report as one page of self-contained HTML (every class's section on it)."""
    return dict(iter_pages(classes, run, paged=False))["index.html"]


def is_paged(classes: list[ClassResult]) -> bool:
    """Whether the report gives each class a page of its own (more than MAX_CLASSES_ON_ONE_PAGE classes)."""
    return len(classes) > MAX_CLASSES_ON_ONE_PAGE


def ranked(classes: list[ClassResult]) -> list[ClassResult]:
    """The classes in the report's order: flagged first, then by evidence (rank 1 is the first)."""
    return sorted(classes, key=class_order_key)


def drawing_failed(result: ClassResult, error: BaseException) -> RunError:
    """The error for a class whose part of the report could not be drawn: it names the class."""
    return RunError(f"the report of class {class_title(result.class_index, result.class_name)} could not be "
                    f"drawn: {type(error).__name__}: {error}")


@dataclass(frozen=True)
class PageContext:
    """What every class page shows besides its class, made once per report (and sent once to each worker
    process that draws pages): the number of ranked classes, the run's metadata and the colour scale."""

    n_classes: int
    run: dict[str, Any]
    colorbar: str
    spray_version: str

    @classmethod
    def of(cls, classes: list[ClassResult], run: RunInfo) -> PageContext:
        from spray import __version__

        return cls(len(classes), _run_view(run), images.colorbar_tile(), __version__)


class ClassPageRenderer:
    """Draws the self-contained page ``classes/<index>.html`` of one class (the template is compiled once)."""

    def __init__(self, context: PageContext) -> None:
        self.context = context
        self._template = _environment().get_template("class_page.html.j2")

    def __call__(self, result: ClassResult, rank: int) -> str:
        context = self.context
        return self._template.render(
            c=_class_view(result, rank), n_classes=context.n_classes, run=context.run,
            colorbar=context.colorbar, summary_href="../index.html#summary", spray_version=context.spray_version)


def index_html(classes: list[ClassResult], run: RunInfo, paged: bool | None = None,
               cross_class: CrossClassResult | None = None, context: PageContext | None = None,
               diff: AuditDiff | None = None, timeline: Timeline | None = None) -> str:
    """index.html: with ``paged`` (default: ``is_paged(classes)``) the verdict, the ranked summary table
    linking to the class pages, the skipped items and the run; otherwise every class's section as well.
    With ``diff``, a box under the verdict says what changed since the baseline audit; with ``timeline``
    (a series of checkpoints, ``classes`` the last one's), a section follows each class across them.

    Raises RunError naming the class whose section cannot be drawn.
    """
    paged = is_paged(classes) if paged is None else paged
    context = context or PageContext.of(classes, run)
    order = ranked(classes)
    if paged:
        rows = [_summary_row(result, rank, paged=True) for rank, result in enumerate(order, start=1)]
    else:
        rows = []
        for rank, result in enumerate(order, start=1):
            try:
                rows.append(_class_view(result, rank))
            except Exception as error:
                raise drawing_failed(result, error) from error
    return _environment().get_template("report.html.j2").render(
        classes=rows, pages=paged, verdict=_verdict(classes, run, paged), run=context.run,
        colorbar=context.colorbar, summary_href="#summary", spray_version=context.spray_version,
        cross=_cross_class_view(cross_class, paged) if cross_class is not None else None,
        diff=_diff_view(diff, list(run.label_names), paged) if diff is not None else None,
        timeline=timeline_view(timeline, class_title, lambda index: _class_href(index, paged))
        if timeline is not None else None)


def iter_pages(classes: list[ClassResult], run: RunInfo, paged: bool | None = None,
               cross_class: CrossClassResult | None = None) -> Iterator[tuple[str, str]]:
    """The report's pages as ``(path relative to the output folder, html)``, index.html last, drawn in this
    process one at a time (``spray.report.write_report`` can draw the class pages in worker processes).

    With ``paged`` (default: ``is_paged(classes)``) every class gets a self-contained ``classes/<index>.html``
    that index.html's summary table and verdict link to, each linking back; index.html then holds the
    verdict, the ranked summary table, the skipped items and the run. Pages are made one at a time, so a
    many-class report holds one class's figures in memory, not all of them. Raises RunError naming the class
    whose page cannot be drawn.
    """
    paged = is_paged(classes) if paged is None else paged
    context = PageContext.of(classes, run)
    if paged:
        render = ClassPageRenderer(context)
        for rank, result in enumerate(ranked(classes), start=1):
            try:
                page = render(result, rank)
            except Exception as error:
                raise drawing_failed(result, error) from error
            yield class_page(result.class_index), page
    yield "index.html", index_html(classes, run, paged, cross_class, context)
