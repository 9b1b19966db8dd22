"""The report's plots (eigenvalue spectrum, embeddings, LRP conservation, region perturbation) as inline PNG data URIs.

Figures are built with ``matplotlib.figure.Figure`` and the Agg canvas directly, never through pyplot:
no global backend is switched and no figure is left open, whatever else runs in the process.
"""

from __future__ import annotations

import base64
import functools
import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator
from PIL import Image

# Rendered at 1.5x the size they are shown at (96 CSS pixels per inch), sharp on high-density screens.
DPI = 144
# zlib level of the figures' PNGs: level 9 costs several times 8's time on these flat plots for 2 % fewer
# bytes and the same pixels (benchmarks/report_scale.py profiles a page; docs/benchmarks.md, "Constants").
PNG_COMPRESS_LEVEL = 8
CSS_DPI = 96
EMBEDDING_PANEL_IN = (3.6, 3.2)  # width and height of one embedding panel, in inches
FLAG_RED = "#c62828"
INK = "#1f2933"
MUTED = "#7b8794"
GRID = "#e4e7eb"
# A qualitative palette without red, so that red keeps meaning "flagged" everywhere in the report.
CLUSTER_COLOURS = (
    "#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#76b7b2", "#edc948", "#9c755f", "#bab0ac",
    "#2f4b7c", "#a0cbe8", "#8cd17d", "#d4a6c8", "#b6992d", "#499894", "#79706e", "#ffbe7d",
)

_STYLE = {
    "font.size": 8.5,
    "axes.edgecolor": "#9aa5b1",
    "axes.labelcolor": INK,
    "axes.titlesize": 9,
    "axes.titleweight": "bold",
    "axes.titlecolor": INK,
    "xtick.color": "#52606d",
    "ytick.color": "#52606d",
    "axes.spines.top": False,
    "axes.spines.right": False,
}


# Shades of red for flagged clusters, in order of their score: a flagged group is red in every figure.
FLAGGED_COLOURS = ("#d32f2f", "#8e0000", "#ef6c6c", "#b71c1c", "#ff8a80")


def cluster_colours(cluster_ids: Sequence[int], flagged_ids: Sequence[int]) -> dict[int, str]:
    """The colour of each cluster of a class, the same in its figures and in its cluster cards.

    Flagged clusters get shades of red (in the order given), the others a colour of a red-free palette by id,
    so that red means "flagged" wherever it appears and a clean cluster keeps its colour from run to run.
    """
    flagged = [int(c) for c in flagged_ids]
    colours = {cluster: FLAGGED_COLOURS[i % len(FLAGGED_COLOURS)] for i, cluster in enumerate(flagged)}
    for cluster in cluster_ids:
        colours.setdefault(int(cluster), CLUSTER_COLOURS[int(cluster) % len(CLUSTER_COLOURS)])
    return colours


def _new_figure(width_in: float, height_in: float) -> Figure:
    figure = Figure(figsize=(width_in, height_in), dpi=DPI, facecolor="white")
    FigureCanvasAgg(figure)
    return figure


