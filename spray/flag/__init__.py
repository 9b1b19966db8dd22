"""Stage 4a: measure Clever Hans evidence for every cluster and flag the clusters that pass.

The eigengap finds several clusters in every class, clean or not, so a cluster is flagged only on evidence
that a reviewer can check in the report. For each cluster we locate its *distinctive region*: the smallest
set of pixels that holds half of the positive difference between the cluster's mean relevance map and the
rest of the class's (capped at ``flagging.region_fraction`` of the image), grown at image resolution over
the touching pixels at which the members agree (``plan.grow_region``: a thin frame found in part by the
downsized heatmaps is measured whole). Four measurements on that region:

consistency
    Do the members show the *same pattern* there? ``1 - spread_members / spread_rest`` (medians over the
    samples), where a spread is the mean squared distance of a sample's region pixels to the members' mean
    region pattern; on colour images also the same with ``1 - NCC`` of grey levels (a shape drawn in any
    colour), the larger counting. A watermark, tag or frame is drawn the same way in every image
    (consistency near 1); the strokes of a handwriting style, or any natural part of an object, vary from
    image to image (measured on clean digit models: at most 0.81).
necessity
    Does the model *need* it for the members? The region is filled with the dataset's mean image (or blurred),
    and the drop of the audited logit, in units of the class's median logit, is averaged over the members
    minus the same average over the rest of the class.
sufficiency
    Does it *carry* the class by itself? The members' region is pasted into images of other classes; the
    mean rise of the audited logit (same units) minus the rise when the region is pasted from the rest of the
    class instead (a control for "any piece of this class adds some evidence").
decision
    Does it *change the model's decisions*? Of those images, how many more turn into the audited class than
    with the control's region, beyond chance: McNemar's statistic over the images turned by one and not the
    other (``evidence.decision_statistic``), in standard errors. A part of a scene that the crops of one photo share (a patch of sky) can
    raise the logit a little when pasted, as a piece of any object would; a shortcut turns images.

A cluster is flagged when all four pass their documented thresholds (``CONSISTENCY``, ``NECESSITY``,
``SUFFICIENCY``, ``DECISION``). Its score is the weakest of the four ratios measured / threshold, so ``score >= 1``
exactly when the cluster is flagged, and the report shows which line of evidence is the weakest.

Patterns that move. A shortcut that sits at a different place in each image spreads over several clusters
or none, so the class is also searched for patterns found *anywhere* (``spray.flag.patterns``): each
sample's most relevant window, the windows whose content recurs in the class first, matched in every image
by normalised cross-correlation over positions and scales. A pattern's carriers are measured like a
cluster, each at its own window: consistency of their windows' pixels (in colour, or in grey-level shape, so
that a logo drawn in other colours stays one pattern), necessity by masking each carrier's own window,
sufficiency by pasting carriers' windows at random places into other classes' images against windows of the
rest of the class pasted at the same places. Each pattern's carriers are also measured as a group at one
place, with their own grown distinctive region: the search sees a frame as one of its corners, its carriers'
region is the whole frame. A region that would grow over more than half of the image is not grown
(``plan.MAX_GROWN_AREA``: members agreeing almost everywhere are crops of one scene).

One shortcut, one finding. Flagged groups (clusters and patterns) that share their carriers or show one
pattern are merged into one finding, listed under one flagged cluster with the spectral clusters its members
came from (``spray.flag.findings``); samples of other clusters that carry a flagged cluster's region pattern
join it. So do the samples whose most relevant window acts on the model as the finding's members' do
(``spray.flag.effect``): pasted into other classes' images, it raises the class as much, though its pixels
differ (a logo at another size, in another colour).

The thresholds were set from measurements on planted-artifact digit models (``benchmarks/planted_artifacts.py``:
watermark, tag, stripe, frame; 15-35 % of one class; any corner; with and without BatchNorm): planted clusters
measured consistency 0.96-0.99, while no clean cluster, of planted or of clean models, exceeded 0.81.
Necessity and sufficiency separate less (clean clusters reach 0.75 and 0.5: the model needs its strokes,
and pasting strokes adds some evidence), so they guard against a shared pattern the model does not use.

The stage in modules: ``plan`` (regions, masks, donors), ``passes`` (the two passes over the class's
images), ``patterns`` (the search for patterns found anywhere), ``evidence`` (the typed ``Evidence`` and ``weigh``,
the pure function that gives the verdict), ``score`` (``score_clusters``), ``findings`` (``form_findings``,
``join_by_effect``), ``effect`` (``measure_effects``) and ``task`` (the cached task and its entry). ``evidence``, ``plan`` and ``findings`` import no torch; the names of the other modules load on first use, so that the
report and ``spray.results`` read ``Evidence`` without loading torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from spray.flag.evidence import (
    CONSISTENCY,
    DECISION,
    NECESSITY,
    SUFFICIENCY,
    Evidence,
    Line,
    Measured,
    Transplant,
    decision_statistic,
    weakest_evidence,
    weigh,
)
from spray.flag.findings import (
    OVERLAP,
    ClusterEvidence,
    Effects,
    Finding,
    Joined,
    form_findings,
    join_by_effect,
)
from spray.flag.plan import (
    REGION_MASS,
    ClusterPlan,
    Windows,
    distinctive_region,
    plan_clusters,
    to_image_mask,
)

if TYPE_CHECKING:
    from spray.flag.effect import measure_effects, transplant_effects
    from spray.flag.passes import LogitScorer, PixelBatches, array_batches
    from spray.flag.score import measure, score_clusters
    from spray.flag.task import STORE_VERSION, Flagged, FlagTask, flag_task, read_flagged, store_key

_LAZY = {
    "LogitScorer": "passes", "PixelBatches": "passes", "array_batches": "passes",
    "measure": "score", "score_clusters": "score", "transplant_effects": "effect", "measure_effects": "effect",
    "STORE_VERSION": "task", "FlagTask": "task", "Flagged": "task", "flag_task": "task", "read_flagged": "task",
    "store_key": "task",
}

__all__ = [
    "CONSISTENCY",
    "DECISION",
    "NECESSITY",
    "OVERLAP",
    "REGION_MASS",
    "STORE_VERSION",
    "SUFFICIENCY",
    "ClusterEvidence",
    "ClusterPlan",
    "Effects",
    "Evidence",
    "Finding",
    "FlagTask",
    "Flagged",
    "Joined",
    "Line",
    "LogitScorer",
    "Measured",
    "PixelBatches",
    "Transplant",
    "Windows",
    "array_batches",
    "decision_statistic",
    "distinctive_region",
    "flag_task",
    "form_findings",
    "join_by_effect",
    "measure",
    "measure_effects",
    "plan_clusters",
    "read_flagged",
    "score_clusters",
    "store_key",
    "to_image_mask",
    "transplant_effects",
    "weakest_evidence",
    "weigh",
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'spray.flag' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"spray.flag.{_LAZY[name]}"), name)
    globals()[name] = value
    return value
