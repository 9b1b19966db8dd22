"""One shortcut, one finding: flagged groups that show one pattern become one finding.

A shortcut can come out of several kinds of flagged group at once: spectral clusters, one per place a logo
sits, each flagged on its own region; patterns found anywhere (``spray.flag.patterns``), one per size band
of a logo, flagged on their carriers wherever they have it; and a pattern's carriers measured at one place
(a frame found by one of its corners). ``form_findings`` links two flagged groups when their carriers
overlap by at least ``OVERLAP`` of the smaller group, when their prototypes (their members' mean pattern)
match with normalised cross-correlation of grey levels >= ``SAME_PATTERN`` over shifts, or when each
matches the other's carriers with median NCC >= ``CROSS_MATCH``; each chain of links is one finding. Where
several of its groups measured the same place, a sample joins when the strongest of them or two of them
carry it (``_voted``). A finding lists its members under one flagged cluster: the strongest spectral
cluster in it, or a new cluster id when it holds no spectral cluster. This module imports no torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from spray.flag.evidence import Evidence, Judged, not_scored
from spray.flag.plan import Windows

OVERLAP = 0.5  # flagged groups sharing this share of the smaller one's members are one finding
SAME_PATTERN = 0.85  # prototypes matching this well (NCC, spray.flag.patterns.MATCH) are one pattern
# Two flagged patterns found anywhere are one when the median NCC of each with the other's carriers reaches
# this: a logo at sizes beyond one pattern's scale band matches the other band's copies well, if not at MATCH.
CROSS_MATCH = 0.7
CARRIER_SPREAD = 2.0
# join_by_effect: a sample in no finding joins one when the effect of its most relevant window
# (spray.flag.effect) lies at least JOIN_EFFECT of the way from the median of the samples in no finding to the
# median of the finding's members, and its resemblance to the finding's prototypes exceeds that of
# JOIN_RESEMBLANCE of the other classes' images or of the class's own samples in no finding whose windows do
# not act like it (neither carries the pattern: two null distributions, either may hold look-alikes the other
# lacks); only where the members' median effect exceeds the others' by MIN_EFFECT_GAP (class-median logits).
JOIN_EFFECT = 0.5
JOIN_RESEMBLANCE = 0.99
MIN_EFFECT_GAP = 0.3
MIN_NULL = 20  # the class's own samples that do not act like the pattern serve as a null from this many on
MIN_OVERLAP = 0.75  # same_pattern: shifts that overlap less of the smaller prototype are not compared


@dataclass(frozen=True, eq=False)
class ClusterEvidence(Judged):
    """The evidence of one scored group: a spectral cluster (``id`` >= 0) or a pattern found anywhere
    (``id`` < 0); ``region`` is (h, w) bool at preprocessing resolution or None."""

    id: int
    size: int
    evidence: Evidence
    region: np.ndarray | None
    # (N,) mean squared distance of each sample's pattern to the members' and to the rest's mean pattern;
    # what ``carriers`` decides from. None when the group was not scored.
    distance_to_members: np.ndarray | None = field(default=None, repr=False)
    distance_to_rest: np.ndarray | None = field(default=None, repr=False)
    members: np.ndarray | None = field(default=None, repr=False)  # (N,) bool: patterns and their carriers at one place (id < 0)
    windows: Windows | None = field(default=None, repr=False)  # (N,) each sample's pattern window
    prototype: np.ndarray | None = field(default=None, repr=False)  # (h0, w0, C) the members' mean pattern
    anywhere: bool = False  # a pattern found at each sample's own place, not at one place
    match_score: np.ndarray | None = field(default=None, repr=False)  # (N,) patterns: each sample's best NCC


@dataclass(frozen=True, eq=False)
class Finding(Judged):
    """One shortcut: the samples that carry one pattern, wherever it sits, listed under flagged ``cluster``.

    ``clusters`` maps each spectral cluster its members came from to how many; ``groups`` are the flagged
    groups merged into it (spectral cluster ids, -1, -2, ... for patterns found anywhere, -101, -102, ... for their carriers
    at one place); ``evidence``
    is the strongest group's. ``prototype`` (h, w, C) float32 in [0, 1] is that group's members' mean
    pattern; ``windows`` (size, 4) int: each member's top, left, height, width in image pixels, where known
    (a spectral cluster's region is the same window in every member).
    """

    cluster: int
    size: int
    clusters: dict[int, int]
    groups: tuple[int, ...]
    anywhere: bool
    evidence: Evidence
    prototype: np.ndarray
    windows: np.ndarray
    # every merged group's prototype, strongest first (one logo in several size bands): what resemblance to
    # the finding is measured against (``join_by_effect``); not stored, so empty for a finding read back
    prototypes: tuple[np.ndarray, ...] = field(default=(), repr=False)


@dataclass(frozen=True)
class Effects:
    """What ``join_by_effect`` decides from (``spray.flag.effect.measure_effects``), for N samples, the F
    findings of a class and M images of other classes: ``gain`` (N,) the audited logit's mean rise when the
    sample's most relevant window (``windows``) is pasted into other classes' images, in class-median logits;
    ``resemblance`` (F, N) the best NCC of each finding's prototypes in each sample's image (over positions
    and scales, the best of its prototypes), ``elsewhere`` (F, M) the same in the other classes' images."""

    gain: np.ndarray
    windows: Windows
    resemblance: np.ndarray
    elsewhere: np.ndarray


@dataclass(frozen=True)
class Joined:
    """What ``form_findings`` returns: (N,) labels with each finding's members under its cluster, the
    spectral clusters (and new finding clusters) with their evidence and sizes, and the findings."""

    labels: np.ndarray
    clusters: list[ClusterEvidence]
    findings: list[Finding]


def carriers(cluster: ClusterEvidence, cluster_labels: np.ndarray) -> np.ndarray:
    """(N,) bool: the samples whose pixels in a flagged spectral cluster's region are closer to its members'
    mean pattern than to the rest's, and no farther from it than ``CARRIER_SPREAD`` times the distance within
    which 95 % of the members that are lie (copies vary a little in brightness or background).

    Spectral clustering groups samples by *where the model looks*: a few samples that carry the artifact can
    land in other clusters when the model also reads their object well, and a few that do not can land in
    the flagged one. The finding takes the carriers, wherever the spectral clustering put them."""
    own = cluster.members if cluster.members is not None else cluster_labels == cluster.id
    to_members, to_rest = cluster.distance_to_members, cluster.distance_to_rest
    if to_members is None or to_rest is None:
        return own
    closer = to_members < to_rest
    core = own & closer
    if not core.any():
        return own
    return closer & (to_members <= CARRIER_SPREAD * np.quantile(to_members[core], 0.95))


def _group_members(group: ClusterEvidence, cluster_labels: np.ndarray) -> np.ndarray:
    return group.members.copy() if group.anywhere and group.members is not None else carriers(group, cluster_labels)


def form_findings(cluster_labels: np.ndarray, scored: list[ClusterEvidence]) -> Joined:
    """Merge flagged groups into findings and move the samples that carry their pattern into the findings'
    clusters.

    cluster_labels: (N,) int spectral clusters; scored: every scored group (spectral clusters with id >= 0,
    patterns found anywhere with id < 0). The inputs are not changed. A finding's cluster records in its
    evidence how many samples joined it (``joined_by_pattern``) and its spectral size (``spectral_size``);
    the members of a flagged spectral cluster that do not carry its pattern become a cluster of their own,
    not scored, and so do the non-carriers of a flagged cluster merged into another finding.
    """
    flagged = sorted((s for s in scored if s.flagged), key=lambda s: -s.score)
    carried = [_group_members(group, cluster_labels) for group in flagged]
    found = [([flagged[i] for i in part], [carried[i] for i in part]) for part in _one_shortcut(flagged, carried)]
    merged = [(groups, _carrying(groups, _voted(groups, carried))) for groups, carried in found]
    labels, taken = cluster_labels.copy(), np.zeros(len(cluster_labels), bool)
    next_id = int(cluster_labels.max()) + 1 if len(cluster_labels) else 0
    findings, homes = [], {}
    for groups, members in merged:
        members &= ~taken
        taken |= members
        spectral = [g for g in groups if g.id >= 0]
        cluster_id = spectral[0].id if spectral else next_id
        next_id += 0 if spectral else 1
        labels[members] = cluster_id
        findings.append(_finding(cluster_id, groups, members, cluster_labels))
        homes[cluster_id] = (groups, members)
    return Joined(labels, _clusters(scored, labels, cluster_labels, homes, next_id), findings)


def join_by_effect(joined: Joined, effects: Effects) -> Joined:
    """``joined`` with the samples that act like a finding's pattern and look like it moved into it, and the
    findings whose members do merged into the stronger one.

    A sample *passes* a finding when its effect lies at least ``JOIN_EFFECT`` of the way from the median over
    the samples in no finding to the median over the finding's members, and its resemblance to the finding's
    prototypes exceeds that of the share ``JOIN_RESEMBLANCE`` of the other classes' images (the
    ``JOIN_RESEMBLANCE`` quantile of ``effects.elsewhere``) or of the class's samples in no finding whose
    effect falls short (from ``MIN_NULL`` of them on); no sample passes a finding whose
    members' median effect exceeds the others' by less than ``MIN_EFFECT_GAP`` (a frame's corner pasted
    elsewhere does little). Effect alone would take pieces of a class that the model reads anywhere (a stroke
    of a digit); resemblance alone misses copies at other sizes. A finding most of whose members pass a
    stronger one is the same shortcut (one logo in two size bands) and merges into it; then each sample in no
    finding that passes a finding joins it (the strongest such). The joined samples' windows join the
    finding's; the finding's and its flagged cluster's evidence count them (``joined_by_effect``), and a merged
    finding's cluster is left empty with a note. Unchanged without findings or where an effect is not finite.
    """
    findings = joined.findings
    free = ~np.isin(joined.labels, [finding.cluster for finding in findings])
    if not findings or not free.any() or not np.isfinite(effects.gain).all():
        return joined
    members = [joined.labels == finding.cluster for finding in findings]
    passes = [_passes(effects.gain, resemblance, elsewhere, free, own)
              for resemblance, elsewhere, own in zip(effects.resemblance, effects.elsewhere, members)]
    into = list(range(len(findings)))
    for j in range(len(findings)):
        into[j] = next((i for i in range(j) if into[i] == i and passes[i][members[j]].mean() >= 0.5), j)
    labels, eligible, new = joined.labels.copy(), free.copy(), [np.zeros_like(free) for _ in findings]
    for k, passed in enumerate(passes):
        new[into[k]] |= eligible & passed
        eligible &= ~passed
    out, clusters = [], {c.id: c for c in joined.clusters}
    for i, finding in enumerate(findings):
        if into[i] != i:
            clusters[finding.cluster] = ClusterEvidence(finding.cluster, 0, not_scored(
                f"its members act and look like those of flagged cluster {findings[into[i]].cluster}: merged into it"), None)
            continue
        merged = [k for k in range(len(findings)) if into[k] == i]
        kept = np.any([members[k] for k in merged], axis=0)
        labels[kept | new[i]] = finding.cluster
        out.append(_merged(finding, [findings[k] for k in merged], [members[k] for k in merged], new[i],
                           joined.labels, effects.windows))
        clusters[finding.cluster] = replace(clusters[finding.cluster],
                                            evidence=clusters[finding.cluster].evidence.joined_effect(int(new[i].sum())))
    return Joined(labels, [replace(c, size=int((labels == c.id).sum())) for c in clusters.values()], out)


def _passes(gain: np.ndarray, resemblance: np.ndarray, elsewhere: np.ndarray, free: np.ndarray,
            members: np.ndarray) -> np.ndarray:
    """(N,) bool: the samples that act and look like the finding of ``members`` (``join_by_effect``)."""
    rest, own = float(np.median(gain[free])), float(np.median(gain[members]))
    if own - rest < MIN_EFFECT_GAP or not len(elsewhere) or not np.isfinite(resemblance).all() \
            or not np.isfinite(elsewhere).all():
        return np.zeros(len(gain), bool)
    # own - rest >= MIN_EFFECT_GAP > 0: the share of the way from the rest's median to the members'
    acts = (gain - rest) / (own - rest) >= JOIN_EFFECT
    threshold = float(np.quantile(elsewhere, JOIN_RESEMBLANCE))
    idle = free & ~acts
    if idle.sum() >= MIN_NULL:
        threshold = min(threshold, float(np.quantile(resemblance[idle], JOIN_RESEMBLANCE)))
    return acts & (resemblance > threshold)


def _merged(finding: Finding, parts: list[Finding], members: list[np.ndarray], new: np.ndarray, labels: np.ndarray,
            windows: Windows) -> Finding:
    """The finding of ``parts`` (itself first; their ``members`` (N,) bool each) with the samples of ``new``
    (N,) bool joined: sizes, groups, the clusters they came from, their windows in sample order (where each
    part had a window per member), the strongest part's evidence with the count joined by effect."""
    counts: dict[int, int] = {}
    for part in parts:
        for origin, count in part.clusters.items():
            counts[origin] = counts.get(origin, 0) + count
    for origin, count in zip(*np.unique(labels[new], return_counts=True)):
        counts[int(origin)] = counts.get(int(origin), 0) + int(count)
    everyone = np.any([*members, new], axis=0)
    if all(len(part.windows) == own.sum() for part, own in zip(parts, members)):
        boxes = np.zeros((len(everyone), 4), np.int64)
        for part, own in zip(parts, members):
            boxes[own] = part.windows
        boxes[new] = np.stack([windows.top, windows.left, windows.height, windows.width], 1)[new]
        stacked = boxes[everyone]
    else:
        joined_boxes = np.stack([windows.top, windows.left, windows.height, windows.width], 1)[new]
        stacked = np.concatenate([*(part.windows.reshape(-1, 4) for part in parts), joined_boxes]).astype(np.int64)
    return replace(finding, size=int(everyone.sum()), clusters=counts,
                   groups=tuple(group for part in parts for group in part.groups), windows=stacked,
                   prototypes=tuple(prototype for part in parts for prototype in part.prototypes),
                   anywhere=finding.anywhere or _moves(stacked),
                   evidence=finding.evidence.joined_effect(int(new.sum())))


def _moves(boxes: np.ndarray) -> bool:
    """Whether windows (n, 4) move: two centres lie farther apart than a window's mean side."""
    if not len(boxes):
        return False
    centres = boxes[:, :2] + boxes[:, 2:] / 2
    return bool((np.ptp(centres, axis=0) > boxes[:, 2:].mean(0)).any())


def _carrying(groups: list[ClusterEvidence], members: np.ndarray) -> np.ndarray:
    """A finding's members: when it holds a pattern found anywhere, the samples its spectral clusters bring
    must match that pattern too (best NCC >= ``CROSS_MATCH`` with one of its patterns), so that a
    region's looser pixel rule does not add samples that lack the pattern."""
    scores = [g.match_score for g in groups if g.match_score is not None]
    carried = [g.members for g in groups if g.anywhere and g.members is not None]
    if not scores or not carried:
        return members
    return np.any(carried, axis=0) | (members & (np.max(scores, axis=0) >= CROSS_MATCH))


def _one_shortcut(flagged: list[ClusterEvidence], carried: list[np.ndarray]) -> list[list[int]]:
    """The flagged groups (strongest first) partitioned into shortcuts, each part strongest first: two groups
    are one shortcut when their carriers overlap by ``OVERLAP`` of the smaller, when their prototypes are
    ``same_pattern`` or when they match each other's carriers (``_cross_match``), and so is everything
    linked through a chain of such pairs (one logo in three size bands, the middle band matching both)."""
    part = list(range(len(flagged)))

    def root(i: int) -> int:
        while part[i] != i:
            i = part[i]
        return i

    for j in range(len(flagged)):
        for i in range(j):
            if root(i) == root(j):
                continue
            shared = (carried[i] & carried[j]).sum()
            if (shared >= OVERLAP * min(carried[i].sum(), carried[j].sum())
                    or same_pattern(flagged[i].prototype, flagged[j].prototype)
                    or _cross_match(flagged[i], flagged[j])):
                part[root(j)] = root(i)
    roots = [root(i) for i in range(len(flagged))]
    return [[i for i in range(len(flagged)) if roots[i] == r] for r in dict.fromkeys(roots)]


def _voted(groups: list[ClusterEvidence], carried: list[np.ndarray]) -> np.ndarray:
    """(N,) bool: a finding's members from its groups (strongest first) and each group's carriers.

    Where several groups measured the same place (``_same_place``), a sample joins when the strongest of them
    carries it or when two of them do: a weaker group's carrier test weighs its members' mean pattern, which
    members without the pattern blur (a pattern's looser matches, a spectral cluster's strays), so its
    carriers alone are not enough there. A group at a place of its own brings all its carriers."""
    members = np.zeros_like(carried[0])
    for i, group in enumerate(groups):
        place = [j for j, other in enumerate(groups) if j != i and _same_place(other, group)]
        if not any(j < i for j in place):
            members |= carried[i]
        else:
            members |= carried[i] & np.any([carried[j] for j in place], axis=0)
    return members


def _same_place(a: ClusterEvidence, b: ClusterEvidence) -> bool:
    """Whether two groups measured at one place each measured the same place: their windows' boxes overlap
    by at least ``OVERLAP`` of their union."""
    if a.anywhere or b.anywhere or a.windows is None or b.windows is None or not len(a.windows):
        return False
    (top_a, left_a, h_a, w_a), (top_b, left_b, h_b, w_b) = a.windows.box(0), b.windows.box(0)
    rows = max(0, min(top_a + h_a, top_b + h_b) - max(top_a, top_b))
    cols = max(0, min(left_a + w_a, left_b + w_b) - max(left_a, left_b))
    shared = rows * cols
    return shared >= OVERLAP * (h_a * w_a + h_b * w_b - shared)


def _cross_match(a: ClusterEvidence, b: ClusterEvidence) -> bool:
    """Whether two patterns found anywhere each match the other's carriers with median NCC >= CROSS_MATCH."""
    if a.match_score is None or b.match_score is None or a.members is None or b.members is None:
        return False
    return bool(np.median(a.match_score[b.members]) >= CROSS_MATCH
                and np.median(b.match_score[a.members]) >= CROSS_MATCH)


def same_pattern(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    """Whether two prototypes (h, w, C) show one pattern: the best grey-level NCC over every shift of one
    over the other that overlaps at least ``MIN_OVERLAP`` of the smaller reaches ``SAME_PATTERN`` (the same
    logo cut with a little more or less of its surroundings at two corners). Pixels outside a prototype's
    template are NaN and not compared."""
    if a is None or b is None or not a.size or not b.size:
        return False
    grey_a, grey_b = a.mean(-1), b.mean(-1)
    if np.isfinite(grey_a).sum() > np.isfinite(grey_b).sum():
        grey_a, grey_b = grey_b, grey_a
    (ha, wa), (hb, wb) = grey_a.shape, grey_b.shape
    need = MIN_OVERLAP * np.isfinite(grey_a).sum()
    for dy in range(-ha + 1, hb):
        for dx in range(-wa + 1, wb):
            top, left, bottom, right = max(0, dy), max(0, dx), min(hb, dy + ha), min(wb, dx + wa)
            if (bottom - top) * (right - left) < need:
                continue
            x = grey_a[top - dy : bottom - dy, left - dx : right - dx].ravel()
            y = grey_b[top:bottom, left:right].ravel()
            both = np.isfinite(x) & np.isfinite(y)
            if both.sum() < need:
                continue
            x, y = x[both] - x[both].mean(), y[both] - y[both].mean()
            norm = float(np.sqrt((x * x).sum() * (y * y).sum()))
            if norm > 1e-9 and float((x * y).sum()) / norm >= SAME_PATTERN:
                return True
    return False


def _finding(cluster_id: int, groups: list[ClusterEvidence], members: np.ndarray,
             cluster_labels: np.ndarray) -> Finding:
    """The finding of merged ``groups`` (strongest first) with ``members``: each member's window is that of
    the first group that holds it (a pattern's match, or a cluster's region); it moves when two members'
    windows do not overlap (their centres lie farther apart than a window's mean side)."""
    strongest = groups[0]
    origin, counts = np.unique(cluster_labels[members], return_counts=True)
    boxes = np.zeros((len(members), 4), np.int64)
    placed = np.zeros(len(members), bool)
    for group in groups:
        if group.windows is None:
            continue
        here = members & ~placed & _group_members(group, cluster_labels)
        windows = group.windows
        boxes[here] = np.stack([windows.top, windows.left, windows.height, windows.width], 1)[here]
        placed |= here
    boxes = boxes[members & placed]
    prototype = strongest.prototype if strongest.prototype is not None else np.zeros((0, 0, 1), np.float32)
    return Finding(cluster_id, int(members.sum()), {int(c): int(k) for c, k in zip(origin, counts)},
                   tuple(g.id for g in groups), _moves(boxes), strongest.evidence, prototype, boxes,
                   tuple(g.prototype for g in groups if g.prototype is not None and g.prototype.size))


def _clusters(scored: list[ClusterEvidence], labels: np.ndarray, cluster_labels: np.ndarray,
              homes: dict[int, tuple[list[ClusterEvidence], np.ndarray]], next_id: int) -> list[ClusterEvidence]:
    """The clusters after the move (``labels`` is updated in place): each finding's cluster with its
    strongest group's evidence; the samples a flagged spectral cluster keeps without carrying its pattern,
    not scored (in a new cluster when the finding took the spectral cluster's id); the unflagged clusters
    with what is left of them; then a new cluster per finding without a spectral cluster."""
    merged_into = {g.id: cluster_id for cluster_id, (groups, _) in homes.items() for g in groups}
    out = []
    for group in (s for s in scored if s.id >= 0):
        if group.id in homes:
            (strongest, *_), members = homes[group.id]
            spectral_size = int((cluster_labels == group.id).sum())
            joined = int((members & (cluster_labels != group.id)).sum())
            out.append(replace(group, size=int(members.sum()), region=strongest.region,
                               evidence=strongest.evidence.joined(joined, spectral_size)))
            left = (labels == group.id) & ~members
            if left.any():
                labels[left] = next_id
                out.append(_not_carrying(next_id, int(left.sum()), group.id, group.id))
                next_id += 1
        elif group.flagged:
            out.append(_not_carrying(group.id, int((labels == group.id).sum()), group.id, merged_into[group.id]))
        else:
            out.append(replace(group, size=int((labels == group.id).sum())))
    known = {s.id for s in scored if s.id >= 0}
    for cluster_id, (groups, members) in homes.items():
        if cluster_id not in known:
            out.append(replace(groups[0], id=cluster_id, size=int(members.sum()), members=None))
    return out


def _not_carrying(cluster_id: int, size: int, flagged: int, finding: int) -> ClusterEvidence:
    """The members a flagged spectral cluster keeps without carrying its pattern (their carriers are in the
    finding listed under cluster ``finding``): not scored, never flagged."""
    return ClusterEvidence(cluster_id, size, not_scored(
        f"members of flagged cluster {flagged} that do not carry its pattern (the carriers are in cluster "
        f"{finding})"), None)