def _to_data_uri(figure: Figure) -> str:
    """The figure as a 256-colour palette PNG.

    Plots are flat colours, so a palette PNG is a third of the bytes of matplotlib's RGBA PNG with no
    visible difference, which matters in a report of hundreds of figures. The canvas is drawn into memory
    and encoded once, by Pillow, instead of letting savefig encode a PNG that would be decoded again.
    """
    canvas = figure.canvas
    if not isinstance(canvas, FigureCanvasAgg):  # _new_figure attaches one; anything else cannot be read back
        raise TypeError(f"expected a figure from _new_figure (an Agg canvas), got {type(canvas).__name__}")
    canvas.draw()
    rgb = np.asarray(canvas.buffer_rgba())[..., :3]
    palette = Image.fromarray(np.ascontiguousarray(rgb)).quantize(
        colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE
    )
    out = io.BytesIO()
    palette.save(out, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode("ascii")


def _say_empty(axes, message: str) -> None:
    """An axes with nothing to draw says why, instead of showing empty ticks."""
    axes.text(0.5, 0.5, message, ha="center", va="center", color=MUTED, transform=axes.transAxes)
    axes.set_xticks([])
    axes.set_yticks([])


def _style_axes(axes) -> None:
    axes.tick_params(labelsize=7.5, colors="#52606d")
    axes.grid(True, color=GRID, linewidth=0.6)
    axes.set_axisbelow(True)


_F = TypeVar("_F", bound=Callable[..., str])


def _with_style(function: _F) -> _F:
    """Run a figure builder under the report's matplotlib style, leaving the global rcParams untouched."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with matplotlib.rc_context(_STYLE):
            return function(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


@_with_style
def spectrum_figure(eigenvalues: np.ndarray, n_clusters: int) -> str:
    """Ascending eigenvalues of the normalised Laplacian, the eigengap that chose ``n_clusters`` marked.

    The gap is the jump from eigenvalue k to k + 1 (1-based), drawn as a red double arrow.
    """
    values = np.asarray(eigenvalues, dtype=np.float64).ravel()
    figure = _new_figure(4.4, 2.7)
    axes = figure.add_subplot()
    _style_axes(axes)
    if values.size == 0:
        _say_empty(axes, "no eigenvalues recorded")
    else:
        index = np.arange(1, values.size + 1)
        axes.plot(index, values, color="#9aa5b1", linewidth=1.0, zorder=2)
        axes.scatter(index, values, s=14, color="#3e4c59", zorder=3, linewidths=0)
        k = int(n_clusters)
        if 1 <= k < values.size and np.isfinite(values[k - 1]) and np.isfinite(values[k]):
            axes.scatter(index[:k], values[:k], s=22, color="#4e79a7", zorder=4, linewidths=0,
                         label=f"first k = {k}")
            axes.axvline(k + 0.5, color=FLAG_RED, linestyle="--", linewidth=0.9, zorder=1)
            low, high = values[k - 1], values[k]
            axes.annotate("", xy=(k + 0.5, high), xytext=(k + 0.5, low),
                          arrowprops={"arrowstyle": "<->", "color": FLAG_RED, "linewidth": 1.2,
                                      "shrinkA": 0, "shrinkB": 0}, zorder=5)
            # The label goes to the top left, which ascending eigenvalues leave empty.
            axes.text(0.04, 0.95, f"eigengap λ{k + 1} − λ{k} = {high - low:.3g}  →  k = {k}",
                      transform=axes.transAxes, color=FLAG_RED, fontsize=7.5, va="top", ha="left",
                      bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.85, "pad": 1.5})
        elif k >= 1:
            axes.text(0.98, 0.05, f"k = {k}", color=FLAG_RED, ha="right", transform=axes.transAxes)
        axes.set_xlim(0.3, values.size + 0.7)
        if values.size <= 40:
            step = max(1, math.ceil(values.size / 16))
            axes.set_xticks(index[::step])
    axes.set_xlabel("index i")
    axes.set_ylabel(r"eigenvalue $\lambda_i$")
    axes.set_title("Laplacian spectrum", loc="left")
    figure.tight_layout(pad=0.5)
    return _to_data_uri(figure)


def embedding_display_width(panels: int) -> int:
    """The width in CSS pixels at which an embedding figure of ``panels`` panels is shown."""
    return round(EMBEDDING_PANEL_IN[0] * max(1, panels) * CSS_DPI)


@_with_style
def embedding_figure(
    embeddings: dict[str, np.ndarray],
    cluster_labels: np.ndarray,
    flagged_ids: Sequence[int],
    titles: dict[str, str] | None = None,
) -> str:
    """One scatter panel per embedding, samples coloured by cluster, flagged clusters in red.

    Flagged clusters are drawn last (on top), larger and opaque, the others slightly transparent, so that a
    flagged group stands out even where the groups overlap.
    """
    names = list(embeddings)
    titles = titles or {}
    labels = np.asarray(cluster_labels, dtype=np.int64)
    flagged = [int(cluster) for cluster in flagged_ids]
    # Flagged clusters are drawn last, so that they stay visible where groups overlap.
    clusters = sorted(set(labels.tolist()), key=lambda c: (c in flagged, c))
    colours = cluster_colours(clusters, flagged)
    size = float(np.clip(2400.0 / max(1, labels.size), 3.0, 22.0))
    panels = max(1, len(names))
    figure = _new_figure(EMBEDDING_PANEL_IN[0] * panels, EMBEDDING_PANEL_IN[1])
    for position, name in enumerate(names, start=1):
        axes = figure.add_subplot(1, panels, position)
        coords = np.asarray(embeddings[name], dtype=np.float64)
        for cluster in clusters:
            member = labels == cluster
            is_flagged = cluster in flagged
            axes.scatter(
                coords[member, 0], coords[member, 1], s=size * (1.4 if is_flagged else 1.0),
                color=colours[cluster], alpha=0.95 if is_flagged else 0.65, linewidths=0,
                zorder=3 if is_flagged else 2, rasterized=True,
            )
        _frame_embedding_axes(axes, titles.get(name, name))
    _cluster_legend(figure, clusters, flagged, colours, panels)
    return _to_data_uri(figure)


def _frame_embedding_axes(axes: Axes, title: str) -> None:
    """Title, no ticks, a light frame on all sides (the axes carry no scale) and equal aspect."""
    axes.set_title(title, loc="left")
    axes.set_xticks([])
    axes.set_yticks([])
    for spine in axes.spines.values():
        spine.set_visible(True)
        spine.set_color(GRID)
    axes.set_aspect("equal", adjustable="datalim")


def _cluster_legend(figure: Figure, clusters: list[int], flagged: list[int], colours: dict[int, str],
                    panels: int) -> None:
    """One legend below the panels, flagged clusters first and in red, read row by row; then the layout."""
    handles = [
        Line2D([], [], marker="o", linestyle="", markersize=6, markerfacecolor=colours[cluster],
               markeredgewidth=0, label=f"cluster {cluster}" + (" (flagged)" if cluster in flagged else ""))
        for cluster in sorted(clusters, key=lambda c: (c not in flagged, flagged.index(c) if c in flagged else c))
    ]
    if not handles:
        figure.tight_layout(pad=0.5)
        return
    columns = min(len(handles), 4 * panels)
    rows = math.ceil(len(handles) / columns)
    # matplotlib fills a legend column by column; reorder so that it reads row by row.
    ordered = [handles[r * columns + c] for c in range(columns) for r in range(rows) if r * columns + c < len(handles)]
    legend = figure.legend(handles=ordered, loc="lower center", ncol=columns, frameon=False,
                           fontsize=7.5, handletextpad=0.2, columnspacing=1.0)
    for text, handle in zip(legend.get_texts(), ordered):
        if "(flagged)" in str(handle.get_label()):
            text.set_color(FLAG_RED)
    figure.tight_layout(pad=0.5, rect=(0, 0.055 * rows + 0.02, 1, 1))


@_with_style
def conservation_figure(conservation: np.ndarray) -> str:
    """Histogram of the per-sample LRP conservation ratio (sum of input relevance / explained logit).

    A faithful LRP pass gives values near 1 (exactly 1 with zero biases and LRP-0/epsilon); values far from
    1, or a wide range, mean that the heatmaps of this class should not be trusted.
    """
    values = np.asarray(conservation, dtype=np.float64).ravel()
    finite = values[np.isfinite(values)]
    figure = _new_figure(4.4, 2.7)
    axes = figure.add_subplot()
    _style_axes(axes)
    if finite.size == 0:
        _say_empty(axes, "conservation not recorded")
    else:
        low, high, median = float(finite.min()), float(finite.max()), float(np.median(finite))
        # A few broken samples (a logit near zero makes the ratio explode) must not squash the histogram of
        # all the others into one bar: show the 1st-99th percentile window and count what lies outside.
        view_low, view_high = (float(v) for v in np.percentile(finite, [1, 99]))
        if view_low <= 1.0 <= view_high or abs(1.0 - median) <= 2 * max(view_high - view_low, 1e-9):
            view_low, view_high = min(view_low, 1.0), max(view_high, 1.0)
        span = max(view_high - view_low, 1e-3 * max(1.0, abs(median)))
        view_low, view_high = view_low - 0.05 * span, view_high + 0.05 * span
        shown = finite[(finite >= view_low) & (finite <= view_high)]
        axes.axvspan(max(low, view_low), min(high, view_high), color="#e9eef5", zorder=0,
                     label=f"range {low:.4g} – {high:.4g}")
        axes.hist(shown, bins=np.linspace(view_low, view_high, 31).tolist(), color="#4e79a7", alpha=0.85, zorder=2)
        axes.set_xlim(view_low, view_high)
        axes.axvline(median, color=INK, linewidth=1.2, zorder=3, label=f"median {median:.4g}")
        if view_low <= 1.0 <= view_high:
            axes.axvline(1.0, color=MUTED, linestyle=":", linewidth=1.0, zorder=3, label="ideal 1")
        below, above = int((finite < view_low).sum()), int((finite > view_high).sum())
        if below or above:
            axes.set_title(f"outside the view: {below} below, {above} above", loc="right", fontsize=7,
                           fontweight="normal", color=FLAG_RED)
        axes.yaxis.set_major_locator(MaxNLocator(integer=True))  # counts of samples
        axes.set_ylim(top=axes.get_ylim()[1] * 1.35)  # headroom for the legend above the bars
        axes.legend(fontsize=7, loc="upper right", frameon=True, framealpha=0.9, edgecolor="none")
    axes.set_xlabel("Σ input relevance / logit")
    axes.set_ylabel("samples")
    axes.set_title("LRP conservation", loc="left")
    figure.tight_layout(pad=0.5)
    return _to_data_uri(figure)


@_with_style
def faithfulness_figure(morf: np.ndarray, random: np.ndarray) -> str:
    """The mean logit of the explained class ``(L + 1,)`` as patches are destroyed most relevant first (MoRF)
    and in a random order: a faithful heatmap's curve falls below the random one."""
    figure = _new_figure(4.4, 2.7)
    axes = figure.add_subplot()
    _style_axes(axes)
    morf, random = np.asarray(morf, dtype=np.float64), np.asarray(random, dtype=np.float64)
    if morf.size == 0:
        _say_empty(axes, "no sample measured")
    else:
        steps = np.arange(morf.size)
        axes.plot(steps, morf, color=FLAG_RED, linewidth=1.4, label="most relevant first")
        axes.plot(steps, random, color=MUTED, linewidth=1.2, linestyle="--", label="random order")
        axes.fill_between(steps, morf, random, color="#e9eef5", zorder=0)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.legend(fontsize=7, loc="upper right", frameon=True, framealpha=0.9, edgecolor="none")
    axes.set_xlabel("patches destroyed")
    axes.set_ylabel("mean logit")
    axes.set_title("Region perturbation", loc="left")
    figure.tight_layout(pad=0.5)
    return _to_data_uri(figure)


@_with_style
def timeline_figure(labels: Sequence[str], patterns: Sequence[TimelineSeries], max_scores: Sequence[float],
                    threshold: float) -> str:
    """A class across a series of checkpoints: each flagged pattern's Clever Hans score per checkpoint
    (filled markers where it is flagged, hollow where not; NaN where no cluster carries it), the class's
    highest cluster score (grey), the flagging ``threshold`` (dashed) and, on the right axis, the share of
    transplanted images each pattern turns into the class (thin dashes). ``labels``: one per checkpoint."""
    figure = _new_figure(4.8, 2.8)
    axes = figure.add_subplot()
    _style_axes(axes)
    steps = np.arange(len(labels))
    axes.plot(steps, np.asarray(max_scores, dtype=np.float64), color=MUTED, linewidth=1.0, linestyle=":",
              marker=".", markersize=4, label="highest cluster score")
    axes.axhline(threshold, color=INK, linestyle="--", linewidth=0.8, label=f"flagging threshold {threshold:g}")
    share = axes.twinx()
    for number, series in enumerate(patterns):
        colour = FLAGGED_COLOURS[number % len(FLAGGED_COLOURS)]
        values = np.asarray(series.scores, dtype=np.float64)
        axes.plot(steps, values, color=colour, linewidth=1.5, label=f"{series.name}: score")
        marks = np.asarray(series.flagged, dtype=bool)
        axes.scatter(steps[marks], values[marks], s=26, color=colour, zorder=4, linewidths=0)
        axes.scatter(steps[~marks], values[~marks], s=22, facecolors="white", edgecolors=colour, zorder=4,
                     linewidths=1.2)
        share.plot(steps, np.asarray(series.transplants_turned, dtype=np.float64), color=colour, linewidth=0.9,
                   linestyle=(0, (2, 2)), alpha=0.8, label=f"{series.name}: transplants turned (right)")
    _frame_timeline(axes, share, labels, [v for series in patterns for v in series.scores] + list(max_scores),
                    threshold, bool(patterns))
    figure.tight_layout(pad=0.5)
    return _to_data_uri(figure)


@dataclass(frozen=True)
class TimelineSeries:
    """One flagged pattern of a class across checkpoints, one value per checkpoint: its score, whether it is
    flagged, and the share of transplanted images its cluster turns into the class (NaN where unmeasured)."""

    name: str
    scores: Sequence[float]
    flagged: Sequence[bool]
    transplants_turned: Sequence[float]


def _frame_timeline(axes: Axes, share: Axes, labels: Sequence[str], scores: list[float], threshold: float,
                    with_share: bool) -> None:
    """Ticks, limits (room above for the legend), labels and legend of ``timeline_figure``."""
    steps = np.arange(len(labels))
    axes.set_xticks(steps)
    rotate = max((len(label) for label in labels), default=0) * len(labels) > 60
    axes.set_xticklabels(labels, rotation=35 if rotate else 0, ha="right" if rotate else "center", fontsize=7)
    shown = [v for v in scores + [0.0, threshold] if math.isfinite(v)]
    lowest, highest = min(shown), max(shown)
    axes.set_ylim(lowest - 0.05 * (highest - lowest), highest + 0.45 * (highest - lowest))
    axes.set_xlabel("checkpoint")
    axes.set_ylabel("Clever Hans score")
    axes.set_title("Score per checkpoint", loc="left")
    share.set_ylim(0, 1.45)  # the same headroom as the scores
    share.set_yticks([0, 0.5, 1])
    share.tick_params(labelsize=7, colors=MUTED)
    share.spines["right"].set_visible(with_share)
    share.set_ylabel("transplants turned" if with_share else "", color=MUTED, fontsize=7.5)
    if not with_share:
        share.set_yticks([])
    handles, names = axes.get_legend_handles_labels()
    more_handles, more_names = share.get_legend_handles_labels()
    share.legend(handles + more_handles, names + more_names, fontsize=6.5, loc="upper left", frameon=True,
                 framealpha=0.9, edgecolor="none", ncol=2)
