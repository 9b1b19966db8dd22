"""What the report's numbers mean, in one place: the evidence vocabulary, the score, conservation.

``EVIDENCE`` maps every key ``spray.flag`` writes into a cluster's evidence to a human name, a one-sentence
meaning and a unit; the report shows these instead of raw field names. A key missing here is shown under its
raw name (and ``tests/test_report_explained.py`` fails), so a new line of evidence is added here together
with the code that measures it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Term:
    """How the report names one evidence key."""

    name: str  # short human name, shown in place of the key
    meaning: str  # one sentence: what was measured and how to read it
    unit: str = ""  # "" for pure numbers and ratios


# Units of spray.flag's measurements
MEDIAN_LOGITS = "× median logit"  # logit changes divided by the class's median logit
SHARE = "share"  # a fraction in [0, 1]

EVIDENCE: dict[str, Term] = {
    "consistency": Term(
        "Consistency (same pattern)",
        "How alike the members' pixels are inside the region, compared with the rest of the class: "
        "1 - spread of the members / spread of the rest; a drawn watermark or tag is near 1, natural object "
        "parts vary.",
    ),
    "consistency_colour": Term(
        "Consistency in colour",
        "1 - spread of the members' pattern pixels / spread of the rest's, in colour: a frame or a logo drawn in "
        "one colour is near 1.",
    ),
    "consistency_shape": Term(
        "Consistency in shape",
        "The same with 1 - normalised cross-correlation of grey levels as the spread: a shape drawn in any colour "
        "or brightness is near 1; consistency is the larger of the two.",
    ),
    "necessity": Term(
        "Necessity (model needs it)",
        "How much more masking the region lowers the members' logit than the rest's: masking drop of the "
        "members minus masking drop of the rest.",
        MEDIAN_LOGITS,
    ),
    "sufficiency": Term(
        "Sufficiency (carries the class alone)",
        "How much more pasting the members' region into images of other classes raises this class's logit "
        "than pasting the same region from the rest of the class.",
        MEDIAN_LOGITS,
    ),
    "decision": Term(
        "Decision (turns images into the class)",
        "How far beyond chance pasting the members' region turns more images of other classes into this class "
        "than pasting the control region does (McNemar's statistic over the images turned by one and not the "
        "other): a shortcut changes decisions, a piece of the scene that only raises the logit a little does not.",
        "standard errors"),
    "region_area": Term("Region size", "Share of the image covered by the cluster's distinctive region.", SHARE),
    "relevance_in_region": Term(
        "Relevance in the region (members)", "Share of the members' |relevance| that falls inside the region.",
        SHARE),
    "relevance_in_region_rest": Term(
        "Relevance in the region (rest)", "Share of the rest of the class's |relevance| inside the same region.",
        SHARE),
    "masking_drop": Term(
        "Masking drop (members)", "Mean fall of the members' logit when the region is filled with the mean image "
        "(or blurred).", MEDIAN_LOGITS),
    "masking_drop_rest": Term(
        "Masking drop (rest)", "The same fall for the rest of the class: the control necessity subtracts.",
        MEDIAN_LOGITS),
    "transplant_gain": Term(
        "Transplant gain", "Mean rise of this class's logit when the members' region is pasted into images of "
        "other classes.", MEDIAN_LOGITS),
    "transplant_gain_control": Term(
        "Transplant gain (control)", "The same rise when the region is pasted from the rest of the class: the "
        "control sufficiency subtracts.", MEDIAN_LOGITS),
    "transplant_flip_rate": Term(
        "Images turned into this class", "Share of the other classes' images that the model predicts as this "
        "class after the members' region is pasted in.", SHARE),
    "transplant_flip_rate_control": Term(
        "Images turned (control)", "The same share when the region is pasted from the rest of the class.", SHARE),
    "weakest_evidence": Term(
        "Weakest evidence", "The line of evidence with the lowest measured / threshold ratio: it sets the score."),
    "not_scored": Term("Not scored", "Why a line of evidence could not be measured."),
    "joined_by_pattern": Term(
        "Joined by pattern", "Samples of other clusters whose pixels in the region match this cluster's pattern, "
        "moved into it after flagging.", "samples"),
    "joined_by_effect": Term(
        "Joined by effect", "Samples whose most relevant window, pasted into other classes' images, raises this "
        "class about as much as the members' does, and that look more like their pattern than other classes' "
        "images do (a copy at another size or in another colour), moved into it after flagging.", "samples"),
    "spectral_size": Term("Size before joining", "Members the spectral clustering gave this cluster.", "samples"),
}

SCORE = (
    "Score = the weakest of consistency / {consistency}, necessity / {necessity}, sufficiency / "
    "{sufficiency} and decision / {decision}; a cluster is flagged when its score reaches {threshold} (flagging.threshold), i.e. when "
    "every line of evidence passes its threshold."
)

CONSERVATION = (
    "Conservation is a sample's total input relevance divided by the logit it explains; 1 means the whole logit "
    "reached the pixels. Biases (also those of BatchNorm folded into a convolution) keep their share and the "
    "epsilon rule absorbs a little in every layer, which lowers it; rules that weight positive and negative "
    "contributions differently (alpha-beta on the first layer) can raise it above 1. What matters is that a "
    "class's values are alike: outliers mark heatmaps that do not add up to their logit and should be read "
    "with care."
)

# Per-image conservation measured by benchmarks/conservation_ranges.py on the demo digits CNN with and without
# BatchNorm, 30 images per class: the lowest 5th and the highest 95th percentile of the two models.
MEASURED_CONSERVATION: dict[str, tuple[float, float]] = {
    "epsilon": (0.45, 1.53),
    "epsilon_plus": (0.62, 1.00),
    "epsilon_plus_flat": (0.70, 1.01),
    "epsilon_gamma_box": (0.41, 1.04),
    "epsilon_alpha2_beta1": (0.63, 2.47),
    "epsilon_alpha2_beta1_flat": (0.45, 1.07),
}


def conservation_range(method: str, composite: str, custom_rules: bool) -> str:
    """One sentence on the values to expect for this run's attribution, from MEASURED_CONSERVATION."""
    if method != "lrp":
        return (f"Method {method}: only gradient x input and integrated gradients are expected to sum to about "
                "the logit; for the other methods the ratio has no target value.")
    if custom_rules or composite not in MEASURED_CONSERVATION:
        return f"Composite {composite} with user rules: no measured range; compare the classes with each other."
    low, high = MEASURED_CONSERVATION[composite]
    return (f"For this run's composite ({composite}), 90 % of the images of the demo digits CNNs (with and without "
            f"BatchNorm) fell between {low:.2f} and {high:.2f} (benchmarks/conservation_ranges.py); values well "
            "outside that band deserve a look.")


def term(key: str) -> Term:
    """The Term of an evidence key; a dotted key (``thresholds.consistency``) or an unknown key is named
    after itself, with no meaning."""
    if key in EVIDENCE:
        return EVIDENCE[key]
    if key.startswith("thresholds."):
        base = EVIDENCE.get(key.split(".", 1)[1])
        return Term(f"Threshold of {base.name if base else key.split('.', 1)[1]}", "The minimum a flag needs.")
    return Term(key, "")

NEON_CLUSTER = (
    "What sets this cluster apart from cluster {competitor}, its nearest: NEON (neuralized k-means explained by "
    "LRP) splits each member's membership logit, how much nearer its heatmap lies to this cluster's mean than to "
    "the others', over the heatmap's cells; red cells make the members this cluster, blue ones pull them towards "
    "cluster {competitor}. Mean of the members' maps; mean logit {logit}."
)
NEON_PRESENT = (
    "What sets this cluster apart from cluster {competitor}, its nearest: NEON (neuralized k-means explained by "
    "LRP) splits each member's membership logit, how much nearer its heatmap lies to this cluster's mean than to "
    "the others', over the heatmap's cells. Shown is what the members have: red cells hold more relevance in "
    "their heatmaps than the boundary to the competitor and make them this cluster, blue ones pull them towards "
    "cluster {competitor}. {lacks} of the positive relevance says instead what they lack (relevance the "
    "competitor puts elsewhere; heatmaps are normalised, so relevance drawn to one place is missing in others) "
    "and is not shown. Mean of the members' maps; mean logit {logit}."
)
NEON_PROTOTYPE = "Third tile: the prototype's own NEON membership map, what its heatmap has that makes it a member."
NEON_LENS = (
    "What sets this cluster apart from cluster {competitor}, its nearest, at layer {layer}: the clusters were formed "
    "on that layer's activations (analysis.space features); NEON splits each member's membership logit, how much "
    "nearer its activations lie to this cluster's mean than to the others', over the layer's units, and LRP carries "
    "it down to the input; red pixels make the members this cluster, blue ones pull them towards cluster "
    "{competitor}. Mean of the members' maps; mean logit {logit}."
)
NEON_LENS_PROTOTYPE = "Third tile: the prototype's own membership map, carried from the layer to its pixels."
NEON_SINGLE = "One cluster only: there is no other cluster to set it apart from."

FAITHFULNESS = (
    "Region perturbation (Samek et al. 2017) on {n} sampled images: {patch} × {patch}-pixel patches are replaced "
    "({perturbation}) most relevant first (MoRF) and, as a control, in a random order; AOPC is the mean fall of the "
    "class's logit over the steps. Faithful heatmaps make the logit fall faster than the random order: "
    "gain = AOPC(MoRF) − AOPC(random) > 0."
)
UNFAITHFUL = "Heatmaps not better than random for this model: do not trust its clusters."
PERTURBATIONS = {"uniform": "uniform noise", "blur": "a Gaussian blur", "constant": "black"}


def neon_text(competitor: int, logit: str, layer: str | None = None) -> str:
    """The one-line explanation of a cluster's NEON map (``layer``: the deep-feature lens's layer, if used)."""
    if layer is not None:
        return NEON_LENS.format(competitor=competitor, logit=logit, layer=repr(layer))
    return NEON_CLUSTER.format(competitor=competitor, logit=logit)


def neon_present_text(competitor: int, logit: str, present_share: float | None) -> str:
    """The one-line explanation of a cluster's NEON map of what its members have."""
    lacks = "None" if present_share is None or math.isnan(present_share) else f"{1 - present_share:.0%}"
    return NEON_PRESENT.format(competitor=competitor, logit=logit, lacks=lacks)


def faithfulness_text(n: int, patch: int, perturbation: str) -> str:
    """The one-line explanation of a class's faithfulness numbers."""
    return FAITHFULNESS.format(n=n, patch=patch, perturbation=PERTURBATIONS.get(perturbation, perturbation))
